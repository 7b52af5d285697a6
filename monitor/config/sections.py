"""The sections of the service configuration: one pydantic model per YAML section.

What lives here: :class:`KafkaSettings`, :class:`FieldMapping`,
:class:`CloudEventsSettings`, :class:`ModelSettings`, :class:`FeatureSettings`,
:class:`ReferenceSettings`, :class:`WindowSettings`, :class:`JoinSettings`,
:class:`DedupeSettings`, :class:`EvaluationSettings`, :class:`HttpSettings`,
:class:`LogSettings`, :class:`CodecSettings`, :class:`WebhookSettings`,
:class:`AlertingSettings`, :class:`AuditSettings`, :class:`AdminSettings` and
:class:`StateSettings`, each validated on its own (cross-section rules are in
:mod:`monitor.config.settings`). Secrets given inline or as a file are resolved
by :func:`monitor.config.secrets.secret_or_file`.

May import: the standard library, pydantic and :mod:`monitor.config.secrets`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from monitor.config.secrets import check_file, secret_or_file

__all__ = ["AdminSettings", "AlertingSettings", "AuditSettings", "CloudEventsSettings",
           "CodecSettings", "DedupeSettings", "EvaluationSettings", "FeatureSettings",
           "FieldMapping", "HttpSettings", "JoinSettings", "KafkaSettings", "LogSettings",
           "ModelSettings", "ReferenceSettings", "StateSettings", "WebhookSettings",
           "WindowSettings"]


class _Strict(BaseModel):
    # no NaN or infinity anywhere: a NaN threshold would never breach, an
    # infinite window would never slide
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class KafkaSettings(_Strict):
    """Brokers, topics, consumer group and security."""

    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    group_id: str = Field("driftgate", min_length=1)
    predictions_topic: str = Field("predictions", min_length=1, max_length=249)
    labels_topic: str = Field("labels", min_length=1, max_length=249)
    dead_letter_topic: str = Field("driftgate.dead-letter", min_length=1, max_length=249)
    decisions_topic: str = Field("driftgate.decisions", min_length=1, max_length=249)
    client_id: str = "driftgate"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    max_poll_records: int = Field(5000, ge=1, le=1_000_000)
    fetch_max_wait_ms: int = Field(100, ge=0, le=60_000)
    # bytes per partition and per fetch response: larger than the Kafka client
    # defaults (1 MiB / 50 MiB) so that one fetch round holds several polls'
    # worth of ~600-byte events and the next batch is buffered while one is handled
    max_partition_fetch_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024 ** 3)
    fetch_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=1024 ** 3)
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # processed offsets go to the group at most this often (0: after every batch),
    # and always on revoke and stop; with a state store they are stored with the
    # counts on every batch regardless
    commit_interval_ms: int = Field(1000, ge=0, le=60_000)

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        topics = {"predictions_topic": self.predictions_topic,
                  "labels_topic": self.labels_topic,
                  "dead_letter_topic": self.dead_letter_topic}
        if len(set(topics.values())) != len(topics):
            raise ValueError(f"predictions_topic, labels_topic and dead_letter_topic must "
                             f"differ, got {topics!r}")
        if self.security_protocol in ("SSL", "SASL_SSL"):
            check_file(self.ssl_cafile, "ssl_cafile")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError(f"sasl_mechanism is required with {self.security_protocol}")
            if not self.sasl_username:
                raise ValueError(f"sasl_username is required with {self.security_protocol}")
            if self.sasl_password is None and self.sasl_password_file is None:
                raise ValueError("sasl_password or sasl_password_file is required with "
                                 f"{self.security_protocol}")
        check_file(self.sasl_password_file, "sasl_password_file")
        return self

    def password(self) -> str | None:
        """The SASL password, from the value or the secret file."""
        return secret_or_file(self.sasl_password, self.sasl_password_file,
                              "kafka.sasl_password_file")


class FieldMapping(_Strict):
    """Names of the event fields in the incoming JSON."""

    event_id: str = "event_id"
    model: str = "model"
    model_version: str = "model_version"
    ts: str = "ts"
    score: str = "score"
    decision: str = "decision"
    amount: str = "amount"
    features: str = "features"
    label: str = "label"

    @model_validator(mode="after")
    def _distinct(self) -> FieldMapping:
        names = {k: getattr(self, k) for k in ("event_id", "model", "model_version", "ts",
                                               "score", "decision", "amount", "features")}
        seen: dict[str, str] = {}
        for key, value in names.items():
            if value in seen:
                raise ValueError(f"fields.{seen[value]} and fields.{key} are both {value!r}: "
                                 "prediction field names must be distinct")
            seen[value] = key
        if self.label == self.event_id:
            raise ValueError(f"fields.label and fields.event_id are both {self.label!r}")
        for key in (*names, "label"):
            if not getattr(self, key):
                raise ValueError(f"fields.{key} must not be empty")
        return self


class CloudEventsSettings(_Strict):
    """CloudEvents binary mode (``ce_*`` Kafka headers, as KServe's logger writes)."""

    enabled: bool = True
    model_header: str = "ce_inferenceservicename"
    version_header: str = "ce_modelversion"


class ModelSettings(_Strict):
    """One monitored model: which version is champion and which is canary."""

    name: str = Field(min_length=1)
    champion: str = Field(min_length=1)
    canary: str | None = None
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_versions: int = Field(8, ge=1, le=64)
    rollback_url: str | None = Field(None, pattern=r"^https?://")

    @model_validator(mode="after")
    def _versions(self) -> ModelSettings:
        if self.canary is not None and self.canary == self.champion:
            raise ValueError(f"canary must differ from champion, both are {self.canary!r}")
        return self


class FeatureSettings(_Strict):
    """Features to monitor (names inside the event's features object)."""

    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> FeatureSettings:
        names = self.numeric + self.categorical
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature names must be unique across numeric and "
                             f"categorical, got duplicates {dupes!r}")
        return self


