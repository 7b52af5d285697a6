"""The whole configuration: :class:`Settings`, loading and error reporting.

What lives here: :class:`Settings` (the sections of
:mod:`monitor.config.sections` plus the rules that span sections),
:func:`load_settings` (YAML file, environment, overrides; relative paths
resolved against the file's directory by :func:`_resolve_paths`, whose keys are
:data:`PATH_KEYS`) and :class:`ConfigError` (each bad key and the reason, from
:func:`_problems`; secret values are never echoed).

May import: the standard library, pydantic, pydantic-settings, PyYAML,
:mod:`rollback.rules` and the other modules of :mod:`monitor.config`.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from monitor.config.secrets import SECRET_KEYS
from monitor.config.sections import (
    AdminSettings,
    AlertingSettings,
    AuditSettings,
    CloudEventsSettings,
    CodecSettings,
    DedupeSettings,
    EvaluationSettings,
    FeatureSettings,
    FieldMapping,
    HttpSettings,
    JoinSettings,
    KafkaSettings,
    LogSettings,
    ModelSettings,
    ReferenceSettings,
    StateSettings,
    WebhookSettings,
    WindowSettings,
)
from rollback.rules import RuleSpec

__all__ = ["PATH_KEYS", "ConfigError", "Settings", "load_settings"]


class ConfigError(Exception):
    """A configuration problem; ``str()`` names each bad key and the reason."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__(
            "invalid configuration: " + "; ".join(f"{key}: {why}" for key, why in problems)
        )


