"""TLS and basic auth for the web server, from a Prometheus exporter-toolkit web-config file.

The file is the one node_exporter and every exporter built on the exporter-toolkit read
with ``--web.config.file``::

    tls_server_config:
      cert_file: /etc/watchdog/tls/tls.crt      # relative paths: from the file's directory
      key_file: /etc/watchdog/tls/tls.key
      client_auth_type: RequireAndVerifyClientCert   # default NoClientCert
      client_ca_file: /etc/watchdog/tls/ca.crt
      min_version: TLS12                         # default TLS12
      max_version: TLS13                         # default TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$12$...                     # bcrypt hashes only

Differences from the exporter-toolkit, each a clear error rather than a silent change:
``cipher_suites``, ``curve_preferences``, ``prefer_server_cipher_suites``,
``client_allowed_sans``, inline ``cert``/``key``/``client_ca`` and ``rate_limit`` are not
supported; ``client_auth_type`` RequestClientCert and RequireAnyClientCert (a certificate
asked for but never verified) are refused, since Python's TLS cannot ask without verifying.

Basic auth covers every path except ``/healthz`` and ``/-/healthy``, which only ever answer
``ok`` and are what container health checks and liveness probes call without credentials
(see docs/security.md). The file itself is re-read when it changes (``LiveWebConfig``), so
a rotated password takes effect on the next request. TLS, when on, covers every path. The
certificate, key and client CA are read again when their files change (checked at most once
a second, on new handshakes), so a rotated certificate (cert-manager, a mounted Secret) is
served without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from watchdog.config import ConfigError, _location, read_yaml

log = logging.getLogger(__name__)

#: Paths answered without credentials even when basic auth is on (liveness only).
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/-/healthy"})
#: Response headers the web config may set (the exporter-toolkit's list).
ALLOWED_HEADERS = (
    "Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
    "X-XSS-Protection", "Content-Security-Policy",
)
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
_UNSUPPORTED = {
    "cipher_suites": "Python's TLS takes OpenSSL's defaults; restrict versions with "
                     "min_version instead",
    "curve_preferences": "Python's TLS takes OpenSSL's defaults",
    "prefer_server_cipher_suites": "Python's TLS takes OpenSSL's defaults",
    "client_allowed_sans": "restrict clients with client_ca_file instead",
    "cert": "give the certificate as cert_file",
    "key": "give the key as key_file",
    "client_ca": "give the CA as client_ca_file",
    "rate_limit": "rate limiting is not implemented",
}
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
RELOAD_CHECK_INTERVAL = 1.0
AUTH_CACHE_SIZE = 256  # failed credentials remembered
AUTH_GOOD_CACHE_SIZE = 64  # credentials that passed, in a cache of their own
AUTH_QUEUE_LIMIT = 16  # password checks running or waiting; beyond that: 429
AUTH_OUTCOMES = ("cached_ok", "cached_fail", "verified_ok", "verified_fail", "busy")
_BCRYPT_CONCURRENCY = 2
_DUMMY_HASHES: dict[int, bytes] = {}
_DUMMY_LOCK = threading.Lock()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _unsupported_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key in cls._unsupported_keys:
                    raise ValueError(f"{key} is not supported by watchdog ({_UNSUPPORTED[key]})")
        return data


class TLSServerModel(_Strict):
    _unsupported_keys = ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
                         "client_allowed_sans", "cert", "key", "client_ca")
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"

    @field_validator("client_auth_type")
    @classmethod
    def _auth_type(cls, value: str) -> str:
        if value in _UNVERIFIED_CLIENT_AUTH:
            raise ValueError(
                f"{value} (a client certificate asked for but never verified) is not "
                "supported: use VerifyClientCertIfGiven or RequireAndVerifyClientCert "
                "with client_ca_file")
        if value not in _CLIENT_AUTH:
            raise ValueError(f"invalid client_auth_type {value!r}: use one of "
                             f"{', '.join(_CLIENT_AUTH)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TLSServerModel:
        if self.client_auth_type == "NoClientCert" and self.client_ca_file is not None:
            raise ValueError("client_ca_file is set but client_auth_type is NoClientCert: set "
                             "client_auth_type to RequireAndVerifyClientCert or "
                             "VerifyClientCertIfGiven")
        if self.client_auth_type != "NoClientCert" and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if _TLS_VERSIONS[self.min_version] > _TLS_VERSIONS[self.max_version]:
            raise ValueError(f"min_version {self.min_version} is above max_version "
                             f"{self.max_version}")
        return self


class HTTPServerModel(_Strict):
    http2: bool = True  # accepted for compatibility; watchdog serves HTTP/1.1
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = {h.lower(): h for h in ALLOWED_HEADERS}
        for name, text in value.items():
            if name.lower() not in allowed:
                raise ValueError(f"header {name!r} cannot be set (allowed: "
                                 f"{', '.join(ALLOWED_HEADERS)})")
            if "\n" in text or "\r" in text:
                raise ValueError(f"header {name!r}: value must be one line")
        return value


class WebConfigModel(_Strict):
    _unsupported_keys = ("rate_limit",)
    tls_server_config: TLSServerModel | None = None
    http_server_config: HTTPServerModel = HTTPServerModel()
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users", mode="before")
    @classmethod
    def _users(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return value  # pydantic names the type error
        for user, hashed in value.items():
            if not isinstance(user, str) or not user or ":" in user:
                raise ValueError(f"user name {user!r}: a non-empty string without ':'")
            match = _BCRYPT.match(hashed) if isinstance(hashed, str) else None
            if match is None:
                raise ValueError(
                    f"user {user!r}: not a bcrypt hash ($2a$/$2b$/$2y$, 60 characters); make "
                    "one with `htpasswd -nbBC 10 USER PASSWORD` or `python -c \"import "
                    "bcrypt; print(bcrypt.hashpw(b'PASSWORD', bcrypt.gensalt()).decode())\"`")
            if not 4 <= int(match.group(1)) <= 31:
                raise ValueError(f"user {user!r}: bcrypt cost {match.group(1)} out of 4..31")
        return value


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str
    client_ca_file: Path | None
    min_version: str
    max_version: str

    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.client_ca_file) if p)


@dataclass(frozen=True)
class WebServerConfig:
    """A validated web config; `ssl_context()` and `middlewares()` put it to work."""

    path: Path
    tls: TLSServerConfig | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server context that follows certificate rotation, or None without TLS."""
        if self.tls is None:
            return None
        return ReloadingTLS(self.tls).context

    def middlewares(self) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
        out: list[Callable[..., Awaitable[web.StreamResponse]]] = []
        if self.headers:
            out.append(headers_middleware(self.headers))
        if self.users:
            out.append(BasicAuth(self.users).middleware)
        return out

    def describe(self) -> str:
        tls = "tls=off" if self.tls is None else (
            f"tls=on tls_min_version={self.tls.min_version} "
            f"client_auth_type={self.tls.client_auth_type}")
        return f"{tls} basic_auth_users={len(self.users)}"


