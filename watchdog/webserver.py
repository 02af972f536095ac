"""The web server's listeners: one per --web.listen-address, hardened against idle and
half-open connections.

aiohttp parses and answers requests; this module owns the sockets around it:

- every connection must send a complete request head within ``read_header_timeout``
  (a client that sends ``GET /metrics HTTP/1.1`` and then nothing is closed);
- at most ``max_connections`` connections are open at once; at the cap, the oldest
  connection still sending its request head (or else the oldest idle keep-alive one)
  is dropped to make room, so a scrape always gets in while half-open connections pile up;
- the open-files soft limit is raised to the hard limit at start, and the cap stays
  well under it, so the etcd job never runs out of file descriptors because of the web.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchdog.config import _check_listen
from watchdog.webconfig import AUTH_OUTCOMES, LiveWebConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_READ_HEADER_TIMEOUT = 10.0
#: Idle keep-alive connections are closed by aiohttp after this long.
KEEPALIVE_TIMEOUT = 120.0
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r\n", re.IGNORECASE)
_MAX_HEAD = 64 * 1024  # aiohttp refuses heads far smaller; stop buffering beyond this


@dataclass(frozen=True)
class ServerLimits:
    """How much the web server lets clients hold."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    read_header_timeout: float = DEFAULT_READ_HEADER_TIMEOUT


def raise_nofile_limit() -> tuple[int, int, int]:
    """Raise the open-files soft limit to the hard limit; returns (old soft, new soft,
    hard). Logged, since a low soft limit (1024 under systemd) is what runs out first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open files limit soft=%s hard=%s error=%s",
                        soft, hard, err)
    log.info("open files limit soft=%s hard=%s was=%s", new, _fmt_limit(hard), soft)
    return soft, new, hard


def _fmt_limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def connection_cap(wanted: int) -> int:
    """The connection cap, kept under half the open-files soft limit (the rest is for
    etcd, gateways and the process itself)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft // 2))


