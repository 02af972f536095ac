"""A lean HTTP/1.1 client for calls that open a fresh connection each time.

watchdog opens a new connection per probe on purpose (blackbox-style: connect time is
measured and a dead listener cannot hide behind a pooled connection). aiohttp's pool,
request and response machinery then buys nothing and costs most of a poll's CPU, so such
calls come here instead: one asyncio Protocol that writes one request with
``Connection: close`` and parses one response (Content-Length, chunked or read to close;
gzip and deflate), with a strict size cap on both the wire bytes and the decoded body.

It fills the same :class:`Trace` as the aiohttp path in httpprobe, so results,
phases and failure reasons are the same (see :func:`watchdog.httpprobe.timed_request`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl as ssl_module
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit


@dataclass
class Trace:
    """Timestamps (perf_counter) of one request's milestones."""

    start: float
    dns_start: float | None = None
    dns_end: float | None = None
    create_start: float | None = None
    tls_start: float | None = None
    create_end: float | None = None
    conn_ready: float | None = None
    headers: float | None = None
    status: int | None = None  # the response status, once its head is in

    def phase(self) -> str:
        """The phase the request is in right now."""
        if self.headers is not None:
            return "transfer"
        if self.conn_ready is not None:
            return "processing"
        if self.tls_start is not None:
            return "tls"
        if self.create_start is not None:
            return "connect"
        if self.dns_start is not None:
            return "resolve"
        return "connect"

    def phases(self, end: float | None) -> dict[str, float]:
        """Durations of the phases the request completed."""
        out: dict[str, float] = {}
        if self.dns_start is not None and self.dns_end is not None:
            out["resolve"] = self.dns_end - self.dns_start
        if self.create_start is not None and self.create_end is not None:
            if self.tls_start is not None and self.create_start <= self.tls_start:
                out["connect"] = self.tls_start - self.create_start
                out["tls"] = self.create_end - self.tls_start
            else:
                out["connect"] = self.create_end - self.create_start
        if self.conn_ready is not None and self.headers is not None:
            out["processing"] = self.headers - self.conn_ready
        if self.headers is not None and end is not None:
            out["transfer"] = end - self.headers
        return out


MAX_HEADER_BYTES = 64 * 1024
_RECV_SIZE = 256 * 1024
DNS_TTL = 10.0  # seconds, as aiohttp's connector caches lookups
_USER_AGENT = "watchdog"


class Disconnected(Exception):
    """The server closed the connection before a complete response head."""


class Malformed(Exception):
    """The answer is not a well-formed HTTP/1.1 response; the message is the detail."""


class BodyTooLarge(Exception):
    """The body (on the wire or decoded) is over the cap."""