class ReferenceSettings(_Strict):
    """Where the frozen reference profile comes from."""

    path: Path | None = None
    fit_from_champion_events: int = Field(0, ge=0)
    n_bins: int = Field(10, ge=2, le=100)
    top_k: int = Field(20, ge=1, le=1000)

    @model_validator(mode="after")
    def _source(self) -> ReferenceSettings:
        if self.path is None and self.fit_from_champion_events == 0:
            raise ValueError("set path (a profile from `driftgate reference fit`) or "
                             "fit_from_champion_events > 0")
        check_file(self.path, "path")
        return self


class WindowSettings(_Strict):
    """Event-time windows."""

    slice_seconds: float = Field(10.0, gt=0)
    window_seconds: float = Field(300.0, gt=0)
    kpi_window_seconds: float = Field(3600.0, gt=0)
    allowed_lateness_seconds: float = Field(60.0, ge=0)
    #: a source partition with no records for this long (processing time) stops
    #: holding the watermark back (Flink's ``withIdleness``)
    idle_partition_seconds: float = Field(30.0, gt=0, le=86_400)
    #: how far ahead of the watermark (the slowest active partition) a faster
    #: partition's slices are held; a partition further ahead moves the window
    max_ahead_seconds: float = Field(3600.0, ge=0, le=7 * 86_400)
    #: events stamped further ahead of the wall clock are refused as
    #: ``future_timestamp`` (None: no check); on by default for live sources only
    max_future_skew_seconds: float | None = Field(300.0, gt=0, le=10 * 365 * 86_400)
    #: apply the future-timestamp check to replays of files too (they keep their
    #: own time otherwise: a backtest of last month may be "in the future" of nothing)
    future_check_on_replay: bool = False

    @model_validator(mode="after")
    def _multiples(self) -> WindowSettings:
        for name in ("window_seconds", "kpi_window_seconds"):
            value = getattr(self, name)
            ratio = value / self.slice_seconds
            if not math.isfinite(ratio) or ratio > 1_000_000:
                raise ValueError(f"{name} / slice_seconds must be at most 1,000,000 slices, "
                                 f"got {value} / {self.slice_seconds}")
            if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
                raise ValueError(f"{name} ({value}) must be a whole multiple of "
                                 f"slice_seconds ({self.slice_seconds})")
        if self.allowed_lateness_seconds > self.window_seconds:
            raise ValueError(f"allowed_lateness_seconds ({self.allowed_lateness_seconds}) "
                             f"must not exceed window_seconds ({self.window_seconds})")
        return self

    @property
    def n_slices(self) -> int:
        return round(self.window_seconds / self.slice_seconds)

    @property
    def kpi_n_slices(self) -> int:
        return round(self.kpi_window_seconds / self.slice_seconds)

    @property
    def ahead_slices(self) -> int:
        return math.ceil(self.max_ahead_seconds / self.slice_seconds)


