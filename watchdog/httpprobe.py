"""One timed HTTP call with blackbox_exporter-style phases, classified into a Reason.

Phases (seconds), as blackbox_exporter names them:

- ``resolve``: DNS lookup, only when the host is a name aiohttp had to resolve.
- ``connect``: TCP connect. aiohttp opens TCP and runs the TLS handshake inside one
  connector call and emits no trace signal between the two, so ``tls`` is only
  separated when the request's SSL context comes from :func:`make_ssl_context` (its
  SSL objects note when the handshake starts). With any other context (or ``ssl=None``
  on an https URL) ``connect`` covers TCP connect *and* the TLS handshake and ``tls``
  is absent; no number is made up.
- ``tls``: first TLS handshake step until the connection is ready.
- ``processing``: connection acquired (new or reused) until the response headers are
  in, i.e. time to first byte.
- ``transfer``: response headers until the body is read.

Phases a call never reached are left out; on a timeout ``detail`` names the phase the
call was in. Requests must go through a session from :func:`make_session`, whose trace
config records the phases; with another session the result has no phases.

A session whose connector never reuses a connection (``force_close``, no default headers,
auth or proxy from the environment) gains nothing from aiohttp's pool: its calls go through
the lean client in :mod:`watchdog.http1` instead, with the same results, phases and failure
reasons at a fraction of the CPU.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import json
import socket
import ssl as ssl_module
import time
from collections.abc import Collection, Mapping
from types import SimpleNamespace
from typing import Any

import aiohttp

from watchdog import http1
from watchdog.http1 import Trace as _Trace
from watchdog.results import ProbeResult, Reason

DEFAULT_MAX_BODY = 1 << 20
ERROR_TEXT_MAX = 512
_READ_CHUNK = 64 * 1024
_DETAIL_MAX = 120


# The request being made in this task; read by _TimedSSLObject during the handshake.
_CURRENT: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar(
    "watchdog_http_trace", default=None
)


class _TimedSSLObject(ssl_module.SSLObject):
    """An SSLObject that notes when the TLS handshake starts for the current request.

    asyncio creates it once the TCP connection is up and calls do_handshake() from
    callbacks that run in the requesting task's context, so the ContextVar is visible.
    """

    def do_handshake(self) -> None:
        trace = _CURRENT.get()
        if trace is not None and trace.tls_start is None and trace.create_end is None:
            trace.tls_start = time.perf_counter()
        super().do_handshake()


def make_ssl_context(
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    insecure_skip_verify: bool = False,
) -> ssl_module.SSLContext:
    """A client SSL context whose handshakes are timed separately (the `tls` phase)."""
    ctx = ssl_module.create_default_context(cafile=ca_file)
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    if insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl_module.CERT_NONE
    ctx.sslobject_class = _TimedSSLObject
    return ctx


def _trace_of(ctx: SimpleNamespace) -> _Trace | None:
    trace = getattr(ctx, "trace_request_ctx", None)
    return trace if isinstance(trace, _Trace) else None


def _on(attr: str) -> Any:
    async def handler(_session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any) -> None:
        trace = _trace_of(ctx)
        if trace is not None and getattr(trace, attr) is None:
            setattr(trace, attr, time.perf_counter())

    return handler


async def _on_create_end(
    _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: Any
) -> None:
    trace = _trace_of(ctx)
    if trace is not None:
        trace.create_end = trace.conn_ready = time.perf_counter()


def make_trace_config() -> aiohttp.TraceConfig:
    """The trace config that records a request's phases (see the module docstring)."""
    config = aiohttp.TraceConfig()
    config.on_dns_resolvehost_start.append(_on("dns_start"))
    config.on_dns_resolvehost_end.append(_on("dns_end"))
    config.on_connection_create_start.append(_on("create_start"))
    config.on_connection_create_end.append(_on_create_end)
    config.on_connection_reuseconn.append(_on("conn_ready"))
    config.on_request_end.append(_on("headers"))
    return config


