"""Logging: logfmt or JSON lines on stderr, RFC 3339 timestamps, and a rate limit that keeps
a flood of one message (bad requests, accept errors) from flooding the log.

Messages carry their fields as trailing ``key=value`` pairs (``"peer down peer=%s
reason=%s"``); the JSON format lifts those pairs out of ``msg`` into fields of their own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
#: Loggers whose repeated messages are rate-limited: the web layer and what it runs on.
RATE_LIMITED = ("aiohttp", "asyncio", "watchdog.web", "watchdog.webserver", "watchdog.webconfig")
RATE_BURST = 5
RATE_WINDOW = 60.0

_FIELD = re.compile(r"\s([A-Za-z_][A-Za-z0-9_.]*)=")
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def rfc3339(created: float) -> str:
    """UTC with milliseconds and a Z: 2026-01-02T03:04:05.678Z."""
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def split_fields(message: str) -> tuple[str, list[tuple[str, str]]]:
    """'peer down peer=a reason=timeout' -> ('peer down', [('peer', 'a'), ('reason', ...)]).

    A value runs to the next ` key=`; text before the first pair is the message."""
    matches = list(_FIELD.finditer(" " + message))
    if not matches:
        return message, []
    text = " " + message
    head = text[:matches[0].start()].strip()
    fields = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        fields.append((match.group(1), _unquote(text[match.end():end])))
    return head, fields


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _logfmt_value(value: str) -> str:
    if value == "" or _NEEDS_QUOTES.search(value):
        return f'"{_escape(value)}"'
    return value


class LogfmtFormatter(logging.Formatter):
    """`ts=... level=info logger=watchdog.daemon msg="peer down peer=etcd-1"`, one line.

    The message keeps its `key=value` pairs (a logfmt reader sees them inside msg, and
    grep finds them as written); JSON lifts them into fields."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", " ")
        parts = [("ts", rfc3339(record.created)), ("level", _level(record)),
                 ("logger", record.name)]
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in parts)
        line += f' msg="{_escape(msg)}"'
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", " | ")
            line += f' exc="{_escape(exc)}"'
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `key=value` pairs of the message become fields."""

    def format(self, record: logging.LogRecord) -> str:
        msg, fields = split_fields(record.getMessage())
        data: dict[str, Any] = {"ts": rfc3339(record.created), "level": _level(record),
                                "logger": record.name, "msg": msg}
        for key, value in fields:
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def _level(record: logging.LogRecord) -> str:
    return record.levelname.lower()


class RateLimit(logging.Filter):
    """At most RATE_BURST records per (logger, message template) per RATE_WINDOW from the
    web layer; the first record after a quiet spell says how many were dropped. Tracebacks
    of requests that were merely malformed are cut to one line (a client's mistake is not
    an error of ours)."""

    def __init__(self, burst: int = RATE_BURST, window: float = RATE_WINDOW,
                 clock: Any = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [window start, n, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(RATE_LIMITED):
            return True
        key = (record.name, str(record.msg).split("\n", 1)[0][:80])
        _quiet_client_errors(record)
        now = self.clock()
        with self._lock:
            slot = self._seen.get(key)
            if slot is None or now - slot[0] >= self.window:
                dropped = int(slot[2]) if slot else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 1000:  # templates are few; bound it anyway
                    self._seen = {key: self._seen[key]}
                if dropped:
                    record.msg = f"{record.msg} suppressed={dropped}"
                return True
            if slot[1] < self.burst:
                slot[1] += 1
                return True
            slot[2] += 1
            return False


def _quiet_client_errors(record: logging.LogRecord) -> None:
    """A malformed request (or a client gone mid-request) logs one warning line, no
    traceback; a failed accept() (out of file descriptors) logs one line too."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None:
        return
    from aiohttp.http_exceptions import HttpProcessingError

    if isinstance(exc, HttpProcessingError | ConnectionError | OSError):
        detail = str(exc).replace("\n", " ")[:200]
        first = record.getMessage().split("\n", 1)[0]
        record.msg, record.args = f"{first} error={detail!r}", ()
        record.exc_info, record.exc_text = None, None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr at `level` ('warn' is 'warning') in logfmt or json."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel("WARNING" if level.lower() == "warn" else level.upper())
    # aiohttp and asyncio are chatty at info; their warnings still show.
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
