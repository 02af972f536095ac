"""`watchdog lab storm`: N HTTP watch long-polls against etcd, the way a gateway fleet does."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable

import aiohttp

from watchdog.etcd.client import b64, prefix_end
from watchdog.etcd.promtext import MetricsParseError, parse_peer_metrics
from watchdog.httpprobe import make_session, make_ssl_context, timed_request
from watchdog.results import ProbeResult

AUTH_TIMEOUT = 5.0


class StormError(Exception):
    """A storm that must not or cannot start (a remote endpoint, refused credentials)."""


def loopback_only(endpoint: str) -> None:
    """Raise StormError unless endpoint's host is in 127.0.0.0/8, ::1 or `localhost`: a
    storm can stall a production cluster's JSON gateway."""
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise StormError(
        f"--endpoint {endpoint}: {host or 'no host'} is not a loopback address "
        "(127.0.0.0/8 or ::1); a watch storm can stall a production etcd's JSON gateway, "
        "so give --allow-remote to aim it elsewhere on purpose")


async def authenticate(endpoint: str, username: str, password: str,
                       ca_file: str | None, timeout: float = AUTH_TIMEOUT) -> str:
    """An etcd auth token for username (raises StormError naming the cause, never the
    password)."""
    ssl_ctx = make_ssl_context(ca_file) if ca_file else None
    async with make_session(connector=aiohttp.TCPConnector(force_close=True)) as session:
        answer = await timed_request(
            session, "POST", f"{endpoint.rstrip('/')}/v3/auth/authenticate", api="json",
            op="authenticate", timeout=timeout, ssl=ssl_ctx,
            json_body={"name": username, "password": password})
    token = answer.body.get("token") if answer.ok and isinstance(answer.body, dict) else None
    if not isinstance(token, str) or not token:
        status = f" (HTTP {answer.status})" if answer.status else ""
        why = f"{answer.reason}: {answer.detail}" if not answer.ok else "no token in the answer"
        raise StormError(f"etcd refused to authenticate user {username!r}{status}: {why}")
    return token


class Storm:
    """Open and hold watch long-polls (`POST /v3/watch`), one TCP connection each.

    `created` counts watches etcd confirmed; `failed` counts every other outcome: a
    non-2xx answer (`statuses` says which), a watch etcd cancelled as it created it
    (`cancelled`, by reason: no or a refused token), a connection error, or a stream that
    ended without confirming its watch."""

    def __init__(self, endpoint: str, prefix: str = "/apisix/routes/",
                 ca_file: str | None = None, token: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.prefix = prefix
        self.ssl: ssl.SSLContext | bool = make_ssl_context(ca_file) if ca_file else True
        self.headers = {"Authorization": token} if token else {}
        self.created = 0
        self.failed = 0
        self.statuses: Counter[int] = Counter()  # non-2xx answers by status
        self.cancelled: Counter[str] = Counter()  # watches etcd refused, by its reason
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def open(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    async def start(self, watches: int) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True, ssl=self.ssl),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        for _ in range(watches):
            self._tasks.append(asyncio.create_task(self._hold()))

    async def _hold(self) -> None:
        assert self._session is not None
        body = {"create_request": {"key": b64(self.prefix),
                                   "range_end": b64(prefix_end(self.prefix))}}
        confirmed = False
        try:
            async with self._session.post(f"{self.endpoint}/v3/watch", json=body,
                                          headers=self.headers) as resp:
                if not 200 <= resp.status < 300:
                    self.statuses[resp.status] += 1
                    self.failed += 1
                    return
                async for line in resp.content:
                    if confirmed or b'"created"' not in line:
                        continue
                    result = json.loads(line).get("result") or {}
                    if result.get("canceled"):
                        # Created and cancelled at once: etcd refused it (auth, compaction).
                        reason = str(result.get("cancel_reason") or "canceled")[:160]
                        self.cancelled[reason] += 1
                        break
                    if result.get("created"):
                        confirmed = True
                        self.created += 1
        except (aiohttp.ClientError, OSError, ValueError, AttributeError):
            self.failed += 1
            return
        if not confirmed:  # refused, or the stream ended (an error line) before a watch
            self.failed += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def observe(endpoint: str, ca_file: str | None, timeout: float = 2.0,
                  token: str | None = None) -> tuple[float | None, ProbeResult]:
    """The peer's watch streams (None when /metrics does not answer) and one JSON read."""
    ssl_ctx = make_ssl_context(ca_file) if ca_file else None
    headers = {"Authorization": token} if token else None
    async with make_session(connector=aiohttp.TCPConnector(force_close=True)) as session:
        page, read = await asyncio.gather(
            timed_request(session, "GET", f"{endpoint}/metrics", api="metrics", op="metrics",
                          timeout=timeout, ssl=ssl_ctx, expect_json=False, max_body=16 << 20),
            timed_request(session, "POST", f"{endpoint}/v3/kv/range", api="json", op="range",
                          timeout=timeout, ssl=ssl_ctx, headers=headers,
                          json_body={"key": b64("/apisix/watchdog/probe"), "count_only": True}),
        )
    streams = None
    if page.ok and isinstance(page.body, bytes):
        try:
            streams = parse_peer_metrics(page.body).watch_streams
        except MetricsParseError:
            streams = None
    return streams, read


async def run_storm(endpoint: str, watches: int, ca_file: str | None, prefix: str,
                    duration: float | None, out: Callable[[str], None],
                    stop: asyncio.Event | None = None, token: str | None = None) -> dict[str, object]:
    """Open the watches, print a line a second, close them; returns a summary."""
    endpoint = endpoint.rstrip("/")
    stop = stop or asyncio.Event()
    storm = Storm(endpoint, prefix, ca_file, token)
    started = time.monotonic()
    worst = 0.0
    stalled = 0
    samples = 0
    await storm.start(watches)
    out(f"opening {watches} watch long-polls on {prefix} at {endpoint} (Ctrl-C to stop)")
    try:
        while not stop.is_set():
            streams, read = await observe(endpoint, ca_file, token=token)
            samples += 1
            if read.ok:
                worst = max(worst, read.duration)
                verdict = f"JSON read {read.duration * 1000:7.1f} ms"
            else:
                stalled += 1
                verdict = f"JSON read FAILED ({read.reason}: {read.detail})"
            shown = "no answer" if streams is None else f"{streams:.0f}"
            out(f"{time.monotonic() - started:6.1f}s  watches held {storm.open:4d} "
                f"(created {storm.created}, failed {storm.failed}{_statuses(storm)})  etcd "
                f"watch streams {shown:>9}  {verdict}")
            if duration is not None and time.monotonic() - started >= duration:
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        await storm.stop()
    summary = {"endpoint": endpoint, "watches": watches, "created": storm.created,
               "failed": storm.failed,
               "failed_by_status": {str(k): v for k, v in sorted(storm.statuses.items())},
               "cancelled_by_etcd": dict(storm.cancelled.most_common(3)),
               "json_reads": samples, "json_reads_failed": stalled,
               "slowest_json_read_seconds": round(worst, 4)}
    out("closed all watches: " + json.dumps(summary))
    if not storm.created:
        why = ("etcd cancelled them: " + "; ".join(storm.cancelled) if storm.cancelled else
               f"this endpoint serves no etcd JSON-gateway watch (POST /v3/watch); it "
               f"answered {_statuses(storm).lstrip(', ')}" if storm.statuses else
               "no connection held one (see failed)")
        out(f"no watch was opened: {why}")
    return summary


def _statuses(storm: Storm) -> str:
    return "".join(f", HTTP {code} x{n}" for code, n in sorted(storm.statuses.items()))