class Settings(BaseSettings):
    """The whole service configuration."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTGATE_", env_nested_delimiter="__", extra="forbid", frozen=True,
    )

    source: Literal["kafka", "faust", "replay"] = "kafka"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    fields: FieldMapping = Field(default_factory=FieldMapping)
    cloudevents: CloudEventsSettings = Field(default_factory=CloudEventsSettings)
    models: list[ModelSettings] = Field(min_length=1)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    reference: ReferenceSettings
    windows: WindowSettings = Field(default_factory=WindowSettings)
    join: JoinSettings = Field(default_factory=JoinSettings)
    dedupe: DedupeSettings = Field(default_factory=DedupeSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    codec: CodecSettings = Field(default_factory=CodecSettings)
    rules: list[RuleSpec] = Field(default_factory=list)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    alerting: AlertingSettings = Field(default_factory=AlertingSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    state: StateSettings = Field(default_factory=StateSettings)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, got duplicates {dupes!r}")
        return models

    @model_validator(mode="after")
    def _state_source(self) -> Settings:
        if self.state.backend == "redis" and self.source != "kafka":
            raise ValueError(f"state.backend 'redis' needs source 'kafka', got source "
                             f"{self.source!r}: the store seeks partitions to its stored "
                             "offsets and hands label-join buffers over on rebalance, which "
                             "needs driftgate's own consumer (use state.backend 'memory' "
                             "for replays)")
        return self

    @model_validator(mode="after")
    def _rules(self) -> Settings:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique, got duplicates {dupes!r}")
        models = {m.name for m in self.models}
        feats = {*self.features.numeric, *self.features.categorical, "model_score"}
        for r in self.rules:
            if r.model is not None and r.model not in models:
                raise ValueError(f"rule {r.name!r}: model {r.model!r} is not configured")
            if r.metric in ("psi", "kl", "js") and r.feature not in feats:
                raise ValueError(f"rule {r.name!r}: feature {r.feature!r} is not monitored "
                                 f"(known: {sorted(feats)!r})")
        if self.state.backend == "redis" and self.reference.path is None:
            raise ValueError("state.backend redis needs reference.path: every instance "
                             "must use the same frozen reference")
        if "model_score" in (*self.features.numeric, *self.features.categorical):
            raise ValueError("'model_score' is reserved for the score; rename that feature")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # explicit overrides > environment > the YAML file (see load_settings);
        # nested sections are merged key by key
        return (init_settings, env_settings, _YamlSource(settings_cls), file_secret_settings)

    @property
    def dedupe_horizon_seconds(self) -> float:
        """The dedupe horizon in force (``dedupe.horizon_seconds`` or the join TTL)."""
        h = self.dedupe.horizon_seconds
        return self.join.ttl_seconds if h is None else h

    @property
    def future_skew_seconds(self) -> float | None:
        """The future-timestamp limit in force for this source, or None."""
        w = self.windows
        if self.source == "replay" and not w.future_check_on_replay:
            return None
        return w.max_future_skew_seconds

    def model(self, name: str) -> ModelSettings | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    def content_hash(self) -> str:
        """SHA-256 of the effective configuration, secrets masked."""
        body = self.model_dump(mode="json")
        body["state"].pop("instance_id", None)  # the same config on every instance
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


_YAML_DATA: ContextVar[dict[str, Any] | None] = ContextVar("driftgate_yaml_data",
                                                            default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML file's content, below the environment in precedence."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        data = _YAML_DATA.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_DATA.get() or {})


def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        secret = any(str(part) in SECRET_KEYS for part in err["loc"])
        if "input" in err and err["type"] not in ("missing",) and not secret and not isinstance(
            err["input"], (dict, list)
        ):
            msg = f"{msg} (got {err['input']!r})"
        out.append((prefix + key, msg))
    return out


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate the YAML config at ``path`` (plus env and overrides).

    Relative paths inside the file (reference path, TLS files) are resolved
    against the file's directory.

    Raises
    ------
    ConfigError
        Naming each bad key and the reason (unreadable file, bad YAML, unknown
        key, wrong type or value).
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([("<file>", f"cannot read {str(p)!r}: {exc.strerror}")]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([("<file>", f"{str(p)!r} is not UTF-8 text: {exc}")]) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([("<file>", f"{str(p)!r} is not valid YAML: {exc}")]) from exc
        except RecursionError as exc:
            raise ConfigError([("<file>", f"{str(p)!r} nests too deeply")]) from exc
        except (ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
            # PyYAML fails this way on scalars it cannot build (an impossible date,
            # "!!int abc", an integer beyond Python's digit limit)
            raise ConfigError([("<file>", f"{str(p)!r} has a value YAML cannot read: "
                                          f"{type(exc).__name__}: {exc}")]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([("<root>", f"must be a mapping, got {type(loaded).__name__}")])
        bad_keys = [k for k in loaded if not isinstance(k, str)]
        if bad_keys:
            raise ConfigError([(str(k), "top-level keys must be strings (section names), got "
                                        f"{type(k).__name__}") for k in bad_keys])
        data = _resolve_paths(loaded, p.parent)
    token = _YAML_DATA.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from exc
    except SettingsError as exc:
        # a DRIFTGATE_* variable that is not valid JSON for a list/section; the
        # message names the field, never its (possibly secret) value
        raise ConfigError([("<env>", f"{str(exc).split(' from source')[0]}; complex values "
                                     "must be JSON, e.g. DRIFTGATE_WEBHOOKS__SECRETS="
                                     "'[\"whsec_...\"]'")]) from exc
    finally:
        _YAML_DATA.reset(token)


#: the keys that name files: resolved against the config file's folder
PATH_KEYS = {("reference", "path"), ("kafka", "ssl_cafile"), ("kafka", "ssl_certfile"),
             ("kafka", "ssl_keyfile"), ("kafka", "sasl_password_file"),
             ("webhooks", "secrets_file"), ("audit", "path"), ("admin", "token_file"),
             ("state", "password_file"), ("state", "tls_ca_file")}


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(data)
    for section, key in PATH_KEYS:
        sect = out.get(section)
        if isinstance(sect, dict) and isinstance(sect.get(key), str):
            value = Path(sect[key])
            if not value.is_absolute():
                sect = dict(sect)
                sect[key] = str(base / value)
                out[section] = sect
    return out
