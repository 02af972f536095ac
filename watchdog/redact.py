"""Scrub configured secrets from any text that leaves the process.

A server may echo a credential back (an admin API that quotes the key in its 401 body, a
URL with a password in an error message); whatever relays that text (a smoke report, a log
line, the status page) runs it through a Redactor built from the loaded config first.

The secrets: every gateway's admin key, the etcd password, and the password part of any
configured URL's userinfo (``http://user:password@host``). Each is also matched in the forms
it takes inside a URL (percent-encoded) and inside JSON (escaped).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from watchdog.config import Config, GatewayConfig

__all__ = ["MASK", "Redactor", "install"]

MASK = "<redacted>"


def _url_secrets(url: object) -> list[str]:
    """The password of a URL's userinfo (the user name is no secret)."""
    if not url:
        return []
    try:
        password = urlsplit(str(url)).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def _variants(secret: str) -> set[str]:
    """The forms a secret takes in text: as is, percent-encoded, JSON-escaped."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]} - {""}


class Redactor(logging.Filter):
    """Replaces every known secret in a text by MASK; also a logging.Filter that scrubs each
    record (message, arguments, traceback) before any handler formats it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= _variants(secret)
        self._forms = sorted(forms, key=len, reverse=True)  # the longest form wins
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if forms else None

    @classmethod
    def for_gateway(cls, gateway: GatewayConfig) -> Redactor:
        """The secrets of one gateway: its admin key and its URLs' passwords."""
        return cls(_gateway_secrets(gateway))

    @classmethod
    def from_config(cls, config: Config) -> Redactor:
        """Every secret the config holds."""
        secrets: list[str] = []
        etcd = config.etcd
        if etcd.auth is not None:
            secrets.append(etcd.auth.password.get_secret_value())
        for url in etcd.endpoints:
            secrets += _url_secrets(url)
        for gateway in config.gateways:
            secrets += _gateway_secrets(gateway)
        return cls(secrets)

    def __bool__(self) -> bool:
        return self._pattern is not None

    def scrub(self, text: str) -> str:
        """The text with every secret replaced by MASK."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def scrub_value(self, value: Any) -> Any:
        """A JSON-like value (dicts, lists, strings) with every string scrubbed."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub_value(k): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub_value(v) for v in value)
        if isinstance(value, bytes):
            return self.scrub(value.decode(errors="replace")).encode()
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the record in place; never drops it."""
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format call must not turn into an error at the call site
            message = f"{record.msg} (unformattable arguments)"
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


def _gateway_secrets(gateway: GatewayConfig) -> list[str]:
    secrets: list[str] = []
    if gateway.admin_key is not None:
        secrets.append(gateway.admin_key.get_secret_value())
    for url in (gateway.admin_url, gateway.data_url, gateway.status_url, gateway.metrics_url,
                gateway.etcd_endpoint):
        secrets += _url_secrets(url)
    return secrets


def install(redactor: Redactor, logger: logging.Logger | None = None) -> None:
    """Put the redactor on every handler of `logger` (the root logger by default).

    On handlers, not on the logger: a logger's own filters never see records that its
    children propagate to it. Call again after the handlers change (e.g. on a reload)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        for old in [f for f in handler.filters if isinstance(f, Redactor)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
