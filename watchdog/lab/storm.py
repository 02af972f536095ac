"""`watchdog lab storm`: N HTTP watch long-polls against etcd, the way a gateway fleet does."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable

import aiohttp

from watchdog.etcd.client import b64, prefix_end
from watchdog.etcd.promtext import MetricsParseError, parse_peer_metrics
from watchdog.httpprobe import make_session, make_ssl_context, timed_request
from watchdog.results import ProbeResult


class Storm:
    """Open and hold watch long-polls (`POST /v3/watch`), one TCP connection each."""

    def __init__(self, endpoint: str, prefix: str = "/apisix/routes/",
                 ca_file: str | None = None, token: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.prefix = prefix
        self.ssl: ssl.SSLContext | bool = make_ssl_context(ca_file) if ca_file else True
        self.headers = {"Authorization": token} if token else {}
        self.created = 0
        self.failed = 0
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
        try:
            async with self._session.post(f"{self.endpoint}/v3/watch", json=body,
                                          headers=self.headers) as resp:
                async for line in resp.content:
                    if b'"created":true' in line.replace(b" ", b""):
                        self.created += 1
        except (aiohttp.ClientError, OSError, ValueError):
            self.failed += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def observe(endpoint: str, ca_file: str | None, timeout: float = 2.0
                  ) -> tuple[float | None, ProbeResult]:
    """The peer's watch streams (None when /metrics does not answer) and one JSON read."""
    ssl_ctx = make_ssl_context(ca_file) if ca_file else None
    async with make_session(connector=aiohttp.TCPConnector(force_close=True)) as session:
        page, read = await asyncio.gather(
            timed_request(session, "GET", f"{endpoint}/metrics", api="metrics", op="metrics",
                          timeout=timeout, ssl=ssl_ctx, expect_json=False, max_body=16 << 20),
            timed_request(session, "POST", f"{endpoint}/v3/kv/range", api="json", op="range",
                          timeout=timeout, ssl=ssl_ctx,
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
            streams, read = await observe(endpoint, ca_file)
            samples += 1
            if read.ok:
                worst = max(worst, read.duration)
                verdict = f"JSON read {read.duration * 1000:7.1f} ms"
            else:
                stalled += 1
                verdict = f"JSON read FAILED ({read.reason}: {read.detail})"
            shown = "no answer" if streams is None else f"{streams:.0f}"
            out(f"{time.monotonic() - started:6.1f}s  watches held {storm.open:4d} "
                f"(created {storm.created}, failed {storm.failed})  etcd watch streams "
                f"{shown:>9}  {verdict}")
            if duration is not None and time.monotonic() - started >= duration:
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        await storm.stop()
    summary = {"endpoint": endpoint, "watches": watches, "created": storm.created,
               "failed": storm.failed, "json_reads": samples, "json_reads_failed": stalled,
               "slowest_json_read_seconds": round(worst, 4)}
    out("closed all watches: " + json.dumps(summary))
    return summary
