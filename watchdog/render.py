"""The /metrics page: the snapshot part rendered at most once per poll cycle, off the loop.

Probes are timed on the event loop. A render of a large fleet takes long enough to delay
them, and a scrape that did that would make JSON-gateway probes look slow: the very stall
watchdog exists to detect. So one render of the snapshot (every peer and gateway series)
serves every scrape of a cycle: a new render starts only when the snapshot has moved to a new
cycle, or when the cached part is older than `min_interval` (gateway results land between
cycles). It runs in a worker thread, one at a time; concurrent scrapes wait for it and share
it, and its gzip form is made once. The per-task series (a few per gateway, changing only when
a task runs) are rendered with it. The process's own series (process_*, web server, reloads:
a few dozen lines) are rendered at every scrape and appended, so they are always current;
gzip members may be concatenated, so the cached part stays compressed.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from watchdog.snapshot import Snapshot

EOF = b"# EOF\n"


@runtime_checkable
class TextWriter(Protocol):
    """Writes its part of the page as exposition text from one snapshot."""

    def render(self, snap: Snapshot, openmetrics: bool = False) -> str: ...


@dataclass
class Page:
    """The snapshot part of the page for one snapshot, in one format (no OpenMetrics EOF)."""

    body: bytes
    content_type: str
    snapshot: Snapshot
    rendered_at: float
    gzipped: bytes | None = field(default=None, repr=False)


class Renderer:
    """Caches the rendered page per format; see the module docstring for when it renders."""

    def __init__(self, live: CollectorRegistry, per_cycle: Collector | list[Collector],
                 latest: Callable[[], Snapshot], min_interval: float,
                 on_render: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.live = live
        self.registry = CollectorRegistry(auto_describe=False)
        # Collectors that write their own text from a snapshot (SnapshotCollector.render) skip
        # prometheus_client's metric objects; the rest go through a registry.
        self.writers: list[TextWriter] = []
        for collector in per_cycle if isinstance(per_cycle, list) else [per_cycle]:
            if isinstance(collector, TextWriter):
                self.writers.append(collector)
            else:
                self.registry.register(collector)
        self.latest = latest
        self.min_interval = min_interval
        self.on_render = on_render
        self.clock = clock
        self._pages: dict[bool, Page] = {}
        self._lock = asyncio.Lock()
        # Its own thread: renders never queue behind other work in the default pool
        # (bcrypt checks under a basic-auth flood, the socket-table snapshot).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="watchdog-render")

    def _fresh(self, page: Page | None, snap: Snapshot) -> bool:
        if page is None:
            return False
        if page.snapshot is snap:
            return True
        return (page.snapshot.cycle == snap.cycle
                and self.clock() - page.rendered_at < self.min_interval)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def invalidate(self) -> None:
        """The next scrape renders anew (after a reload, say)."""
        self._pages.clear()

    async def page(self, openmetrics: bool = False) -> Page:
        """The page for the latest snapshot (rendered now only when the cached one is stale)."""
        page = self._pages.get(openmetrics)
        if self._fresh(page, self.latest()):
            assert page is not None
            return page
        async with self._lock:
            snap = self.latest()
            page = self._pages.get(openmetrics)
            if self._fresh(page, snap):
                assert page is not None
                return page
            if self.on_render is not None:
                self.on_render()
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(self._thread, self._render, snap, openmetrics)
            page = Page(body, OPENMETRICS_CONTENT_TYPE if openmetrics else CONTENT_TYPE_LATEST,
                        snap, self.clock())
            self._pages[openmetrics] = page
            return page

    def _render(self, snap: Snapshot, openmetrics: bool) -> bytes:
        """The snapshot part of the page (runs in the render thread)."""
        parts = [w.render(snap, openmetrics).encode() for w in self.writers]
        render = generate_openmetrics if openmetrics else generate_latest
        rest = render(self.registry)
        if openmetrics and rest.endswith(EOF):
            rest = rest[:-len(EOF)]
        return b"".join((*parts, rest))

    async def gzipped(self, page: Page) -> bytes:
        """The snapshot part gzip-compressed, made once per render."""
        if page.gzipped is None:
            loop = asyncio.get_running_loop()
            page.gzipped = await loop.run_in_executor(self._thread, gzip.compress, page.body, 6)
        return page.gzipped

    def live_part(self, openmetrics: bool = False) -> bytes:
        """The process's own series, rendered now (ends with the OpenMetrics EOF)."""
        if openmetrics:
            return generate_openmetrics(self.live)
        return prometheus_client.generate_latest(self.live)

    async def scrape(self, openmetrics: bool = False, gzipped: bool = False
                     ) -> tuple[bytes, str]:
        """A whole page: (body, content type); gzipped as two concatenated gzip members."""
        page = await self.page(openmetrics)
        live = self.live_part(openmetrics)
        if gzipped:
            return await self.gzipped(page) + gzip.compress(live, 1), page.content_type
        return page.body + live, page.content_type
