"""Log lines: RFC 3339 timestamps, JSON fields lifted out of the message, the rate limit."""

from __future__ import annotations

import json
import logging
import re

import pytest

from watchdog.logsetup import JsonFormatter, LogfmtFormatter, RateLimit, split_fields

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(msg: str, *args: object, name: str = "watchdog.daemon",
           level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_json_lifts_fields_out_of_the_message() -> None:
    line = JsonFormatter().format(record(
        "secret file is world-readable file=%s fix='chmod o-r %s' error=%s",
        "/run/key", "/run/key", "[Errno 13] Permission denied: '/x'"))
    data = json.loads(line)
    assert data["msg"] == "secret file is world-readable"
    assert data["file"] == "/run/key" and data["fix"] == "chmod o-r /run/key"
    assert data["error"] == "[Errno 13] Permission denied: '/x'"
    assert data["level"] == "warning" and data["logger"] == "watchdog.daemon"
    assert TS.match(data["ts"]), data["ts"]


def test_json_never_lets_a_field_replace_the_envelope() -> None:
    data = json.loads(JsonFormatter().format(record("odd msg=%s level=%s", "x", "debug")))
    assert data["msg"] == "odd" and data["level"] == "warning"


def test_logfmt_timestamp_and_quoting() -> None:
    line = LogfmtFormatter().format(record('peer down peer=%s said "%s"', "etcd-1", "no"))
    ts = line.split()[0].removeprefix("ts=")
    assert TS.match(ts), line
    assert line.endswith('msg="peer down peer=etcd-1 said \\"no\\""'), line


@pytest.mark.parametrize(("message", "expected"), [
    ("plain words", ("plain words", [])),
    ("listening addresses=a:1,b:2 tls=off", ("listening", [("addresses", "a:1,b:2"),
                                                           ("tls", "off")])),
    ('x k="a b" j=1', ("x", [("k", "a b"), ("j", "1")])),
    ("a = b", ("a = b", [])),
])
def test_split_fields(message: str, expected: tuple[str, list[tuple[str, str]]]) -> None:
    assert split_fields(message) == expected


def test_rate_limit_keeps_a_burst_then_counts_what_it_dropped() -> None:
    now = [0.0]
    limit = RateLimit(burst=3, window=60.0, clock=lambda: now[0])
    passed = [limit.filter(record("Error handling request from %s", f"10.0.0.{i}",
                                  name="aiohttp.server")) for i in range(50)]
    assert passed.count(True) == 3
    assert limit.filter(record("another message", name="aiohttp.server"))  # its own budget
    assert all(limit.filter(record("job ran", name="watchdog.daemon")) for _ in range(50))
    now[0] = 61.0
    late = record("Error handling request from %s", "10.0.0.9", name="aiohttp.server")
    assert limit.filter(late) and "suppressed=47" in late.getMessage()


def test_malformed_request_tracebacks_become_one_warning_line() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    try:
        raise BadHttpMessage("Invalid header token")
    except BadHttpMessage:
        import sys

        rec = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                                "Error handling request from %s", ("127.0.0.1",),
                                sys.exc_info())
    assert RateLimit().filter(rec)
    line = LogfmtFormatter().format(rec)
    assert "level=warning" in line and "Invalid header token" in line
    assert "Traceback" not in line and "\n" not in line


def test_accept_errors_are_one_line_and_rate_limited() -> None:
    """asyncio's message when accept() runs out of file descriptors names the socket (its
    fd changes): the rate limit keys on the first line, and the traceback goes."""
    limit = RateLimit(burst=2)
    lines = []
    for fd in range(10):
        rec = logging.LogRecord(
            "asyncio", logging.ERROR, __file__, 1,
            f"socket.accept() out of system resource\nsocket: <TransportSocket fd={fd}>", (),
            (OSError, OSError(24, "Too many open files"), None))
        if limit.filter(rec):
            lines.append(LogfmtFormatter().format(rec))
    assert len(lines) == 2
    assert all("level=warning" in line and "Too many open files" in line for line in lines)
    assert not any("Traceback" in line for line in lines)
