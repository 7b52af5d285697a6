"""Tests of monitor.config: defaults, YAML, environment precedence, every bad config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import ConfigError, Settings, load_settings
from tests.support import MODEL, write_config

FIT = {"fit_from_champion_events": 100}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DRIFTGATE_* variable of the outer environment leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("DRIFTGATE_"):
            monkeypatch.delenv(name)


def _config(tmp_path: Path, name: str = "config.yaml", **sections: Any) -> Path:
    sections.setdefault("reference", FIT)
    return write_config(tmp_path / name, **sections)


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return info.value


# ---------------------------------------------------------------------------
# defaults, YAML, environment
# ---------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    s = load_settings(None, models=[{"name": "m", "champion": "v1"}], reference=FIT)
    assert s.source == "kafka"
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka.group_id == "driftgate"
    assert s.kafka.security_protocol == "PLAINTEXT"
    assert s.kafka.password() is None
    assert s.fields.score == "score"
    assert s.fields.event_id == "event_id"
    assert s.cloudevents.enabled is True
    assert s.windows.slice_seconds == 10.0
    assert s.windows.window_seconds == 300.0
    assert s.windows.n_slices == 30
    assert s.windows.kpi_n_slices == 360
    assert s.join.max_pending == 1_000_000
    assert s.http.port == 8080
    assert s.codec.max_message_bytes == 1_000_000
    m = s.model("m")
    assert m is not None
    assert (m.champion, m.canary, m.threshold, m.max_versions) == ("v1", None, 0.5, 8)
    assert s.model("other") is None


def test_yaml_values_are_loaded(tmp_path: Path) -> None:
    cfg = _config(tmp_path, kafka={"group_id": "from-file", "client_id": "file-client"},
                  windows={"slice_seconds": 5, "window_seconds": 60,
                           "kpi_window_seconds": 600, "allowed_lateness_seconds": 30},
                  http={"port": 9999})
    s = load_settings(cfg)
    assert s.kafka.group_id == "from-file"
    assert s.kafka.client_id == "file-client"
    assert s.windows.n_slices == 12
    assert s.windows.kpi_n_slices == 120
    assert s.http.port == 9999
    assert s.features.categorical == ["merchant_category"]
    assert [m.name for m in s.models] == [MODEL]


def test_empty_file_gives_defaults_plus_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("")
    s = load_settings(cfg, models=[{"name": "m", "champion": "a"}], reference=FIT)
    assert s.kafka.group_id == "driftgate"


def test_env_beats_the_file_and_merges_the_section(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path, kafka={"group_id": "from-file", "client_id": "file-client"})
    assert load_settings(cfg).kafka.group_id == "from-file"
    monkeypatch.setenv("DRIFTGATE_KAFKA__GROUP_ID", "from-env")
    s = load_settings(cfg)
    assert s.kafka.group_id == "from-env"
    # the rest of the file's kafka section is kept
    assert s.kafka.client_id == "file-client"
    monkeypatch.setenv("DRIFTGATE_HTTP__PORT", "7070")
    assert load_settings(cfg).http.port == 7070


def test_bad_env_value_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    monkeypatch.setenv("DRIFTGATE_HTTP__PORT", "not-a-port")
    err = _error(cfg)
    assert "http.port" in str(err)
    assert "not-a-port" in str(err)


def test_explicit_overrides_beat_the_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path, source="kafka")
    assert load_settings(cfg, source="replay").source == "replay"


def test_explicit_overrides_beat_the_env(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(tmp_path)
    monkeypatch.setenv("DRIFTGATE_SOURCE", "kafka")
    assert load_settings(cfg, source="replay").source == "replay"


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "ref.json").write_text("{}")
    s = load_settings(write_config(sub / "c.yaml", reference={"path": "ref.json"}))
    assert s.reference.path == sub / "ref.json"


def test_sasl_password_from_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = _config(tmp_path, kafka={"security_protocol": "SASL_PLAINTEXT",
                                   "sasl_mechanism": "PLAIN", "sasl_username": "user",
                                   "sasl_password_file": "pw"})
    s = load_settings(cfg)
    assert s.kafka.password() == "s3cret"
    assert s.kafka.sasl_password is None


def test_sasl_inline_password_is_secret(tmp_path: Path) -> None:
    cfg = _config(tmp_path, kafka={"security_protocol": "SASL_SSL",
                                   "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "user",
                                   "sasl_password": "hunter2"})
    s = load_settings(cfg)
    assert s.kafka.password() == "hunter2"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump(mode="json"))


# ---------------------------------------------------------------------------
# content hash
# ---------------------------------------------------------------------------


def test_content_hash_is_stable(tmp_path: Path) -> None:
    a = load_settings(_config(tmp_path, "a.yaml", kafka={"group_id": "g", "client_id": "c"}))
    again = load_settings(_config(tmp_path, "a.yaml", kafka={"group_id": "g", "client_id": "c"}))
    assert a.content_hash() == again.content_hash()
    assert len(a.content_hash()) == 64
    # key order in the file does not matter
    body = yaml.safe_load((tmp_path / "a.yaml").read_text())
    reordered = tmp_path / "b.yaml"
    reordered.write_text(yaml.safe_dump(dict(reversed(list(body.items()))), sort_keys=False))
    assert load_settings(reordered).content_hash() == a.content_hash()


def test_content_hash_changes_with_the_config(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    base = load_settings(_config(tmp_path, "a.yaml", kafka={"group_id": "g"})).content_hash()
    other = load_settings(_config(tmp_path, "b.yaml", kafka={"group_id": "h"})).content_hash()
    assert other != base
    monkeypatch.setenv("DRIFTGATE_WINDOWS__ALLOWED_LATENESS_SECONDS", "5")
    assert load_settings(tmp_path / "a.yaml").content_hash() != base


# ---------------------------------------------------------------------------
# bad configurations
# ---------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown key", {"kafka": {"bootstrap_server": "x:1"}}, "kafka.bootstrap_server",
     "Extra inputs are not permitted"),
    ("unknown top-level key", {"kafak": {"group_id": "g"}}, "kafak",
     "Extra inputs are not permitted"),
    ("wrong type", {"kafka": {"max_poll_records": "many"}}, "kafka.max_poll_records",
     "valid integer"),
    ("wrong type in a list", {"models": [{"name": MODEL, "champion": "v1",
                                          "threshold": "high"}]},
     "models.0.threshold", "valid number"),
    ("out of range", {"codec": {"max_message_bytes": 1}}, "codec.max_message_bytes",
     "greater than or equal to 64"),
    ("bad literal", {"kafka": {"security_protocol": "TLS"}}, "kafka.security_protocol",
     "'TLS'"),
    ("slice not dividing the window", {"windows": {"slice_seconds": 7}}, "windows",
     "window_seconds (600.0) must be a whole multiple of slice_seconds (7.0)"),
    ("slice not dividing the kpi window",
     {"windows": {"slice_seconds": 10, "window_seconds": 600, "kpi_window_seconds": 605}},
     "windows", "kpi_window_seconds (605.0) must be a whole multiple"),
    ("lateness above the window", {"windows": {"allowed_lateness_seconds": 601}}, "windows",
     "allowed_lateness_seconds (601.0) must not exceed window_seconds (600.0)"),
    ("canary equals champion", {"models": [{"name": MODEL, "champion": "v1",
                                             "canary": "v1"}]},
     "models.0", "canary must differ from champion"),
    ("duplicate model names", {"models": [{"name": "m", "champion": "v1"},
                                          {"name": "m", "champion": "v2"}]},
     "models", "model names must be unique, got duplicates ['m']"),
    ("no models", {"models": []}, "models", "at least 1"),
    ("duplicate features", {"features": {"numeric": ["amount", "hour"],
                                         "categorical": ["hour"]}},
     "features", "feature names must be unique across numeric and categorical, got "
     "duplicates ['hour']"),
    ("missing reference source", {"reference": {"fit_from_champion_events": 0}}, "reference",
     "set path"),
    ("missing reference file", {"reference": {"path": "nowhere/ref.json"}}, "reference",
     "does not exist"),
    ("SASL without username", {"kafka": {"security_protocol": "SASL_PLAINTEXT",
                                         "sasl_mechanism": "PLAIN",
                                         "sasl_password": "pw"}},
     "kafka", "sasl_username is required with SASL_PLAINTEXT"),
    ("SASL without password", {"kafka": {"security_protocol": "SASL_SSL",
                                         "sasl_mechanism": "PLAIN",
                                         "sasl_username": "u"}},
     "kafka", "sasl_password or sasl_password_file is required with SASL_SSL"),
    ("SASL without mechanism", {"kafka": {"security_protocol": "SASL_SSL",
                                          "sasl_username": "u", "sasl_password": "p"}},
     "kafka", "sasl_mechanism is required"),
    ("missing password file", {"kafka": {"sasl_password_file": "no-such-secret"}}, "kafka",
     "sasl_password_file"),
]


@pytest.mark.parametrize(("sections", "key", "reason"),
                         [pytest.param(s, k, r, id=name) for name, s, k, r in BAD])
def test_bad_config_names_key_and_reason(tmp_path: Path, sections: dict[str, Any], key: str,
                                         reason: str) -> None:
    err = _error(_config(tmp_path, **sections))
    assert str(err).startswith("invalid configuration: ")
    keys = [k for k, _ in err.problems]
    assert key in keys, err.problems
    why = dict(err.problems)[key]
    assert reason in why, err.problems
    assert f"{key}: " in str(err)
    assert reason in str(err)


def test_missing_password_file_names_the_file(tmp_path: Path) -> None:
    err = _error(_config(tmp_path, kafka={"sasl_password_file": "no-such-secret"}))
    assert str(tmp_path / "no-such-secret") in str(err)
    assert "does not exist" in str(err)


def test_missing_required_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"models": [{"name": "m", "champion": "v1"}]}))
    err = _error(cfg)
    assert ("reference", "Field required") in err.problems


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    err = _error(_config(tmp_path, kafka={"nope": 1}, http={"port": 70000}))
    keys = {k for k, _ in err.problems}
    assert {"kafka.nope", "http.port"} <= keys


def test_bad_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("models: [1,\n  reference: {\n")
    err = _error(cfg)
    assert err.problems[0][0] == "<file>"
    assert "is not valid YAML" in str(err)
    assert str(cfg) in str(err)


@pytest.mark.parametrize("body", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_root(tmp_path: Path, body: str) -> None:
    cfg = tmp_path / "list.yaml"
    cfg.write_text(body)
    err = _error(cfg)
    assert err.problems[0][0] == "<root>"
    assert "must be a mapping" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    err = _error(tmp_path / "absent.yaml")
    assert err.problems[0][0] == "<file>"
    assert "cannot read" in str(err)
    assert "No such file" in str(err)


def test_unreadable_file(tmp_path: Path) -> None:
    # a directory cannot be read as a file (root may read mode-000 files)
    err = _error(tmp_path)
    assert err.problems[0][0] == "<file>"
    assert "cannot read" in str(err)


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(_config(tmp_path))
    assert isinstance(s, Settings)
    with pytest.raises(ValueError, match="frozen"):
        s.kafka.group_id = "x"  # type: ignore[misc]


@pytest.mark.parametrize("source", ["faust", "replay"])
def test_redis_state_needs_the_kafka_source(tmp_path: Path, source: str) -> None:
    from tests.support import fit_reference

    ref = tmp_path / "reference.json"
    ref.write_text(fit_reference().to_json())
    cfg = _config(tmp_path, source=source, reference={"path": str(ref)},
                  state={"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"})
    err = _error(cfg)
    assert "state.backend 'redis' needs source 'kafka'" in str(err)
    assert repr(source) in str(err)
    # the same store with driftgate's own consumer is fine
    assert load_settings(cfg, source="kafka").state.backend == "redis"


def test_the_example_config_loads_and_shows_the_codec_defaults(tmp_path: Path) -> None:
    from monitor.config import CodecSettings
    from tests.support import fit_reference

    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "driftgate.yaml"
    cfg = tmp_path / "driftgate.yaml"
    cfg.write_text(example.read_text())
    (tmp_path / "reference.json").write_text(fit_reference().to_json())
    s = load_settings(cfg)
    assert s.codec == CodecSettings()
    assert s.codec.fast_decode is True
    assert s.features.numeric[0] == "amount"
