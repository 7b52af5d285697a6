"""Service configuration: one YAML file plus environment overrides.

Precedence (highest first): explicit keyword arguments, environment variables
(``DRIFTGATE_`` prefix, ``__`` between nested keys, e.g.
``DRIFTGATE_KAFKA__BOOTSTRAP_SERVERS``), secret files (``*_file`` keys), the
YAML file, then defaults. A bad value fails at start-up with
:class:`ConfigError`, which names the key and the reason.

What lives here (everything is re-exported from this package, import it from
``monitor.config``):

* :mod:`.sections` — one model per YAML section (:class:`KafkaSettings` ...
  :class:`StateSettings`), each validated on its own;
* :mod:`.settings` — :class:`Settings` (the whole configuration and the rules
  that span sections), :func:`load_settings`, :class:`ConfigError` and the
  resolution of relative paths against the file's directory;
* :mod:`.secrets` — :func:`secret_or_file`, the one resolver of "a secret or
  a secret file", and the check that a configured file exists.

May import: the standard library, pydantic, pydantic-settings, PyYAML and
:mod:`rollback.rules` (the rule specs); nothing else from :mod:`monitor`.
"""

from __future__ import annotations

from monitor.config.secrets import secret_or_file
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
from monitor.config.settings import PATH_KEYS, ConfigError, Settings, load_settings

__all__ = [
    "PATH_KEYS",
    "AdminSettings",
    "AlertingSettings",
    "AuditSettings",
    "CloudEventsSettings",
    "CodecSettings",
    "ConfigError",
    "DedupeSettings",
    "EvaluationSettings",
    "FeatureSettings",
    "FieldMapping",
    "HttpSettings",
    "JoinSettings",
    "KafkaSettings",
    "LogSettings",
    "ModelSettings",
    "ReferenceSettings",
    "Settings",
    "StateSettings",
    "WebhookSettings",
    "WindowSettings",
    "load_settings",
    "secret_or_file",
]
