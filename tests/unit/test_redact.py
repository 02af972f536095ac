"""The secret scrubber (issue #14.21): every configured secret, in every form it takes in a
URL or JSON, replaced before text leaves the process; also as a logging filter."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchdog.config import config_from_dict
from watchdog.redact import MASK, Redactor, install

ADMIN_KEY = "adm!n/key+with spaces&\"quotes\""
PASSWORD = "etcd-pw-0123456789"


@pytest.fixture
def redactor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Redactor:
    monkeypatch.setenv("T_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("T_ETCD_PW", PASSWORD)
    config = config_from_dict({
        "etcd": {"endpoints": ["http://127.0.0.1:2379"],
                 "auth": {"username": "root", "password_env": "T_ETCD_PW"}},
        "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:9180",
                      "admin_key_env": "T_ADMIN_KEY", "data_url": "http://127.0.0.1:9080"}],
        "state_dir": str(tmp_path),
    })
    return Redactor.from_config(config)


def test_every_secret_in_every_form_is_scrubbed(redactor: Redactor) -> None:
    from urllib.parse import quote

    # (Credentials in URLs are refused at config load, so no URL password can be configured.)
    for secret in (ADMIN_KEY, PASSWORD):
        for form in (secret, quote(secret, safe=""), json.dumps(secret)[1:-1]):
            text = f"401 failed to check token: wrong apikey '{form}' (from gw)"
            assert redactor.scrub(text) == f"401 failed to check token: wrong apikey '{MASK}' (from gw)"
    assert redactor.scrub("nothing secret here") == "nothing secret here"


def test_json_values_are_scrubbed_deeply(redactor: Redactor) -> None:
    report = {"gateways": [{"message": f"said {PASSWORD}", "n": 1, "swept": [ADMIN_KEY]}]}
    assert redactor.scrub_value(report) == {"gateways": [{"message": f"said {MASK}", "n": 1,
                                                          "swept": [MASK]}]}
    assert redactor.scrub_value(json.dumps(report)).count(MASK) == 2


def test_a_gateway_redactor_knows_its_own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from watchdog.config import GatewayConfig

    monkeypatch.setenv("T_ADMIN_KEY", ADMIN_KEY)
    gw = GatewayConfig(name="gw", admin_url="http://127.0.0.1:9180", admin_key_env="T_ADMIN_KEY")
    assert Redactor.for_gateway(gw).scrub(f"x{ADMIN_KEY}x") == f"x{MASK}x"
    assert not Redactor([])  # nothing to scrub: a no-op
    assert Redactor([""]).scrub("abc") == "abc"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    saved, level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def test_installed_on_the_root_handlers_it_scrubs_child_loggers_and_tracebacks(
    redactor: Redactor, captured: io.StringIO,
) -> None:
    install(redactor)
    install(redactor)  # idempotent: one filter per handler
    assert len(logging.getLogger().handlers[0].filters) == 1
    child = logging.getLogger("watchdog.gateway.smoke.test")
    child.warning("smoke failed: %s", f"wrong apikey {ADMIN_KEY}")
    try:
        raise RuntimeError(f"etcd said {PASSWORD}")
    except RuntimeError:
        child.exception("crashed with %r", ADMIN_KEY)
    text = captured.getvalue()
    for secret in (ADMIN_KEY, PASSWORD):
        assert secret not in text
    assert f"smoke failed: wrong apikey {MASK}" in text
    assert f"RuntimeError: etcd said {MASK}" in text  # the traceback, scrubbed


def test_a_bad_format_call_is_scrubbed_and_never_raises(
    redactor: Redactor, captured: io.StringIO,
) -> None:
    install(redactor)
    logging.getLogger("watchdog.x").warning("key %s and %d", PASSWORD)  # one argument short
    assert "key %s and %d (unformattable arguments)" in captured.getvalue()
    logging.getLogger("watchdog.x").warning(f"raw {PASSWORD} %s", "ok")
    assert PASSWORD not in captured.getvalue() and f"raw {MASK} ok" in captured.getvalue()
