"""Config loading: strict keys, durations, secrets, key paths in every error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from watchdog.config import ConfigError, describe, load_config, parse_duration

MINIMAL = {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def problems(tmp_path: Path, data: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    return dict(info.value.details)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("15s", 15), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2d", 172800),
     ("10", 10), (7, 7), (0.25, 0.25), ("0", 0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "fast", "15 s", "-1", "1h-5m", "5x", True, None, "nan",
                                  "inf", [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_minimal_config_gets_contract_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.etcd.discover_members is True
    assert config.etcd.interval == 15 and config.etcd.timeout == 5
    assert config.etcd.probe_key == "/apisix/watchdog/probe"
    assert (config.tripwire.factor, config.tripwire.warmup) == (2.0, 3600)
    assert (config.tripwire.clear_factor, config.tripwire.hold) == (1.5, 300)
    assert config.tripwire.min_streams == 10
    assert (config.smoke.interval, config.smoke.timeout) == (300, 60)
    assert config.web.listen_address == "0.0.0.0:9817"
    assert str(config.state_dir) == "/var/lib/watchdog"


def test_typo_is_named_with_its_path(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "intervall": "5s"},
            "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                          "admin_key_env": "HOME", "wokers": 4}]}
    found = problems(tmp_path, data)
    assert "unknown key" in found["etcd.intervall"]
    assert "unknown key" in found["gateways[0].wokers"]


def test_every_problem_reported(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["ftp://x"], "interval": "soon"},
            "tripwire": {"factor": 0.5}, "web": {"listen_address": "nowhere"}}
    found = problems(tmp_path, data)
    assert set(found) == {"etcd.endpoints[0]", "etcd.interval", "tripwire.factor",
                          "web.listen_address"}
    assert "http://" in found["etcd.endpoints[0]"]
    assert "duration" in found["etcd.interval"]


def test_missing_required_key(tmp_path: Path) -> None:
    assert problems(tmp_path, {"gateways": []}) == {"etcd": "required key is missing"}


def test_timeout_must_be_shorter_than_interval(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "interval": "5s", "timeout": "5s"}}
    assert "shorter than interval" in problems(tmp_path, data)["etcd"]


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*No such file"):
        load_config(tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match="YAML syntax error at line 3"):
        load_config(write(tmp_path, "etcd:\n  endpoints: [oops\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- just\n- a list\n"))


def test_secrets_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("s3cret-admin-key\n")
    key_file.chmod(0o644)
    pw_file = tmp_path / "pw"
    pw_file.write_text("etcd-pass")
    pw_file.chmod(0o600)
    monkeypatch.setenv("GW2_KEY", "env-admin-key")
    data = {"etcd": {"endpoints": ["https://127.0.0.1:2379"],
                     "auth": {"username": "root", "password_file": str(pw_file)}},
            "gateways": [
                {"name": "gw1", "admin_url": "http://127.0.0.1:9180",
                 "admin_key_file": str(key_file)},
                {"name": "gw2", "admin_url": "http://127.0.0.1:9181", "admin_key_env": "GW2_KEY",
                 "workers": 4, "sync_mode": "legacy"},
            ]}
    config = load_config(write(tmp_path, data))
    assert config.etcd.auth is not None
    assert config.etcd.auth.password.get_secret_value() == "etcd-pass"
    assert config.gateways[0].admin_key.get_secret_value() == "s3cret-admin-key"
    assert config.gateways[1].admin_key.get_secret_value() == "env-admin-key"
    assert config.gateways[1].expected_streams() == 52
    assert "world-readable" in caplog.text and "s3cret" not in caplog.text
    text = "\n".join(describe(config)) + repr(config)
    for secret in ("s3cret-admin-key", "env-admin-key", "etcd-pass"):
        assert secret not in text


def test_secret_problems_are_named(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                     "auth": {"username": "root", "password_env": "WATCHDOG_TEST_UNSET"}},
            "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                          "admin_key_file": str(tmp_path / "missing")}]}
    found = problems(tmp_path, data)
    assert "WATCHDOG_TEST_UNSET for the etcd password is not set" in found["etcd.auth"]
    assert "cannot read admin key file" in found["gateways[0]"]


def test_duplicate_gateway_names(tmp_path: Path) -> None:
    gw = {"name": "gw", "admin_url": "http://127.0.0.1:9180", "admin_key_env": "HOME"}
    data = {**MINIMAL, "gateways": [gw, gw]}
    assert "used twice" in problems(tmp_path, data)["(top level)"]


def test_admin_key_is_optional_but_not_twice(tmp_path: Path) -> None:
    bare = {"name": "gw", "admin_url": "http://127.0.0.1:9180"}
    config = load_config(write(tmp_path, {**MINIMAL, "gateways": [bare]}))
    assert config.gateways[0].admin_key is None
    both = {**bare, "admin_key_env": "HOME", "admin_key_file": str(tmp_path / "k")}
    assert "only one of" in problems(tmp_path, {**MINIMAL, "gateways": [both]})["gateways[0]"]