def load_web_config(path: Path | str) -> WebServerConfig:
    """Read and validate a web-config file; raises ConfigError naming each bad key."""
    path = Path(path)
    data = read_yaml(path, "web config file")
    return web_config_from_dict(data, path)


def web_config_from_dict(data: object, path: Path) -> WebServerConfig:
    if data is None:
        data = {}  # an empty file: plain HTTP, no auth (as the exporter-toolkit does)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    try:
        model = WebConfigModel.model_validate(data)
    except ValidationError as err:
        details = []
        for e in err.errors():
            loc = _location(e["loc"])  # type: ignore[arg-type]
            if e["type"] == "extra_forbidden":
                problem = "unknown key (see the exporter-toolkit web-config format)"
            elif e["type"] == "missing":
                problem = "required key is missing"
            else:
                problem = str(e["msg"]).removeprefix("Value error, ")
            details.append((loc, problem))
        noun = "problem" if len(details) == 1 else "problems"
        raise ConfigError(f"{path}: {len(details)} {noun}", details) from None
    base = path.parent
    tls = None
    if model.tls_server_config is not None:
        t = model.tls_server_config

        def resolve(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else base / p)

        tls = TLSServerConfig(
            cert_file=resolve(t.cert_file), key_file=resolve(t.key_file),  # type: ignore[arg-type]
            client_auth_type=t.client_auth_type, client_ca_file=resolve(t.client_ca_file),
            min_version=t.min_version, max_version=t.max_version,
        )
        try:
            build_ssl_context(tls)
        except ConfigError as err:
            raise ConfigError(f"{path}: 1 problem", err.details) from None
    users = {u: h.encode() for u, h in model.basic_auth_users.items()}
    if users:
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            raise ConfigError(f"{path}: basic_auth_users needs the bcrypt package "
                              "(pip install bcrypt)") from None
    return WebServerConfig(path=path, tls=tls, users=users,
                           headers=dict(model.http_server_config.headers))


