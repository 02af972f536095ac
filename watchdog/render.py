"""The /metrics page, rendered at most once per poll cycle and off the event loop.

Probes are timed on the event loop. A render of a large fleet takes long enough to delay
them, and a scrape that did that would make JSON-gateway probes look slow: the very stall
watchdog exists to detect. So one render serves every scrape of a cycle: a new render starts
only when the snapshot has moved to a new cycle, or when the cached page is older than
`min_interval` (gateway results land between cycles). It runs in a worker thread, one at a
time; concurrent scrapes wait for it and share it. The gzip form is made once per render.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from watchdog.snapshot import Snapshot


@dataclass
class Page:
    """One rendered page of one snapshot, in one format."""

    body: bytes
    content_type: str
    snapshot: Snapshot
    rendered_at: float
    gzipped: bytes | None = field(default=None, repr=False)


class Renderer:
    """Caches the rendered page per format; see the module docstring for when it renders."""

    def __init__(self, registry: CollectorRegistry, latest: Callable[[], Snapshot],
                 min_interval: float, on_render: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.latest = latest
        self.min_interval = min_interval
        self.on_render = on_render
        self.clock = clock
        self._pages: dict[bool, Page] = {}
        self._lock = asyncio.Lock()

    def _fresh(self, page: Page | None, snap: Snapshot) -> bool:
        if page is None:
            return False
        if page.snapshot is snap:
            return True
        return (page.snapshot.cycle == snap.cycle
                and self.clock() - page.rendered_at < self.min_interval)

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
            render = generate_openmetrics if openmetrics else generate_latest
            body = await asyncio.to_thread(render, self.registry)
            page = Page(body, OPENMETRICS_CONTENT_TYPE if openmetrics else CONTENT_TYPE_LATEST,
                        snap, self.clock())
            self._pages[openmetrics] = page
            return page

    async def gzipped(self, page: Page) -> bytes:
        """The page gzip-compressed, made once per render."""
        if page.gzipped is None:
            page.gzipped = await asyncio.to_thread(gzip.compress, page.body, 6)
        return page.gzipped
