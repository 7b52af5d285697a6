"""CloudEvents binary mode: ``ce_*`` headers carry the attributes, the value the data.

What lives here: :class:`CloudEventReader`, which turns a binary-mode
CloudEvent (as KServe's inference logger writes them) into the JSON body of a
plain event (the ``ce_id``, ``ce_time`` and model/version headers fill fields
the data lacks), or refuses it with a :class:`~monitor.ingest.records.RejectError`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from monitor.config import Settings
from monitor.ingest.records import Record, RejectError

__all__ = ["CE_REQUIRED", "CloudEventReader"]

#: the headers a binary-mode CloudEvent must carry (non-empty)
CE_REQUIRED = ("ce_id", "ce_specversion", "ce_type", "ce_source")


class CloudEventReader:
    """Reads binary-mode CloudEvents for the configured field names and headers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._raw_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])

    def body(self, rec: Record, kind: str) -> Any:
        """The event's JSON body with the header attributes filled in, or ``None``
        when ``rec`` is not a binary-mode CloudEvent (no ``ce_specversion``).

        ``kind`` is ``"prediction"`` (the model and version headers apply) or
        ``"label"``. Raises :class:`RejectError` for a malformed CloudEvent.
        """
        headers: dict[str, bytes] = {}
        for k, v in rec.headers:
            headers[k] = v
        if "ce_specversion" not in headers:
            return None
        missing = [h for h in CE_REQUIRED if not headers.get(h)]
        if missing:
            raise RejectError("cloudevents_header", f"binary-mode CloudEvent lacks header(s) "
                              f"{missing!r}")
        try:
            hv = {k: v.decode("utf-8") for k, v in headers.items()
                  if k.startswith("ce_") and v is not None}
        except UnicodeDecodeError as exc:
            raise RejectError("cloudevents_header", f"a ce_* header is not UTF-8: {exc}") from exc
        if hv["ce_specversion"] != "1.0":
            raise RejectError("cloudevents_header", f"unsupported ce_specversion "
                              f"{hv['ce_specversion']!r} (want '1.0')")
        # keep the body's values raw, so the typed decode reports field paths
        # (and reasons) exactly as for plain JSON events
        try:
            (rec.value or b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RejectError("not_utf8", f"value is not UTF-8: {exc}") from exc
        try:
            body = self._raw_object_decoder.decode(rec.value or b"")
        except msgspec.ValidationError as exc:
            raise RejectError("wrong_type", f"CloudEvent data must be a JSON object: "
                              f"{exc}") from exc
        f = self.settings.fields
        ce = self.settings.cloudevents
        fills = {f.event_id: hv["ce_id"]}
        if "ce_time" in hv:
            fills[f.ts] = hv["ce_time"]
        if kind == "prediction":
            if ce.model_header in hv:
                fills[f.model] = hv[ce.model_header]
            if ce.version_header in hv:
                fills[f.model_version] = hv[ce.version_header]
        for key, value in fills.items():
            if key not in body:
                body[key] = msgspec.Raw(msgspec.json.encode(value))
        return msgspec.json.encode(body)