def build_ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """A server SSLContext; ConfigError naming the key whose file is bad."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    for key, file in (("cert_file", tls.cert_file), ("key_file", tls.key_file),
                      ("client_ca_file", tls.client_ca_file)):
        if file is not None and not file.is_file():
            raise ConfigError("bad TLS file", [(f"tls_server_config.{key}",
                                                f"{file} is not a readable file")])
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (ssl.SSLError, OSError) as err:
        raise ConfigError("bad TLS file", [(
            "tls_server_config.cert_file",
            f"cannot load {tls.cert_file} with key {tls.key_file}: "
            f"{getattr(err, 'reason', None) or err}")]) from None
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        except (ssl.SSLError, OSError) as err:
            raise ConfigError("bad TLS file", [(
                "tls_server_config.client_ca_file",
                f"cannot load {tls.client_ca_file}: "
                f"{getattr(err, 'reason', None) or err}")]) from None
    ctx.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    return ctx


class ReloadingTLS:
    """A server SSLContext that switches to a new one when the certificate files change.

    The check runs in the SNI callback (every new handshake, with or without SNI), at most
    once per RELOAD_CHECK_INTERVAL; a rebuild that fails keeps the old context and logs.
    """

    def __init__(self, tls: TLSServerConfig) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp = self._stat()
        self.context = self._build()
        self._current = self.context

    def _stat(self) -> tuple[tuple[float, int], ...]:
        out = []
        for file in self.tls.files():
            try:
                st = file.stat()
                out.append((st.st_mtime, st.st_size))
            except OSError:
                out.append((-1.0, -1))
        return tuple(out)

    def _build(self) -> ssl.SSLContext:
        ctx = build_ssl_context(self.tls)
        ctx.sni_callback = self._on_hello
        return ctx

    def _on_hello(self, sslobj: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= RELOAD_CHECK_INTERVAL:
                self._checked = now
                stamp = self._stat()
                if stamp != self._stamp:
                    try:
                        self._current = self._build()
                        self._stamp = stamp
                        log.info("web TLS certificate reloaded cert_file=%s",
                                 self.tls.cert_file)
                    except ConfigError as err:
                        log.warning("web TLS certificate not reloaded, keeping the old one: "
                                    "%s", "; ".join(f"{k}: {v}" for k, v in err.details))
            current = self._current
        if sslobj.context is not current:
            sslobj.context = current
        return None


async def _with_headers(request: web.Request, handler: Any,
                        headers: Mapping[str, str]) -> web.StreamResponse:
    """The handler's response, or the HTTP error it raises, with `headers` added."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(headers)
        raise
    response.headers.update(headers)
    return response


