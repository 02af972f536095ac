"""Fuzzing the inputs an operator types: durations, config dicts and config files.

No input crashes them: every rejection is a ValueError (durations) or a ConfigError whose
details name a key path and a problem. (The /metrics parser has its own property tests in
test_promtext.py.)
"""

from __future__ import annotations

import math
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from watchdog.config import Config, ConfigError, config_from_dict, load_config, parse_duration
from watchdog.webconfig import web_config_from_dict

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# -- durations ----------------------------------------------------------------------------

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=8,
)
duration_like = st.text(alphabet="0123456789.msdh +-_eEinfa\t", max_size=12)


@FUZZ
@given(st.one_of(anything, duration_like))
def test_parse_duration_never_crashes(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as err:
        text = str(err)
        assert text and ("duration" in text or "boolean" in text), text
        return
    assert isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS))),
                min_size=1, max_size=4))
def test_parse_duration_sums_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    expected = sum(n * UNITS[unit] for n, unit in parts)
    assert math.isclose(parse_duration(text), expected, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(parse_duration(f"  {text} "), expected, rel_tol=1e-9, abs_tol=1e-9)


@FUZZ
@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_parse_duration_plain_seconds(value: float) -> None:
    assert parse_duration(value) == value
    assert parse_duration(repr(value)) == value


# -- config dicts -------------------------------------------------------------------------

KEYS = {
    "": ["etcd", "gateways", "tripwire", "smoke", "state_dir", "web"],
    "etcd": ["endpoints", "discover_members", "tls", "auth", "probe_key", "prefix", "interval",
             "timeout", "grpc_probes", "max_metrics_bytes", "connections_top_n"],
    "etcd.tls": ["ca_file", "cert_file", "key_file", "insecure_skip_verify"],
    "etcd.auth": ["username", "password_file", "password_env"],
    "gateways[]": ["name", "admin_url", "admin_key_file", "admin_key_env", "data_url",
                   "status_url", "metrics_url", "workers", "sync_mode", "watched_prefixes",
                   "etcd_endpoint", "interval", "timeout"],
    "tripwire": ["factor", "warmup", "clear_factor", "hold", "min_streams", "state_max_age"],
    "smoke": ["interval", "timeout", "poll_interval"],
    "web": ["listen_address"],
}
scalar = (st.none() | st.booleans() | st.integers(-5, 70000) | st.floats(allow_nan=True)
          | st.sampled_from(["15s", "1h", "0", "-1s", "nan", "inf", "http://127.0.0.1:2379",
                             "https://[::1]:2379", "http://x:99999", "ftp://h", "legacy",
                             "modern", "0.0.0.0:9817", ":1", "gw-1", "/apisix", "apisix",
                             "TEST_FUZZ_ENV", "/nonexistent/file", ""])
          | st.text(max_size=12))


def section(path: str) -> st.SearchStrategy[Any]:
    keys = KEYS[path]
    children: dict[str, st.SearchStrategy[Any]] = {}
    for key in keys:
        child = f"{path}.{key}" if path else key
        if child == "gateways":
            children[key] = st.lists(section("gateways[]"), max_size=2) | scalar
        elif child == "etcd.endpoints":
            children[key] = st.lists(scalar, max_size=3) | scalar
        elif child in KEYS:
            children[key] = section(child) | scalar
        else:
            children[key] = scalar
    # known keys, plus now and then a misspelt or unknown one
    return st.fixed_dictionaries({}, optional={
        **children, "unknown_key": scalar, keys[0] + "s": scalar,
    })


def check_rejection(err: ConfigError) -> None:
    assert err.message
    for loc, problem in err.details:
        assert loc and problem, err.details
        assert "Traceback" not in problem


@FUZZ
@given(section(""))
def test_config_from_dict_never_crashes(data: dict[str, Any]) -> None:
    os.environ.setdefault("TEST_FUZZ_ENV", "fuzz-secret")
    try:
        config = config_from_dict(data)
    except ConfigError as err:
        check_rejection(err)
        for key in data:
            if key not in KEYS[""]:
                assert any(loc.split(".")[0].split("[")[0] == key for loc, _ in err.details), \
                    (key, err.details)
        return
    assert isinstance(config, Config)


VALID: dict[str, Any] = {
    "etcd": {"endpoints": ["http://127.0.0.1:2379"], "interval": "15s", "timeout": "5s"},
    "gateways": [{"name": "gw-1", "admin_url": "http://127.0.0.1:9180",
                  "admin_key_env": "TEST_FUZZ_ENV"}],
    "tripwire": {"factor": 2.0},
    "smoke": {"interval": "5m"},
    "web": {"listen_address": "127.0.0.1:9817"},
}
LEAVES = [
    ("etcd", "endpoints"), ("etcd", "interval"), ("etcd", "timeout"), ("etcd", "prefix"),
    ("etcd", "max_metrics_bytes"), ("etcd", "connections_top_n"), ("etcd", "discover_members"),
    ("gateways", 0, "name"), ("gateways", 0, "admin_url"), ("gateways", 0, "workers"),
    ("gateways", 0, "sync_mode"), ("gateways", 0, "data_url"), ("tripwire", "factor"),
    ("tripwire", "clear_factor"), ("tripwire", "warmup"), ("smoke", "timeout"),
    ("smoke", "interval"), ("web", "listen_address"), ("state_dir",),
]


@FUZZ
@given(st.sampled_from(LEAVES), scalar | st.lists(scalar, max_size=2))
def test_one_bad_value_is_named_by_its_key_path(path: tuple[Any, ...], value: Any) -> None:
    os.environ.setdefault("TEST_FUZZ_ENV", "fuzz-secret")
    data = yaml.safe_load(yaml.safe_dump(VALID))  # a deep copy
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    try:
        config_from_dict(data)
    except ConfigError as err:
        check_rejection(err)
        top = path[0]
        # The error names the key, or (for cross-field checks) the section holding it.
        assert any(loc == top or loc.startswith((f"{top}.", f"{top}[")) for loc, _ in
                   err.details), (path, value, err.details)


# -- config files -------------------------------------------------------------------------

yaml_chars = string.ascii_letters + string.digits + " :-[]{},'\"\n\t#&*!|>%@`?.\\/"


@FUZZ
@given(st.one_of(
    st.text(alphabet=yaml_chars, max_size=200),
    st.text(max_size=100),
    section("").map(lambda d: yaml.safe_dump(d, default_flow_style=False)),
    st.tuples(section("").map(yaml.safe_dump), st.integers(0, 400), st.text(yaml_chars,
                                                                            max_size=5))
      .map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]),
    st.integers(1, 60).map(lambda n: "etcd: " + "[" * n + "]" * n),
    st.integers(1, 60).map(lambda n: "etcd: " + "{a: " * n + "1" + "}" * n),
))
def test_load_config_never_crashes(text: str) -> None:
    os.environ.setdefault("TEST_FUZZ_ENV", "fuzz-secret")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watchdog.yml"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        try:
            config = load_config(path)
        except ConfigError as err:
            check_rejection(err)
            assert str(path) in err.message
            return
        assert isinstance(config, Config)


