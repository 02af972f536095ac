"""/metrics is rendered once per poll cycle, however many scrapes ask, off the event loop.

The registry is watchdog's own (SnapshotCollector on real snapshots made by the reducer);
the clock is injected, so nothing here is timed."""

from __future__ import annotations

import asyncio
import gzip
import threading

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_reducer import A, Clock, make_reducer
from watchdog.etcd.job import Discovery, EtcdCycle
from watchdog.gateway.jobs import GatewayPoll
from watchdog.metrics import SnapshotCollector, make_registry
from watchdog.render import Renderer
from watchdog.results import ProbeResult


def setup() -> tuple[Renderer, list[str], Clock, object]:
    reducer, _, _ = make_reducer()
    registry, metrics = make_registry()
    threads: list[str] = []
    clock = Clock()
    import watchdog.render as render_module

    original = render_module.generate_latest

    def spy(reg):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return original(reg)

    render_module.generate_latest = spy  # restored by the caller
    renderer = Renderer(registry, SnapshotCollector(lambda: reducer.snapshot),
                        lambda: reducer.snapshot, min_interval=5.0,
                        on_render=metrics.renders.inc, clock=clock)
    return renderer, threads, clock, (reducer, original, render_module)


async def test_a_hundred_scrapes_of_one_cycle_cost_one_render() -> None:
    renderer, threads, _, (reducer, original, module) = setup()
    try:
        reducer.apply(EtcdCycle(polls=(), before=Discovery((A,))))
        pages = await asyncio.gather(*(renderer.page() for _ in range(100)))
        assert len(threads) == 1 and threads[0] != threading.current_thread().name
        assert all(p is pages[0] for p in pages)
        # The next cycle renders again, once.
        reducer.apply(EtcdCycle(polls=()))
        await asyncio.gather(*(renderer.page() for _ in range(50)))
        assert len(threads) == 2
        text = (await renderer.scrape())[0].decode()
        cycle = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "watchdog_snapshot_cycle"]
        assert cycle == [2.0]
        # The process's own series are rendered at every scrape: the count is current.
        renders = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "watchdog_metrics_renders_total"]
        assert renders == [2.0]
        assert len(threads) == 2
    finally:
        module.generate_latest = original


async def test_results_between_cycles_show_after_min_interval_and_formats_are_separate() -> None:
    renderer, threads, clock, (reducer, original, module) = setup()
    try:
        await renderer.page()
        admin = ProbeResult(api="admin", op="get_missing_route", ok=True, duration=0.02)
        reducer.apply(GatewayPoll("gw-1", admin))  # same cycle, new snapshot
        clock.now += 4.9
        await renderer.page()
        assert len(threads) == 1  # younger than min_interval: the cached page serves
        clock.now += 0.2
        page = await renderer.page()
        assert len(threads) == 2 and b'watchdog_gateway_admin_success{' in page.body
        om, content_type = await renderer.scrape(openmetrics=True)
        assert content_type.startswith("application/openmetrics-text")
        assert om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
        assert b"watchdog_gateway_admin_success{" in om and b"watchdog_build_info" in om
        assert not (await renderer.scrape())[0].endswith(b"# EOF\n")
    finally:
        module.generate_latest = original


async def test_gzip_is_made_once_per_render_and_is_the_same_page() -> None:
    renderer, _, _, (_, original, module) = setup()
    try:
        page = await renderer.page()
        first = await renderer.gzipped(page)
        assert await renderer.gzipped(page) is first
        assert gzip.decompress(first) == page.body
        body, _ = await renderer.scrape(gzipped=True)
        text = gzip.decompress(body)  # two members: the cached part, then the live part
        assert text.startswith(page.body) and b"watchdog_metrics_renders_total" in text
    finally:
        module.generate_latest = original