def split_listen(address: str) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' -> (host, port); an empty host means every address."""
    _check_listen(address)
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Listener:
    """The connections of one web server (all its addresses): admission and eviction."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limits: ServerLimits) -> None:
        self.factory = factory
        self.limits = limits
        self.cap = connection_cap(limits.max_connections)
        self.conns: dict[GuardedConnection, None] = {}  # insertion order = age
        self.by_transport: dict[object, GuardedConnection] = {}
        self.evicted = 0
        self.timed_out = 0
        self.servers: list[asyncio.Server] = []

    def admit(self, conn: GuardedConnection) -> bool:
        """Make room for `conn` if needed; False when every slot serves a request."""
        if len(self.conns) >= self.cap:
            victim = self._victim()
            if victim is None:
                log.warning("web connection limit reached, refusing a connection limit=%s",
                            self.cap)
                return False
            self.evicted += 1
            log.warning("web connection limit reached, dropping the oldest half-open or idle "
                        "connection limit=%s", self.cap)
            victim.drop()
        self.conns[conn] = None
        self.by_transport[conn.transport] = conn
        return True

    def _victim(self) -> GuardedConnection | None:
        """The oldest connection still sending its request head, else the oldest one that
        is idle (nothing sent yet, or kept alive between requests); never one whose
        request is being read or answered."""
        idle = None
        for conn in self.conns:
            if conn.state == "head" and conn.head_started:
                return conn
            if idle is None and conn.state in ("head", "idle"):
                idle = conn
        return idle

    async def on_response_prepare(self, request: Any, _response: Any) -> None:
        """aiohttp signal: the answer is going out, so the connection is idle again."""
        conn = self.by_transport.get(request.transport)
        if conn is not None and conn.state == "busy":
            conn.state = "idle"

    def release(self, conn: GuardedConnection) -> None:
        self.conns.pop(conn, None)
        if self.by_transport.get(conn.transport) is conn:
            del self.by_transport[conn.transport]

    async def start(self, addresses: Sequence[str], ssl_context: ssl.SSLContext | None,
                    backlog: int = 512) -> None:
        """Bind every address; an address that cannot be bound fails the start (OSError)."""
        loop = asyncio.get_running_loop()
        for address in addresses:
            host, port = split_listen(address)
            server = await loop.create_server(
                lambda: GuardedConnection(self), host=host, port=port, ssl=ssl_context,
                backlog=backlog, reuse_address=True,
                ssl_handshake_timeout=self.limits.read_header_timeout if ssl_context else None,
            )
            self.servers.append(server)

    def bound(self) -> list[str]:
        """The addresses actually listened on (HOST:PORT, ports resolved)."""
        out = []
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else
                           f"{host}:{port}")
        return out

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.conns):
            conn.drop()
        for server in self.servers:
            try:
                async with asyncio.timeout(5):
                    await server.wait_closed()
            except TimeoutError:
                log.warning("web listener did not close in time")
        self.servers.clear()


class GuardedConnection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, a request-head deadline outside.

    States: ``head`` (reading a request head, deadline armed), ``body`` (reading a
    Content-Length body, deadline armed), ``busy`` (the request is being answered),
    ``idle`` (answered; between requests aiohttp's keep-alive timeout applies)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.inner: Any = None
        self.transport: asyncio.Transport | None = None
        self.state = "head"
        self.head_started = False
        self._head = b""
        self._body_left = 0
        self._deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.listener.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.inner = self.listener.factory()
        self.inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        self._track(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.listener.release(self)
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # -- the request-head deadline -----------------------------------------------

    def _track(self, data: bytes) -> None:
        while data:
            if self.state == "body":
                used = min(len(data), self._body_left)
                self._body_left -= used
                data = data[used:]
                if self._body_left == 0:
                    self.state = "busy"
                    self._disarm()
                continue
            if self.state in ("idle", "busy"):
                self.state, self._head = "head", b""
                self._arm()
            self.head_started = True
            if len(self._head) >= _MAX_HEAD:
                return  # aiohttp answers 400 and closes; the deadline stays armed
            start = max(0, len(self._head) - 3)
            self._head += data
            end = self._head.find(_HEAD_END, start)
            if end < 0:
                return
            head, data = self._head[:end + 4], self._head[end + 4:]
            self._head, self.head_started = b"", False
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if length:
                self.state, self._body_left = "body", length
            else:
                self.state = "busy"
                self._disarm()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.listener.limits.read_header_timeout,
                                         self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self.listener.timed_out += 1
        log.info("web client sent no complete request in time, closing timeout=%gs",
                 self.listener.limits.read_header_timeout)
        self.drop()

    def drop(self) -> None:
        """Close at once (RST): the slot and the file descriptor are free right away."""
        self._disarm()
        self.listener.release(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class WebCollector(Collector):
    """The web server's own gauges and counters, read from the listener and the auth."""

    def __init__(self, listener: Listener, live: LiveWebConfig | None) -> None:
        self.listener, self.live = listener, live

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("watchdog_web_connections",
                                "Client connections open on the web server.",
                                value=len(self.listener.conns))
        yield GaugeMetricFamily("watchdog_web_max_connections",
                                "The web server's connection cap.", value=self.listener.cap)
        dropped = CounterMetricFamily(
            "watchdog_web_connections_dropped",
            "Connections the web server closed: limit = dropped at the connection cap, "
            "header_timeout = no complete request in time.", labels=["reason"])
        dropped.add_metric(["limit"], self.listener.evicted)
        dropped.add_metric(["header_timeout"], self.listener.timed_out)
        yield dropped
        if self.live is not None:
            checks = CounterMetricFamily(
                "watchdog_web_basic_auth_checks",
                "Basic-auth checks by outcome: cached_ok/cached_fail answered from the cache, "
                "verified_ok/verified_fail by bcrypt, busy refused with 429.",
                labels=["outcome"])
            for outcome in AUTH_OUTCOMES:
                checks.add_metric([outcome], self.live.outcomes[outcome])
            yield checks

    def describe(self) -> Iterator[Metric]:
        return iter(())