@lru_cache(maxsize=1 << 16)  # one entry per URL called: a few per peer and gateway
def split_url(url: str) -> tuple[bool, str, int, str, str, str | None]:
    """(https, host, port, request target, Host header, Authorization header for the URL's
    user and password, as aiohttp sends it) of an http(s) URL; ValueError if bad."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if parts.port is None else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target or c in host_header for c in "\r\n "):
        raise ValueError("invalid characters in URL")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return https, host, port, target, host_header, auth


@lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


_dns: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}


async def _addresses(host: str, port: int, trace: Trace) -> list[tuple[str, int]]:
    """The addresses to try, resolving (and timing it) only for names not cached."""
    if _is_ip(host):
        return [(host, port)]
    now = time.monotonic()
    cached = _dns.get((host, port))
    if cached is not None and now - cached[0] < DNS_TTL:
        return cached[1]
    trace.dns_start = time.perf_counter()
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    trace.dns_end = time.perf_counter()
    found = [(str(info[4][0]), int(info[4][1])) for info in infos]
    if not found:
        raise socket.gaierror("no address")
    if len(_dns) > 4096:
        _dns.clear()
    _dns[(host, port)] = (now, found)
    return found


class _Response(asyncio.Protocol):
    """Reads one response; `done` resolves to (status, body) or an exception."""

    def __init__(self, trace: Trace, max_body: int) -> None:
        self.trace = trace
        self.max_body = max_body
        self.done: asyncio.Future[tuple[int, bytes]] = \
            asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._status = 0
        self._head_done = False
        self._length: int | None = None  # Content-Length, when given
        self._chunked = False
        self._pos = 0  # chunked: parse position in _buf
        self._chunks: list[bytes] = []
        self._chunk_bytes = 0
        self._encoding = ""

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self._buf += data
        try:
            if not self._head_done:
                if not self._head():
                    return
            self._body(eof=False)
        except (Malformed, BodyTooLarge) as exc:
            self._finish_exc(exc)

    def eof_received(self) -> bool | None:
        self._eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self._eof()

    # -- parsing -------------------------------------------------------------

    def _finish_exc(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _eof(self) -> None:
        if self.done.done():
            return
        if not self._head_done:
            self.done.set_exception(Disconnected())
            return
        try:
            self._body(eof=True)
        except (Malformed, BodyTooLarge) as exc:
            self._finish_exc(exc)

    def _head(self) -> bool:
        """Parse the status line and headers once they are all in; False until then."""
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEADER_BYTES or (
                len(self._buf) >= 5 and not self._buf.startswith(b"HTTP/")
            ):
                raise Malformed("malformed HTTP response")
            return False
        if end > MAX_HEADER_BYTES:
            raise Malformed("malformed HTTP response")
        lines = bytes(self._buf[:end]).split(b"\r\n")
        status_line = lines[0].split(None, 2)
        if (len(status_line) < 2 or status_line[0] not in (b"HTTP/1.1", b"HTTP/1.0")
                or not status_line[1].isdigit() or len(status_line[1]) != 3):
            raise Malformed("malformed HTTP response")
        status = int(status_line[1])
        length: int | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise Malformed("malformed HTTP response")
            key = name.lower()
            if key == b"content-length":
                text = value.strip()
                if not text.isdigit() or (length is not None and int(text) != length):
                    raise Malformed("malformed HTTP response")
                length = int(text)
            elif key == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings[-1:] != [b"chunked"] or len(codings) != 1:
                    raise Malformed("malformed HTTP response")
                self._chunked = True
            elif key == b"content-encoding":
                self._encoding = value.strip().lower().decode("latin-1")
        if 100 <= status < 200:  # an interim answer: drop it, the real one follows
            del self._buf[: end + 4]
            return self._head()
        self.trace.headers = time.perf_counter()
        self.trace.status = self._status = status
        self._head_done = True
        del self._buf[: end + 4]
        if self._chunked:
            length = None
        elif status in (204, 304):
            length = 0
        if length is not None and length > self.max_body:
            raise BodyTooLarge
        self._length = length
        return True

    def _body(self, eof: bool) -> None:
        if self._chunked:
            if self._chunked_done():
                self._complete(b"".join(self._chunks))
            elif eof:
                raise Malformed("truncated or malformed body")
            return
        if len(self._buf) > self.max_body:
            raise BodyTooLarge
        if self._length is not None:
            if len(self._buf) >= self._length:
                self._complete(bytes(self._buf[: self._length]))
            elif eof:
                raise Malformed("truncated or malformed body")
        elif eof:
            self._complete(bytes(self._buf))

    def _chunked_done(self) -> bool:
        buf, pos = self._buf, self._pos
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if len(buf) - pos > 1024:
                    raise Malformed("truncated or malformed body")
                self._pos = pos
                return False
            size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise Malformed("truncated or malformed body") from None
            if size < 0:
                raise Malformed("truncated or malformed body")
            if size == 0:
                # The trailer section (usually empty) ends at the first empty line.
                self._pos = pos
                return buf.find(b"\r\n\r\n", line_end) >= 0
            start = line_end + 2
            if len(buf) < start + size + 2:
                if self._chunk_bytes + size > self.max_body:
                    raise BodyTooLarge
                self._pos = pos
                return False
            if buf[start + size : start + size + 2] != b"\r\n":
                raise Malformed("truncated or malformed body")
            self._chunk_bytes += size
            if self._chunk_bytes > self.max_body:
                raise BodyTooLarge
            self._chunks.append(bytes(buf[start : start + size]))
            pos = start + size + 2
            # Drop consumed bytes now and then, so a long chunked body is not kept twice.
            if pos > 1 << 20:
                del buf[:pos]
                pos = 0

    def _complete(self, body: bytes) -> None:
        if self._encoding and self._encoding != "identity":
            body = self._decode(body)
        self.done.set_result((self._status, body))
        if self.transport is not None:
            self.transport.close()

    def _decode(self, body: bytes) -> bytes:
        if self._encoding in ("gzip", "x-gzip"):
            wbits = 16 + zlib.MAX_WBITS
        elif self._encoding == "deflate":
            wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
        else:
            raise Malformed("truncated or malformed body")
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, self.max_body + 1)
        except zlib.error:
            raise Malformed("truncated or malformed body") from None
        if len(out) > self.max_body:
            raise BodyTooLarge
        if not inflater.eof:
            raise Malformed("truncated or malformed body")
        return out


def _request_bytes(
    method: str, target: str, host_header: str, headers: Mapping[str, str] | None,
    body: bytes | None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}",
             f"User-Agent: {_USER_AGENT}", "Accept: */*", "Accept-Encoding: gzip, deflate",
             "Connection: close"]
    if headers:
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n") or ":" in name:
                raise ValueError("invalid request header")
            lines.append(f"{name}: {value}")
    if body is not None:
        if not headers or not any(k.lower() == "content-type" for k in headers):
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


async def fetch(
    method: str,
    url: str,
    trace: Trace,
    *,
    ssl: ssl_module.SSLContext | None,
    json_body: object = None,
    headers: Mapping[str, str] | None = None,
    max_body: int,
) -> tuple[int, bytes]:
    """One request on a new connection: (status, decoded body). Raises OSError (connect,
    reset), ssl.SSLError, socket.gaierror, Disconnected, Malformed or BodyTooLarge; the caller
    holds the deadline. `ssl` is the context for https URLs (required for them)."""
    https, host, port, target, host_header, auth = split_url(url)
    body = None if json_body is None else json.dumps(json_body).encode()
    if auth is not None and not (headers and any(k.lower() == "authorization" for k in headers)):
        headers = {**(headers or {}), "Authorization": auth}
    request = _request_bytes(method, target, host_header, headers, body)
    if https and ssl is None:
        raise ValueError("https URL without an SSL context")
    loop = asyncio.get_running_loop()
    addresses = await _addresses(host, port, trace)
    trace.create_start = time.perf_counter()
    if not https:
        return await _plain(loop, addresses, request, trace, max_body)
    protocol: _Response | None = None
    last: BaseException | None = None
    for address in addresses:
        protocol = _Response(trace, max_body)
        try:
            await loop.create_connection(
                lambda p=protocol: p, address[0], address[1],
                ssl=ssl if https else None, server_hostname=host if https else None,
            )
        except OSError as exc:  # ssl.SSLError included
            if isinstance(exc, ssl_module.SSLError):
                raise
            last = exc
            protocol = None
            continue
        break
    if protocol is None or protocol.transport is None:
        raise last if last is not None else OSError("connect failed")
    trace.create_end = trace.conn_ready = time.perf_counter()
    transport = protocol.transport
    try:
        transport.write(request)
        return await protocol.done
    finally:
        if not transport.is_closing():
            transport.abort()


async def _plain(
    loop: asyncio.AbstractEventLoop, addresses: list[tuple[str, int]], request: bytes,
    trace: Trace, max_body: int,
) -> tuple[int, bytes]:
    """Plain HTTP on the loop's socket calls: no transport, no protocol callbacks. This is
    what most of the lean client's savings come from (a third of the transport path's CPU)."""
    last: BaseException | None = None
    for host, port in addresses:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await loop.sock_connect(sock, (host, port))
            except OSError as exc:
                last = exc
                continue
            trace.create_end = trace.conn_ready = time.perf_counter()
            await loop.sock_sendall(sock, request)
            parser = _Response(trace, max_body)
            while not parser.done.done():
                data = await loop.sock_recv(sock, _RECV_SIZE)
                if data:
                    parser.data_received(data)
                else:
                    parser.eof_received()
            return parser.done.result()
        finally:
            sock.close()
    raise last if last is not None else OSError("connect failed")
