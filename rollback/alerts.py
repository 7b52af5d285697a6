"""Alertmanager webhook v4 payloads, so existing alert receivers accept driftgate's alerts.

:func:`alert_payload` builds the JSON document Alertmanager POSTs to a
``webhook_config`` receiver (``version: "4"``): ``groupKey``,
``truncatedAlerts``, ``status``, ``receiver``, ``groupLabels``,
``commonLabels``, ``commonAnnotations``, ``externalURL`` and ``alerts``, each
alert with ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``,
``generatorURL`` and ``fingerprint``.

Times are RFC 3339 in UTC with a ``Z`` suffix, fractional seconds only when
present (as Go's ``time.Time`` marshals them); a firing alert's ``endsAt`` is
Go's zero time ``0001-01-01T00:00:00Z``.

The fingerprint is Alertmanager's own (``model.LabelSet.Fingerprint`` from
prometheus/common): 64-bit FNV-1a over the label names in sorted order, each
name and value (UTF-8) followed by the separator byte ``0xff``, rendered as 16
lower-case hex digits. The same labels therefore give the same fingerprint
here and in a real Alertmanager, firing or resolved.

Examples
--------
>>> spec = AlertSpec(labels={"alertname": "DriftgateRuleFiring", "model": "card-fraud"},
...                  annotations={"summary": "canary PSI above 0.25"},
...                  starts_at=1700000000.0, ends_at=None)
>>> doc = alert_payload([spec], external_url="http://driftgate:8080")
>>> doc["version"], doc["status"], doc["groupKey"]
('4', 'firing', '{}:{alertname="DriftgateRuleFiring"}')
>>> doc["alerts"][0]["startsAt"], doc["alerts"][0]["endsAt"]
('2023-11-14T22:13:20Z', '0001-01-01T00:00:00Z')
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ZERO_TIME", "AlertSpec", "alert_payload", "fingerprint", "rfc3339"]

ZERO_TIME = "0001-01-01T00:00:00Z"

_FNV64_OFFSET = 14695981039346656037
_FNV64_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1
_SEPARATOR = 0xFF


def _fnv1a(h: int, data: bytes) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV64_PRIME) & _MASK64
    return h


def _check_str_map(name: str, value: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping of str to str, got {type(value).__name__}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"{name} keys must be non-empty str, got {k!r}")
        if not isinstance(v, str):
            raise ValueError(f"{name}[{k!r}] must be a str, got {v!r}")
        out[k] = v
    return out


def fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set (16 hex digits).

    Examples
    --------
    >>> fingerprint({})
    'cbf29ce484222325'
    >>> fingerprint({"name": "garland, briggs", "fear": "love is not enough"})
    '507a62d79ee76c9a'
    >>> fingerprint({"b": "2", "a": "1"}) == fingerprint({"a": "1", "b": "2"})
    True
    """
    clean = _check_str_map("labels", labels)
    h = _FNV64_OFFSET
    for name in sorted(clean, key=lambda n: n.encode("utf-8")):
        h = _fnv1a(h, name.encode("utf-8"))
        h = _fnv1a(h, bytes([_SEPARATOR]))
        h = _fnv1a(h, clean[name].encode("utf-8"))
        h = _fnv1a(h, bytes([_SEPARATOR]))
    return f"{h:016x}"


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC (``Z``), fractional digits only when non-zero.

    Examples
    --------
    >>> rfc3339(0)
    '1970-01-01T00:00:00Z'
    >>> rfc3339(1700000000.25)
    '2023-11-14T22:13:20.25Z'
    """
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ValueError(f"timestamp must be finite epoch seconds, got {ts!r}")
    try:
        when = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"timestamp out of range: {ts!r}") from None
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        text += f".{when.microsecond:06d}".rstrip("0")
    return text + "Z"


@dataclass(frozen=True)
class AlertSpec:
    """One alert to send.

    Parameters
    ----------
    labels : mapping
        Identifying labels; must include a non-empty ``alertname``.
    annotations : mapping
        Descriptive annotations (summary, description, runbook_url, ...).
    starts_at : float
        Epoch seconds the alert started.
    ends_at : float or None
        None while firing; the resolution time once resolved.
    generator_url : str
        Link back to the source of the alert.

    Examples
    --------
    >>> AlertSpec({"alertname": "X"}, {}, 10.0, None).status
    'firing'
    >>> AlertSpec({"alertname": "X"}, {}, 10.0, 20.0).status
    'resolved'
    >>> try:
    ...     AlertSpec({"model": "m"}, {}, 10.0, None)
    ... except ValueError as exc:
    ...     print(exc)
    labels must include a non-empty 'alertname', got {'model': 'm'}
    """

    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    starts_at: float = 0.0
    ends_at: float | None = None
    generator_url: str = ""

    def __post_init__(self) -> None:
        labels = _check_str_map("labels", self.labels)
        if not labels.get("alertname"):
            raise ValueError(f"labels must include a non-empty 'alertname', got {labels!r}")
        _check_str_map("annotations", self.annotations)
        rfc3339(self.starts_at)
        if self.ends_at is not None:
            rfc3339(self.ends_at)
            if self.ends_at < self.starts_at:
                raise ValueError(f"ends_at ({self.ends_at!r}) is before starts_at "
                                 f"({self.starts_at!r})")
        if not isinstance(self.generator_url, str):
            raise ValueError(f"generator_url must be a str, got {self.generator_url!r}")

    @property
    def status(self) -> str:
        """``firing`` while ``ends_at`` is None, else ``resolved``."""
        return "firing" if self.ends_at is None else "resolved"

    def as_alert(self) -> dict[str, Any]:
        """The alert as it appears in ``alerts[]`` of a v4 payload."""
        return {
            "status": self.status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": ZERO_TIME if self.ends_at is None else rfc3339(self.ends_at),
            "generatorURL": self.generator_url,
            "fingerprint": fingerprint(self.labels),
        }


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    common = dict(maps[0])
    for m in maps[1:]:
        common = {k: v for k, v in common.items() if m.get(k) == v}
    return common


def _label_set_string(labels: Mapping[str, str]) -> str:
    # prometheus/common LabelSet.String(): sorted name=%q pairs joined by ", "
    pairs = ", ".join(f"{k}={json.dumps(labels[k], ensure_ascii=False)}" for k in sorted(labels))
    return "{" + pairs + "}"


def alert_payload(alerts: Sequence[AlertSpec], *, receiver: str = "driftgate",
                  external_url: str = "",
                  group_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An Alertmanager webhook v4 document for ``alerts`` (one group).

    Parameters
    ----------
    alerts : sequence of AlertSpec
        At least one alert.
    receiver : str
        The receiver name.
    external_url : str
        Where the sender can be reached (Alertmanager's ``externalURL``).
    group_labels : mapping, optional
        The group's labels; by default ``{"alertname": ...}`` when all alerts
        share one alertname, else empty.

    Returns
    -------
    dict
        ``status`` is ``firing`` when any alert fires, else ``resolved``;
        ``groupKey`` is ``"{}:" + group labels`` as Alertmanager renders a
        root-route group key.

    Examples
    --------
    >>> a = AlertSpec({"alertname": "X", "model": "m", "version": "v2"}, {"s": "1"}, 0.0, None)
    >>> b = AlertSpec({"alertname": "X", "model": "m", "version": "v3"}, {"s": "1"}, 0.0, 5.0)
    >>> doc = alert_payload([a, b])
    >>> doc["status"], doc["commonLabels"], doc["commonAnnotations"]
    ('firing', {'alertname': 'X', 'model': 'm'}, {'s': '1'})
    >>> [x["status"] for x in doc["alerts"]]
    ['firing', 'resolved']
    """
    if isinstance(alerts, AlertSpec) or not isinstance(alerts, Sequence) or not alerts:
        raise ValueError(f"alerts must be a non-empty sequence of AlertSpec, got {alerts!r}")
    for i, a in enumerate(alerts):
        if not isinstance(a, AlertSpec):
            raise ValueError(f"alerts[{i}] must be an AlertSpec, got {type(a).__name__}")
    if not isinstance(receiver, str) or not receiver:
        raise ValueError(f"receiver must be a non-empty str, got {receiver!r}")
    if not isinstance(external_url, str):
        raise ValueError(f"external_url must be a str, got {external_url!r}")
    if group_labels is None:
        names = {a.labels["alertname"] for a in alerts}
        groups = {"alertname": names.pop()} if len(names) == 1 else {}
    else:
        groups = _check_str_map("group_labels", group_labels)
    return {
        "version": "4",
        "groupKey": "{}:" + _label_set_string(groups),
        "truncatedAlerts": 0,
        "status": "firing" if any(a.ends_at is None for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": groups,
        "commonLabels": _common([a.labels for a in alerts]),
        "commonAnnotations": _common([a.annotations for a in alerts]),
        "externalURL": external_url,
        "alerts": [a.as_alert() for a in alerts],
    }