def make_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession with the phase trace config installed; call inside a running loop."""
    kwargs["trace_configs"] = [*kwargs.get("trace_configs", ()), make_trace_config()]
    return aiohttp.ClientSession(**kwargs)


class _BodyTooLargeError(Exception):
    pass


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_MAX else text[: _DETAIL_MAX - 3] + "..."


def _ssl_detail(exc: BaseException) -> str:
    """A bounded TLS failure description from the OpenSSL reason code, never a message."""
    cause: BaseException | None = exc
    for _ in range(4):
        if cause is None:
            break
        # aiohttp's wrappers subclass the ssl errors but keep the original inside.
        inner = getattr(cause, "certificate_error", None) or getattr(cause, "os_error", None)
        if isinstance(inner, BaseException) and inner is not cause:
            cause = inner
            continue
        if isinstance(cause, ssl_module.SSLCertVerificationError):
            verify = getattr(cause, "verify_message", None) or "unknown"
            return _short(f"certificate verify failed: {verify}")
        if isinstance(cause, ssl_module.SSLError):
            reason = getattr(cause, "reason", None) or type(cause).__name__
            return _short(f"tls handshake failed: {reason}")
        cause = cause.__cause__
    return "tls handshake failed"


def _os_detail(exc: BaseException) -> str:
    err = getattr(exc, "os_error", None) or exc
    code = getattr(err, "errno", None)
    if code == errno.ECONNREFUSED or isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if code == errno.ECONNRESET or isinstance(err, ConnectionResetError):
        return "connection reset"
    if code is not None and code in errno.errorcode:
        return f"connect failed: {errno.errorcode[code]}"
    return f"connection failed: {type(exc).__name__}"


def _classify(exc: BaseException) -> tuple[Reason, str]:
    """Map a client exception to a Reason and a short detail."""
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return Reason.TLS, "certificate fingerprint mismatch"
    if isinstance(exc, (aiohttp.ClientSSLError, ssl_module.SSLError)):
        return Reason.TLS, _ssl_detail(exc)
    if isinstance(exc, (aiohttp.ClientConnectorDNSError, socket.gaierror)):
        return Reason.REFUSED, "dns lookup failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Reason.REFUSED, "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Reason.PROTOCOL, "truncated or malformed body"
    if isinstance(exc, aiohttp.ClientResponseError):
        return Reason.PROTOCOL, "malformed HTTP response"
    if isinstance(exc, (aiohttp.ClientOSError, OSError)):
        return Reason.REFUSED, _os_detail(exc)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return Reason.REFUSED, _short(f"connection failed: {type(exc).__name__}")
    return Reason.PROTOCOL, _short(f"client error: {type(exc).__name__}")


async def _read_capped(resp: aiohttp.ClientResponse, max_body: int) -> bytes:
    """Read the body, never more than max_body + 1 bytes from the stream."""
    length = resp.content_length
    if length is not None and length > max_body:
        raise _BodyTooLargeError
    buf = bytearray()
    while True:
        chunk = await resp.content.read(min(_READ_CHUNK, max_body + 1 - len(buf)))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_body:
            raise _BodyTooLargeError


_AIOHTTP = object()  # marker: this call needs aiohttp


@functools.cache
def _default_ssl(verify: bool) -> ssl_module.SSLContext:
    """The context for ``ssl=None/True`` (system CAs) or ``ssl=False`` (no verification)."""
    return make_ssl_context(insecure_skip_verify=not verify)


def _lean_ssl(session: aiohttp.ClientSession, ssl: object) -> object:
    """The SSL context for the lean client, or _AIOHTTP when the call needs aiohttp."""
    connector = session.connector
    if not (isinstance(connector, aiohttp.TCPConnector) and connector.force_close) \
            or session.headers or session.auth is not None or session.trust_env:
        return _AIOHTTP
    if isinstance(ssl, ssl_module.SSLContext):
        return ssl
    if ssl is None or ssl is True:
        return _default_ssl(True)
    if ssl is False:
        return _default_ssl(False)
    return _AIOHTTP  # a fingerprint pin and the like


async def timed_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    api: str,
    op: str,
    timeout: float,
    json_body: object = None,
    headers: Mapping[str, str] | None = None,
    ssl: ssl_module.SSLContext | bool | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    ok_status: Collection[int] = (200,),
    expect_json: bool = True,
    error_text: bool = False,
) -> ProbeResult:
    """Make one HTTP call within `timeout` seconds and describe it; never raises for I/O.

    On success `body` is the decoded JSON (or the raw bytes when expect_json is false).
    On an unexpected status whose body is JSON, `body` holds it too, so callers can read
    the server's error message; with error_text, a body that is not JSON comes back as its
    first ERROR_TEXT_MAX characters of text instead (to recognise a server by its
    wording). `detail` stays short and never holds a body or secret.
    """
    trace = _Trace(start=time.perf_counter())
    token = _CURRENT.set(trace)
    lean = _lean_ssl(session, ssl)
    try:
        async with asyncio.timeout(timeout):
            if lean is not _AIOHTTP:
                assert lean is None or isinstance(lean, ssl_module.SSLContext)
                status, raw = await http1.fetch(method, url, trace, ssl=lean,
                                                json_body=json_body, headers=headers,
                                                max_body=max_body)
                end = time.perf_counter()
            else:
                status, raw, end = await _aiohttp_call(
                    session, method, url, trace, json_body, headers, ssl, max_body)
    except TimeoutError:
        detail = f"timeout after {timeout:.3g}s in {trace.phase()}"
        return _fail(trace, api, op, Reason.TIMEOUT, detail, trace.status)
    except (_BodyTooLargeError, http1.BodyTooLarge):
        detail = f"body over {max_body} bytes"
        return _fail(trace, api, op, Reason.PROTOCOL, detail, trace.status)
    except http1.Disconnected:
        return _fail(trace, api, op, Reason.REFUSED, "server disconnected", trace.status)
    except http1.Malformed as exc:
        return _fail(trace, api, op, Reason.PROTOCOL, str(exc), trace.status)
    except (aiohttp.ClientError, OSError) as exc:
        reason, detail = _classify(exc)
        return _fail(trace, api, op, reason, detail, trace.status)
    except ValueError:  # a URL or header the lean client cannot send
        return _fail(trace, api, op, Reason.PROTOCOL, "invalid URL or header", trace.status)
    finally:
        _CURRENT.reset(token)

    duration, phases = end - trace.start, trace.phases(end)
    text = raw[:ERROR_TEXT_MAX].decode("utf-8", errors="replace") if error_text else None
    if not expect_json:
        if status in ok_status:
            return ProbeResult(api, op, True, duration, None, "", phases, status, None, raw)
        return _bad_status(api, op, duration, phases, status, text)
    try:
        decoded: object = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError and an empty body
        if status in ok_status:
            return ProbeResult(api, op, False, duration, Reason.PROTOCOL, "invalid JSON",
                               phases, status)
        return _bad_status(api, op, duration, phases, status, text)
    if status in ok_status:
        return ProbeResult(api, op, True, duration, None, "", phases, status, None, decoded)
    return _bad_status(api, op, duration, phases, status, decoded)


async def _aiohttp_call(
    session: aiohttp.ClientSession, method: str, url: str, trace: _Trace, json_body: object,
    headers: Mapping[str, str] | None, ssl: ssl_module.SSLContext | bool | None, max_body: int,
) -> tuple[int, bytes, float]:
    async with session.request(
        method,
        url,
        json=json_body,
        headers=dict(headers) if headers else None,
        ssl=True if ssl is None else ssl,
        allow_redirects=False,
        trace_request_ctx=trace,
    ) as resp:
        trace.status = resp.status
        try:
            raw = await _read_capped(resp, max_body)
        except _BodyTooLargeError:
            resp.close()  # the rest of the body is never read
            raise
        return resp.status, raw, time.perf_counter()


def _bad_status(
    api: str, op: str, duration: float, phases: dict[str, float], status: int, body: object
) -> ProbeResult:
    reason = Reason.AUTH if status in (401, 403) else Reason.HTTP
    return ProbeResult(api, op, False, duration, reason, f"HTTP {status}", phases, status,
                       None, body)


def _fail(
    trace: _Trace, api: str, op: str, reason: Reason, detail: str, status: int | None
) -> ProbeResult:
    # Only phases that finished: a phase cut short by the failure is named in detail.
    phases = trace.phases(None)
    return ProbeResult(api, op, False, time.perf_counter() - trace.start, reason, detail,
                       phases, status)