def test_load_config_deep_nesting(tmp_path: Path) -> None:
    """PyYAML recurses once per level: too deep is a ConfigError, not a RecursionError."""
    path = tmp_path / "deep.yml"
    for n in (5000, 20000):
        for text in ("etcd: " + "[" * n + "]" * n, "etcd: " + "{a: " * n + "1" + "}" * n):
            path.write_text(text)
            try:
                load_config(path)
            except ConfigError as err:
                check_rejection(err)


@FUZZ
@given(st.binary(max_size=200))
def test_load_config_binary_files(raw: bytes) -> None:
    assume(raw)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "watchdog.yml"
        path.write_bytes(raw)
        try:
            load_config(path)
        except ConfigError as err:
            check_rejection(err)


# -- the web config -----------------------------------------------------------------------

WEB_KEYS = st.fixed_dictionaries({}, optional={
    "tls_server_config": st.fixed_dictionaries({}, optional={
        k: scalar for k in ("cert_file", "key_file", "client_auth_type", "client_ca_file",
                            "min_version", "max_version", "cipher_suites", "certfile")}) | scalar,
    "basic_auth_users": st.dictionaries(st.text(max_size=5), scalar, max_size=2) | scalar,
    "http_server_config": st.fixed_dictionaries({}, optional={
        "http2": scalar, "headers": st.dictionaries(st.text(max_size=8), scalar, max_size=2)})
    | scalar,
    "bogus": scalar,
})


@FUZZ
@given(WEB_KEYS | anything)
def test_web_config_never_crashes(data: Any) -> None:
    try:
        web_config_from_dict(data, Path("/nonexistent/web.yml"))
    except ConfigError as err:
        check_rejection(err)