def headers_middleware(headers: dict[str, str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def add_headers(request: web.Request, handler: Any) -> web.StreamResponse:
        return await _with_headers(request, handler, headers)

    return add_headers


class AuthBusy(Exception):
    """Too many password checks are waiting: answer 429 instead of queueing."""


def dummy_hash(cost: int) -> bytes:
    """A valid hash of a random password at `cost`, made once per cost: what an unknown
    user's password is checked against, so that it costs as long as a known user's."""
    import bcrypt

    with _DUMMY_LOCK:
        hashed = _DUMMY_HASHES.get(cost)
        if hashed is None:
            hashed = bcrypt.hashpw(os.urandom(18).hex().encode(), bcrypt.gensalt(cost))
            _DUMMY_HASHES[cost] = hashed
    return hashed


def hash_cost(hashed: bytes) -> int:
    return int(hashed.split(b"$")[2])


class BasicAuth:
    """HTTP basic auth against bcrypt hashes, as the exporter-toolkit does it.

    bcrypt is slow on purpose, so checks run in worker threads, at most two at a time,
    with at most AUTH_QUEUE_LIMIT admitted (running or waiting): beyond that a request is
    refused at once (429) rather than queued, so a flood of bad passwords can neither
    starve the loop nor build a queue. Outcomes are cached by a SHA-256 of (user, hash,
    password), never the password itself, in two caches: a credential that passed is
    answered from its own cache without touching the bcrypt pool, and failed guesses,
    however many, cannot push it out. Unknown users are checked against a dummy hash of
    the configured users' cost (no user enumeration by timing).
    """

    def __init__(self, users: dict[str, bytes], outcomes: dict[str, int] | None = None) -> None:
        self.users = dict(users)
        cost = max((hash_cost(h) for h in self.users.values()), default=10)
        self.dummy = dummy_hash(cost)
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._sem: asyncio.Semaphore | None = None
        self._admitted = 0
        #: outcome -> count: cached_ok, cached_fail, verified_ok, verified_fail, busy
        self.outcomes = outcomes if outcomes is not None else dict.fromkeys(AUTH_OUTCOMES, 0)

    @staticmethod
    def _credentials(header: str) -> tuple[str, str] | None:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded.strip():
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    def _key(self, user: str, hashed: bytes | None, password: str) -> bytes:
        return hashlib.sha256(b"\0".join(
            (user.encode(), hashed or b"", password.encode()))).digest()

    async def check(self, user: str, password: str) -> bool:
        """True for a right password; AuthBusy when too many checks are under way."""
        import bcrypt

        hashed = self.users.get(user)
        key = self._key(user, hashed, password)
        if key in self._good:
            self._good.move_to_end(key)
            self.outcomes["cached_ok"] += 1
            return True
        if key in self._bad:
            self._bad.move_to_end(key)
            self.outcomes["cached_fail"] += 1
            return False
        if self._admitted >= AUTH_QUEUE_LIMIT:
            self.outcomes["busy"] += 1
            raise AuthBusy
        if self._sem is None:
            self._sem = asyncio.Semaphore(_BCRYPT_CONCURRENCY)
        self._admitted += 1
        try:
            async with self._sem:
                ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(),
                                             hashed or self.dummy)
        finally:
            self._admitted -= 1
        ok = ok and hashed is not None
        self.outcomes["verified_ok" if ok else "verified_fail"] += 1
        cache, size = (self._good, AUTH_GOOD_CACHE_SIZE) if ok else (self._bad, AUTH_CACHE_SIZE)
        cache[key] = None
        while len(cache) > size:
            cache.popitem(last=False)
        return ok

    async def authorize(self, request: web.Request) -> web.Response | None:
        """None when the request may pass; else the 401 or 429 to answer with."""
        if request.path in UNAUTHENTICATED_PATHS:
            return None
        creds = self._credentials(request.headers.get("Authorization", ""))
        try:
            if creds is not None and await self.check(*creds):
                return None
        except AuthBusy:
            log.warning("too many password checks under way, refusing with 429 limit=%s",
                        AUTH_QUEUE_LIMIT)
            return web.Response(status=429, text="Too Many Requests\n",
                                headers={"Retry-After": "1"})
        return web.Response(status=401, text="Unauthorized\n",
                            headers={"WWW-Authenticate": 'Basic realm="watchdog"'})

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        refusal = await self.authorize(request)
        if refusal is not None:
            return refusal
        return await handler(request)  # type: ignore[no-any-return]


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class LiveWebConfig:
    """The web config as the file says now: checked (mtime, size, inode) on each request,
    as the exporter-toolkit re-reads it per request, and re-read when it changed. A new
    bcrypt hash stops the old password at once; a file that no longer validates keeps the
    last good config (logged). TLS settings need a restart, but the certificate files
    themselves are reloaded in place (ReloadingTLS)."""

    def __init__(self, config: WebServerConfig) -> None:
        self.config = config
        self.outcomes = dict.fromkeys(AUTH_OUTCOMES, 0)
        self.auth = BasicAuth(config.users, self.outcomes) if config.users else None
        self._stamp = _stamp(config.path)
        self._lock: asyncio.Lock | None = None
        self.reloads = {"success": 0, "failure": 0}

    async def refresh(self) -> None:
        """Re-read the file if it changed since the last look."""
        stamp = _stamp(self.config.path)
        if stamp == self._stamp:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                new = await asyncio.to_thread(load_web_config, self.config.path)
                auth = self.auth
                if new.users != self.config.users:
                    auth = (await asyncio.to_thread(BasicAuth, new.users, self.outcomes)
                            if new.users else None)
            except ConfigError as err:
                self.reloads["failure"] += 1
                log.error("web config not reloaded, keeping the last good one: %s",
                          str(err).replace("\n", ";"))
                return
            if new.tls != self.config.tls:
                log.warning("web config: tls_server_config changed; restart watchdog to apply "
                            "it (certificate files are reloaded in place)")
            self.config, self.auth = replace(new, tls=self.config.tls), auth
            self.reloads["success"] += 1
            log.info("web config reloaded file=%s %s", self.config.path, self.config.describe())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        await self.refresh()
        headers = self.config.headers
        auth = self.auth
        refusal = await auth.authorize(request) if auth is not None else None
        if refusal is not None:
            refusal.headers.update(headers)
            return refusal
        return await _with_headers(request, handler, headers)
