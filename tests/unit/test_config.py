"""Config loading: strict keys, durations, secrets, key paths in every error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from watchdog.config import (
    MAX_ENDPOINTS,
    MAX_GATEWAYS,
    ConfigError,
    config_from_dict,
    describe,
    load_config,
    parse_duration,
)

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
    found = problems(tmp_path, data)
    assert found["etcd.timeout"].startswith("5s is not shorter than the interval 5s")


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
    assert config.gateways[1].expected_streams() == 65  # (4 workers + privileged agent) x 13
    assert "world-readable" in caplog.text and "s3cret" not in caplog.text
    assert ("gateways[0].admin_key_file", f"secret file {key_file} is world-readable "
            f"(fix: chmod o-r {key_file})") in config.warnings
    text = "\n".join(describe(config)) + repr(config)
    for secret in ("s3cret-admin-key", "env-admin-key", "etcd-pass"):
        assert secret not in text


def test_secret_problems_are_named(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                     "auth": {"username": "root", "password_env": "WATCHDOG_TEST_UNSET"}},
            "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                          "admin_key_file": str(tmp_path / "missing")}]}
    found = problems(tmp_path, data)
    assert "WATCHDOG_TEST_UNSET for the etcd password is not set" in \
        found["etcd.auth.password_env"]
    assert found["gateways[0].admin_key_file"] == \
        f"cannot read {tmp_path / 'missing'}: No such file or directory"


def test_duplicate_gateway_names(tmp_path: Path) -> None:
    gw = {"name": "gw", "admin_url": "http://127.0.0.1:9180", "admin_key_env": "HOME"}
    data = {**MINIMAL, "gateways": [gw, gw]}
    found = problems(tmp_path, data)
    assert found == {"gateways[1].name": "'gw' is already the name of gateways[0]: names "
                                         "must be unique (they are the gateway label)"}


def test_admin_key_is_optional_but_not_twice(tmp_path: Path) -> None:
    bare = {"name": "gw", "admin_url": "http://127.0.0.1:9180"}
    config = load_config(write(tmp_path, {**MINIMAL, "gateways": [bare]}))
    assert config.gateways[0].admin_key is None
    both = {**bare, "admin_key_env": "HOME", "admin_key_file": str(tmp_path / "k")}
    assert "only one of" in problems(tmp_path, {**MINIMAL, "gateways": [both]})["gateways[0]"]


# -- absurd values, caps ---------------------------------------------------------------------

@pytest.mark.fault(
    "`smoke.interval: 5ms` and other absurd durations",
    reports="a config error naming the key and the floor (`did you mean 5m?`)",
    within="at load")
@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("etcd", "interval", "5ms", "5ms is below the 100ms minimum (did you mean 5m?)"),
    ("etcd", "timeout", "10ms", "10ms is below the 50ms minimum (did you mean 10m?)"),
    ("etcd", "interval", 0.01, "0.01 is below the 100ms minimum (a plain number is seconds)"),
    ("smoke", "interval", "5ms", "5ms is below the 1s minimum (did you mean 5m?; 0 disables)"),
    ("smoke", "interval", "500ms", "500ms is below the 1s minimum (0 disables)"),
    ("smoke", "timeout", "0", "0 is below the 1s minimum (a plain number is seconds)"),
    ("smoke", "poll_interval", "1ms", "1ms is below the 10ms minimum (did you mean 1m?)"),
])
def test_absurd_durations_are_named_with_the_floor(tmp_path: Path, section: str, key: str,
                                                   value: object, message: str) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "interval": "1h"}}
    data.setdefault(section, {})[key] = value
    assert problems(tmp_path, data) == {f"{section}.{key}": message}


def test_floors_leave_short_intervals_and_disabled_smoke_alone(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "interval": "100ms",
                     "timeout": "50ms"},
            "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                          "interval": "250ms", "timeout": "200ms"}],
            "smoke": {"interval": 0, "timeout": "1s", "poll_interval": "10ms"}}
    config = load_config(write(tmp_path, data))
    assert (config.etcd.interval, config.gateways[0].timeout, config.smoke.interval) == \
        (0.1, 0.2, 0)
    assert config.warnings == []  # smoke is off: a missing data_url is fine


@pytest.mark.fault(
    "more endpoints or gateways than one process takes on",
    reports="a config error naming `etcd.endpoints` / `gateways` and the cap, suggesting shards",
    within="at load")
def test_endpoint_and_gateway_counts_are_capped() -> None:
    data = {"etcd": {"endpoints": [f"http://127.0.{i // 250}.{i % 250 + 1}:2379"
                                   for i in range(MAX_ENDPOINTS + 1)]},
            "gateways": [{"name": f"gw-{i}", "admin_url": "http://127.0.0.1:9180"}
                         for i in range(MAX_GATEWAYS + 1)]}
    # config_from_dict: the same checks, without spending seconds in the YAML parser.
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    found = dict(info.value.details)
    assert set(found) == {"etcd.endpoints", "gateways"}
    assert found["etcd.endpoints"].startswith(f"{MAX_ENDPOINTS + 1} endpoints are more than "
                                              f"one watchdog process takes on (at most "
                                              f"{MAX_ENDPOINTS}")
    assert found["gateways"].startswith(f"{MAX_GATEWAYS + 1} gateways are more than one "
                                        f"watchdog process takes on (at most {MAX_GATEWAYS}")
    assert "shard them over several watchdog processes" in found["gateways"]
    data["etcd"]["endpoints"] = data["etcd"]["endpoints"][:MAX_ENDPOINTS]
    data["gateways"] = data["gateways"][:MAX_GATEWAYS]
    config = config_from_dict(data)
    assert (len(config.etcd.endpoints), len(config.gateways)) == (MAX_ENDPOINTS, MAX_GATEWAYS)
    # None has a data_url: ten are named, the rest counted, so the log is not flooded.
    assert [key for key, _ in config.warnings] == [f"gateways[{i}]" for i in range(10)] + \
        ["gateways"]
    assert config.warnings[-1][1].startswith(f"{MAX_GATEWAYS - 10} more gateways have no "
                                             "data_url")


# -- URLs ------------------------------------------------------------------------------------

def test_etcd_endpoint_needs_a_port_and_nothing_after_it(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.2", "https://[::1]", "http://127.0.0.1:2379/v3",
                                   "http://127.0.0.1:2379?x=1", "http://127.0.0.1:2379/"]},
            "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                          "etcd_endpoint": "https://etcd-1.example"}]}
    found = problems(tmp_path, data)
    assert found["etcd.endpoints[0]"] == (
        "http://127.0.0.2 has no port: etcd serves clients on 2379 by default, so write "
        "http://127.0.0.2:2379 (or the port your etcd listens on)")
    assert "write https://[::1]:2379 " in found["etcd.endpoints[1]"]
    assert "without a path or query" in found["etcd.endpoints[2]"]
    assert "query" in found["etcd.endpoints[3]"]
    assert "etcd.endpoints[4]" not in found  # a trailing slash is harmless and dropped
    assert "write https://etcd-1.example:2379 " in found["gateways[0].etcd_endpoint"]


@pytest.mark.fault(
    "credentials in URL userinfo (any URL key)",
    reports="refused naming the key, the credentials shown as `<credentials>`",
    within="at load")
def test_credentials_in_any_url_are_refused_without_showing_them(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["https://usr-333:etcd-pw-123@127.0.0.1:2379"]},
            "gateways": [{"name": "gw", "admin_url": "http://admin:adm-pw-456@127.0.0.1:9180",
                          "data_url": "http://u:data-pw-789@127.0.0.1:9080",
                          "status_url": "http://:st-pw-000@127.0.0.1:7085",
                          "metrics_url": "ftp://x:m-pw-111@h:99999/metrics",
                          "etcd_endpoint": "http://tok-222@127.0.0.1:2379"},
                         {"name": "gw2", "admin_url": "http://u:sl/ash#hash-444@127.0.0.1:9180",
                          "data_url": "no-scheme:colon-555@127.0.0.1:9080"}]}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    found = dict(info.value.details)
    assert set(found) == {"etcd.endpoints[0]", "gateways[0].admin_url", "gateways[0].data_url",
                          "gateways[0].status_url", "gateways[0].metrics_url",
                          "gateways[0].etcd_endpoint", "gateways[1].admin_url",
                          "gateways[1].data_url"}
    assert found["etcd.endpoints[0]"] == (
        "https://<credentials>@127.0.0.1:2379: credentials in a URL are not accepted (they "
        "would end up in logs and on the status page); use etcd.auth (username, "
        "password_file or password_env)")
    assert "use admin_key_file or admin_key_env" in found["gateways[0].admin_url"]
    text = str(info.value)
    for secret in ("etcd-pw-123", "adm-pw-456", "data-pw-789", "st-pw-000", "m-pw-111",
                   "tok-222", "usr-333", "admin:", "sl/ash", "hash-444", "colon-555"):
        assert secret not in text


# -- secret and TLS files --------------------------------------------------------------------

def gateway_with_key(key_file: Path) -> dict[str, object]:
    return {**MINIMAL, "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                                     "data_url": "http://127.0.0.1:9080",
                                     "admin_key_file": str(key_file)}]}


@pytest.mark.fault(
    "a multi-line admin key file",
    reports="the first non-empty line is used, with a warning counting the others; a blank file is "
            "an error",
    within="at load")
def test_multi_line_admin_key_file_uses_the_first_non_empty_line(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    key.write_text("\n   \n  first-line-key  \nsecond-line\n\nthird\n")
    key.chmod(0o600)
    config = load_config(write(tmp_path, gateway_with_key(key)))
    assert config.gateways[0].admin_key.get_secret_value() == "first-line-key"
    assert config.warnings == [("gateways[0].admin_key_file", f"only the first line of {key} "
                                "is used; its 2 other non-empty line(s) are ignored")]
    key.write_text(" \n\t\n")
    assert problems(tmp_path, gateway_with_key(key)) == {
        "gateways[0].admin_key_file": f"{key} is empty"}


def test_multi_line_secret_from_the_environment(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_TEST_KEY", "\n env-key \nmore\n")
    monkeypatch.setenv("WATCHDOG_TEST_BLANK", " \n ")
    gw = {"name": "gw", "admin_url": "http://127.0.0.1:9180", "data_url": "http://h:9080",
          "admin_key_env": "WATCHDOG_TEST_KEY"}
    config = load_config(write(tmp_path, {**MINIMAL, "gateways": [gw]}))
    assert config.gateways[0].admin_key.get_secret_value() == "env-key"
    assert config.warnings == [("gateways[0].admin_key_env", "only the first line of "
                                "$WATCHDOG_TEST_KEY is used; its 1 other non-empty line(s) "
                                "are ignored")]
    blank = {**gw, "admin_key_env": "WATCHDOG_TEST_BLANK"}
    assert problems(tmp_path, {**MINIMAL, "gateways": [blank]}) == {
        "gateways[0].admin_key_env": "environment variable WATCHDOG_TEST_BLANK for the admin "
                                     "key is empty"}


@pytest.mark.fault(
    "a password file that is not UTF-8",
    reports="an error naming the key and the path, no byte and no offset",
    within="at load")
def test_non_utf8_secret_names_key_and_path_but_no_byte(tmp_path: Path) -> None:
    pw = tmp_path / "pw.txt"
    pw.write_bytes(b"caf\xe9-zq\xff\n")
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                     "auth": {"username": "root", "password_file": str(pw)}}}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert info.value.details == [("etcd.auth.password_file", f"{pw} is not UTF-8 text")]
    text = str(info.value)
    for leak in ("caf", "zq", "xe9", "xff", "0xe9", "position", "byte"):
        assert leak not in text.replace(str(tmp_path), "")


@pytest.mark.fault(
    "a secret or TLS file that is a FIFO, a directory or a device",
    reports="a config error naming the key (`is a FIFO: give the path of a regular file`); never "
            "read, no hang",
    within="at load")
def test_non_regular_files_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "certs"
    folder.mkdir()
    data = {"etcd": {"endpoints": ["https://127.0.0.1:2379"],
                     "tls": {"ca_file": str(folder), "cert_file": "/dev/null",
                             "key_file": str(tmp_path / "absent.pem")}},
            "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                          "admin_key_file": str(fifo)}]}
    assert problems(tmp_path, data) == {
        "etcd.tls.ca_file": f"{folder} is a directory: give the path of a regular file",
        "etcd.tls.cert_file": "/dev/null is a device: give the path of a regular file",
        "etcd.tls.key_file": f"cannot read {tmp_path / 'absent.pem'}: No such file or directory",
        "gateways[0].admin_key_file": f"{fifo} is a FIFO: give the path of a regular file",
    }


@pytest.mark.fault(
    "the config file is a FIFO",
    reports="refused, never read (no hang)",
    within="at load")
def test_config_file_that_is_a_fifo_is_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "watchdog.yml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=f"^config file {fifo} is a FIFO: give the path"):
        load_config(fifo)


def test_cert_without_key_names_the_missing_key(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("not checked here\n")
    data = {"etcd": {"endpoints": ["https://127.0.0.1:2379"], "tls": {"cert_file": str(cert)}}}
    assert problems(tmp_path, data) == {
        "etcd.tls.key_file": "required with cert_file (the client key)"}


def test_relative_paths_resolve_against_the_config_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    (conf / "secrets").mkdir(parents=True)
    (conf / "secrets" / "pw").write_text("pw-1\n")
    (conf / "secrets" / "key").write_text("key-1\n")
    (conf / "ca.pem").write_text("ca\n")
    for f in (conf / "secrets" / "pw", conf / "secrets" / "key"):
        f.chmod(0o600)
    path = conf / "watchdog.yml"
    path.write_text(yaml.safe_dump({
        "etcd": {"endpoints": ["https://127.0.0.1:2379"], "tls": {"ca_file": "ca.pem"},
                 "auth": {"username": "root", "password_file": "secrets/pw"}},
        "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                      "data_url": "http://127.0.0.1:9080", "admin_key_file": "secrets/key"}],
        "state_dir": "state"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "conf" / "watchdog.yml", preflight=True)
    assert config.etcd.tls is not None and config.etcd.auth is not None
    assert config.etcd.tls.ca_file.resolve() == conf / "ca.pem"
    assert config.etcd.auth.password_file.resolve() == conf / "secrets" / "pw"
    assert config.gateways[0].admin_key_file.resolve() == conf / "secrets" / "key"
    assert config.state_dir.resolve() == conf / "state"
    assert config.gateways[0].admin_key.get_secret_value() == "key-1"
    assert config.warnings == []


def test_state_dir_must_be_writable_at_preflight_only(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    path = write(tmp_path, {**MINIMAL, "state_dir": str(blocker / "state")})
    with pytest.raises(ConfigError) as info:
        load_config(path, preflight=True)
    assert info.value.details == [
        ("state_dir", f"{blocker / 'state'} cannot be created: {blocker} is not a directory")]
    # The daemon runs on and learns in memory (docs/reliability.md): no error at run time.
    assert load_config(path).state_dir == blocker / "state"


# -- intervals and timeouts ------------------------------------------------------------------

def test_default_timeouts_clamp_below_the_interval(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "interval": "2s"},
            "gateways": [{"name": "fast", "admin_url": "http://127.0.0.1:9180",
                          "interval": "500ms"},
                         {"name": "slow", "admin_url": "http://127.0.0.1:9181",
                          "interval": "1m"},
                         {"name": "same", "admin_url": "http://127.0.0.1:9182"}],
            "smoke": {"interval": 0}}
    config = load_config(write(tmp_path, data))
    assert config.etcd.timeout == pytest.approx(1.6)
    timings = [(gw.interval, gw.timeout) for gw in config.gateways]
    assert timings == [(0.5, pytest.approx(0.4)), (60, pytest.approx(1.6)),
                       (2, pytest.approx(1.6))]
    assert load_config(write(tmp_path, MINIMAL)).etcd.timeout == 5  # 15s: the default stands


def test_explicit_timeouts_must_be_shorter_than_their_interval(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "interval": "1s"},
            "gateways": [{"name": "a", "admin_url": "http://127.0.0.1:9180", "timeout": "2s"},
                         {"name": "b", "admin_url": "http://127.0.0.1:9181",
                          "interval": "10s", "timeout": "10s"},
                         {"name": "c", "admin_url": "http://127.0.0.1:9182",
                          "interval": "10s", "timeout": "9s"}]}
    found = problems(tmp_path, data)
    assert set(found) == {"gateways[0].timeout", "gateways[1].timeout"}
    assert found["gateways[0].timeout"].startswith(
        "2s is not shorter than the interval 1s (etcd.interval, inherited)")
    assert found["gateways[1].timeout"].startswith(
        "10s is not shorter than the interval 10s (gateways[1].interval)")


def test_insecure_skip_verify_with_grpc_probes_is_an_error(tmp_path: Path) -> None:
    etcd = {"endpoints": ["https://127.0.0.1:2379"], "tls": {"insecure_skip_verify": True}}
    found = problems(tmp_path, {"etcd": etcd})
    assert list(found) == ["etcd.tls.insecure_skip_verify"]
    assert "etcd.grpc_probes: false" in found["etcd.tls.insecure_skip_verify"]
    config = load_config(write(tmp_path, {"etcd": {**etcd, "grpc_probes": False}}))
    assert config.etcd.tls is not None and config.etcd.tls.insecure_skip_verify
    spelled = {**etcd, "tls": {"insecure_skip_verify": "yes"}, "grpc_probes": "on"}
    assert list(problems(tmp_path, {"etcd": spelled})) == ["etcd.tls.insecure_skip_verify"]


def test_gateway_without_data_url_warns_while_smoke_is_on(tmp_path: Path) -> None:
    data = {**MINIMAL, "gateways": [
        {"name": "gw-ok", "admin_url": "http://127.0.0.1:9180", "data_url": "http://h:9080"},
        {"name": "gw-blind", "admin_url": "http://127.0.0.1:9181"}]}
    config = load_config(write(tmp_path, data))
    assert [key for key, _ in config.warnings] == ["gateways[1]"]
    assert "gateway gw-blind has no data_url" in config.warnings[0][1]


def test_all_problems_in_one_pass(tmp_path: Path) -> None:
    gw = {"name": "gw", "admin_url": "http://127.0.0.1:9180"}
    data = {"etcd": {"endpoints": ["http://127.0.0.2"], "interval": "1s", "timeout": "3s",
                     "tls": {"insecure_skip_verify": True, "ca_file": "missing-ca.pem"}},
            "gateways": [gw, {**gw, "wokers": 2}, gw, {**gw, "timeout": "1ms"}],
            "smoke": {"interval": "30ms"}, "state_dir": str(tmp_path / "c.yml" / "x")}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, preflight=True)
    found = dict(info.value.details)
    assert set(found) == {
        "etcd.endpoints[0]", "etcd.timeout", "etcd.tls.ca_file", "etcd.tls.insecure_skip_verify",
        "gateways[1].wokers", "gateways[1].name", "gateways[2].name", "gateways[3].name",
        "gateways[3].timeout", "smoke.interval", "state_dir"}
    assert f"cannot read {tmp_path / 'missing-ca.pem'}" in found["etcd.tls.ca_file"]
    assert info.value.message == f"{path}: 11 problems"


def test_text_that_is_not_unicode_is_named_not_a_traceback(tmp_path: Path) -> None:
    """Found by bench/fuzz.py: an escaped lone surrogate in a URL crashed pydantic's URL
    validator with UnicodeEncodeError. Any key or value that is not valid Unicode is a
    ConfigError naming its key path."""
    path = tmp_path / "watchdog.yml"
    path.write_text('{"etcd": {"endpoints": ["http://127.0.0.1:2379"]},'
                    ' "gateways": [{"name": "g", "admin_url": "http://\\ud800x:9180"}],'
                    ' "tripwire": {"\\udfff": 1}}')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    where = [loc for loc, _ in err.value.details]
    assert where == ["gateways[0].admin_url", "tripwire"], err.value.details
    assert "not valid Unicode" in str(err.value)


def test_endpoints_may_carry_a_name(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379",
                                   {"url": "http://127.0.0.2:2379/", "name": "etcd-b"}]}}
    etcd = load_config(write(tmp_path, data)).etcd
    assert etcd.endpoints == ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
    assert etcd.endpoint_names == {"http://127.0.0.2:2379": "etcd-b"}
    found = problems(tmp_path, {
        "etcd": {"endpoints": [{"url": "http://127.0.0.1:2379", "name": "a"},
                               {"url": "http://127.0.0.2:2379", "name": "a"},
                               {"url": "http://127.0.0.3", "name": "c"},
                               {"url": "http://127.0.0.4:2379", "nam": "d"},
                               {"url": "http://127.0.0.5:2379", "name": "e f"}, "ftp://x"],
                 "interval": "1ms"}})
    assert "already the name of endpoints[0]" in found["etcd.endpoints[1].name"]
    assert "has no port" in found["etcd.endpoints[2].url"]
    assert "unknown key" in found["etcd.endpoints[3].nam"]
    assert "required key" in found["etcd.endpoints[3].name"]
    assert "pattern" in found["etcd.endpoints[4].name"]
    assert "etcd.endpoints[5]" in found and "etcd.interval" in found  # all in one pass


def test_metrics_urls_name_a_peers_own_page(tmp_path: Path) -> None:
    data = {"etcd": {"endpoints": ["http://127.0.0.1:2379"], "metrics_urls": {
        "http://127.0.0.1:2379/": "http://127.0.0.1:8080/metrics", "kine-2": "https://k:9/metrics"}}}
    etcd = load_config(write(tmp_path, data)).etcd
    assert etcd.metrics_url_for("p", "http://127.0.0.1:2379") == "http://127.0.0.1:8080"
    assert etcd.metrics_url_for("kine-2", "http://127.0.0.1:2379") == "https://k:9"
    assert etcd.metrics_url_for("kine-3", "http://x:1") is None
    data["etcd"]["metrics_urls"] = {"kine-2": "http://k:8080/", "kine-3": "ftp://k/metrics",
                                    "kine-4": "http://u:pw@k:1/metrics"}
    found = problems(tmp_path, data)
    assert "ends in /metrics" in found["etcd.metrics_urls.kine-2"]
    assert "http:// or https://" in found["etcd.metrics_urls.kine-3"]
    assert "credentials" in found["etcd.metrics_urls.kine-4"] and "pw" not in str(found)