class JoinSettings(_Strict):
    """The label join buffer (predictions waiting for labels, and vice versa)."""

    ttl_seconds: float = Field(3600.0, gt=0)
    max_pending: int = Field(1_000_000, ge=1)
    max_orphan_labels: int = Field(100_000, ge=0)


class DedupeSettings(_Strict):
    """Each event id counted once within a horizon of event time (monitor.engine.dedupe)."""

    enabled: bool = True
    #: how long (event time) an id is remembered; None: the join TTL
    horizon_seconds: float | None = Field(None, gt=0, le=400 * 86_400)
    #: memory cap (16 B per id): past it the oldest ids are forgotten early
    max_ids: int = Field(50_000_000, ge=1000, le=2_000_000_000)


class EvaluationSettings(_Strict):
    """The evaluator tick."""

    tick_seconds: float = Field(1.0, gt=0, le=3600)
    eps: float = Field(1e-4, gt=0, lt=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    adwin_delta: float = Field(0.002, gt=0, lt=1)
    # Bernoulli CUSUM on the recall stream (caught or not, per labelled fraud;
    # detectors.cusum): the drop in catch rate to detect, the in-control average
    # run length in labelled frauds, a fixed in-control catch rate (null: a
    # canary's is its champion's running catch rate, once the champion has
    # recall_cusum_min_frauds labelled frauds; other versions are not monitored)
    recall_cusum_delta: float = Field(0.1, gt=0, lt=1)
    recall_cusum_arl0: float = Field(100_000.0, gt=1, le=1e9)
    recall_cusum_p0: float | None = Field(None, gt=0, lt=1)
    recall_cusum_min_frauds: int = Field(500, ge=1)
    # raw rows kept per version (over the drift window) for Evidently reports
    report_sample_size: int = Field(5000, ge=0, le=1_000_000)
    # Evidently stattest for reports, by name from its registry (psi, jensenshannon,
    # wasserstein, ks, ...); psi is stable on heavy-tailed fraud features, where the
    # default normed Wasserstein flags healthy samples
    report_method: str = Field("psi", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _recall_cusum(self) -> EvaluationSettings:
        p0, delta = self.recall_cusum_p0, self.recall_cusum_delta
        if p0 is not None and p0 <= delta:
            raise ValueError(f"recall_cusum_p0 ({p0}) must exceed recall_cusum_delta "
                             f"({delta}): the chart watches for a drop to p0 - delta > 0")
        return self


class HttpSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    ready_max_lag: int = Field(100_000, ge=0)
    # /v1/reports/{model}/{version} needs the admin bearer token (reports are
    # expensive to render and show raw feature distributions)
    reports_require_token: bool = False


class LogSettings(_Strict):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class CodecSettings(_Strict):
    max_message_bytes: int = Field(1_000_000, ge=64)
    allow_unknown_models: bool = False
    # amounts above this are rejected (bad_amount): squared sums must stay finite
    max_amount: float = Field(1e12, gt=0, le=1e100)
    # decode plain-JSON prediction batches with the compiled yyjson fast path
    # (monitor/ingest/_native) when it is built; any batch it is not certain of goes to
    # msgspec, so results are the same either way (false: msgspec only)
    fast_decode: bool = True
    # cardinality caps (README "Bounded cardinality"): models in all, configured
    # ones included (only matters with allow_unknown_models), and versions of a
    # model that is not configured (configured models: models[].max_versions)
    max_models: int = Field(32, ge=1, le=10_000)
    unknown_model_max_versions: int = Field(4, ge=1, le=64)
    # a version not seen for this long (wall clock) releases its slot, engine
    # state and series; the configured champion and canary never do (null: never)
    version_idle_seconds: float | None = Field(10_800.0, gt=0, le=365 * 86_400)


class WebhookSettings(_Strict):
    """Signing and retry policy for outgoing webhooks (rollback and alerts).

    Secrets are Standard Webhooks secrets (``whsec_<base64>``); several may be
    given during a rotation (every one signs, receivers accept any).
    """

    secrets: list[SecretStr] = Field(default_factory=list)
    secrets_file: Path | None = None
    max_attempts: int = Field(8, ge=1, le=100)
    initial_backoff_seconds: float = Field(0.5, gt=0, le=3600)
    max_backoff_seconds: float = Field(60.0, gt=0, le=86_400)
    timeout_seconds: float = Field(5.0, gt=0, le=300)

    @model_validator(mode="after")
    def _file(self) -> WebhookSettings:
        check_file(self.secrets_file, "secrets_file")
        return self

    def secret_values(self) -> list[str]:
        """All secrets: inline ones first, then one per line of the file."""
        out = [s.get_secret_value() for s in self.secrets]
        text = secret_or_file(None, self.secrets_file, "webhooks.secrets_file") or ""
        out += [ln.strip() for ln in text.splitlines() if ln.strip()]
        return out


class AlertingSettings(_Strict):
    """On-call alerts as Alertmanager webhook v4 payloads."""

    url: str | None = Field(None, pattern=r"^https?://")
    receiver: str = "driftgate"
    external_url: str = ""
    runbook_base_url: str = "https://github.com/driftgate/driftgate/blob/main/docs/runbooks.md"


class AuditSettings(_Strict):
    path: Path = Path("driftgate-audit.jsonl")
    fsync: bool = True


class AdminSettings(_Strict):
    """Bearer token for the admin API (absent = admin API answers 401)."""

    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _file(self) -> AdminSettings:
        check_file(self.token_file, "token_file")
        return self

    def token_value(self) -> str | None:
        """The token, from the value or the file (re-read on every call; None if empty).

        The HTTP server checks tokens through
        :class:`monitor.serve.admin.AdminTokens`, which accepts every line of the
        file and re-reads it when it changes.
        """
        if self.token is not None:
            return self.token.get_secret_value()
        return secret_or_file(None, self.token_file, "admin.token_file") or None


class StateSettings(_Strict):
    """Where aggregates, offsets and the label-join buffer live.

    ``memory``: in the process (one instance). ``redis``: shared by every
    instance of the consumer group, written atomically with the offsets.
    """

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    key_prefix: str = Field("driftgate:", min_length=1, max_length=100)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    instance_id: str = Field(default_factory=lambda: __import__("socket").gethostname(),
                             min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    lease_ttl_ms: int = Field(5000, ge=500, le=600_000)
    socket_timeout_seconds: float = Field(5.0, gt=0, le=120)

    @model_validator(mode="after")
    def _files(self) -> StateSettings:
        check_file(self.password_file, "password_file")
        check_file(self.tls_ca_file, "tls_ca_file")
        return self

    def password_value(self) -> str | None:
        """The Redis password, from the value or the secret file (None if empty)."""
        if self.password is not None:
            return self.password.get_secret_value()
        return secret_or_file(None, self.password_file, "state.password_file") or None
