"""The trip wire on real etcd: learn a steady set of watches, surge, trip, recover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import sample
from watchdog.lab.cluster import EtcdCluster
from watchdog.lab.storm import Storm

pytestmark = pytest.mark.integration
INTERVAL = 1.0


async def metric(proc: WatchdogProcess, name: str) -> float | None:
    return sample(await asyncio.to_thread(proc.metrics), name)


async def wait_for(check: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds until the async check is truthy; fails after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await check():  # type: ignore[misc]
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.fault(
    "a watch surge to 2.33x the steady state",
    reports="`watchdog_etcd_watch_tripwire` 1, the steady state frozen, `watch_streams_ratio` 2.33; "
            "clears after the hold",
    within="2 intervals + 0.5 s; clears within hold + 3 intervals (asserted)")
async def test_surge_trips_within_two_intervals_and_clears(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=1, name_prefix="wire")
    endpoint = cluster.endpoints[0]
    steady, surge = Storm(endpoint), Storm(endpoint)
    try:
        await steady.start(15)
        await wait_for(lambda: asyncio.sleep(0, steady.created == 15), 10, "15 steady watches")
        proc = run_watchdog(write_config({
            "etcd": {"endpoints": [endpoint], "discover_members": False,
                     "interval": f"{INTERVAL}s", "timeout": "500ms"},
            "tripwire": {"warmup": "3s", "hold": "1s", "min_streams": 10},
        }))
        await wait_for(lambda: metric(proc, "watchdog_etcd_watch_streams_steady_state"), 15,
                       "steady state learned")
        assert await metric(proc, "watchdog_etcd_watch_streams_steady_state") == 15
        assert await metric(proc, "watchdog_etcd_watch_tripwire") == 0

        await surge.start(20)  # 35 streams: 2.33x the steady state
        await wait_for(lambda: asyncio.sleep(0, surge.created == 20), 10, "surge watches")
        async def tripped() -> bool:
            return await metric(proc, "watchdog_etcd_watch_tripwire") == 1
        took = await wait_for(tripped, 2 * INTERVAL + 0.5, "wire tripped within 2 intervals")
        text = await asyncio.to_thread(proc.metrics)
        assert sample(text, "watchdog_etcd_watch_streams") == 35
        assert sample(text, "watchdog_etcd_watch_streams_steady_state") == 15, "frozen"
        assert sample(text, "watchdog_etcd_watch_streams_ratio") == pytest.approx(35 / 15)
        print(f"surge to wire: {took:.2f}s ({took / INTERVAL:.1f} poll intervals)")

        await surge.stop()
        async def cleared() -> bool:
            return await metric(proc, "watchdog_etcd_watch_tripwire") == 0
        await wait_for(cleared, 1.0 + 3 * INTERVAL + 0.5, "wire cleared after the hold")
        assert await metric(proc, "watchdog_etcd_watch_streams_steady_state") == 15
        log = proc.output()  # one line each way, not one per poll
        assert log.count("trip wire tripped peer=wire-0 signal=watch_streams") == 1, log
        assert log.count("trip wire cleared peer=wire-0 signal=watch_streams") == 1, log
    finally:
        await surge.stop()
        await steady.stop()


@pytest.mark.fault(
    "watchdog restarted",
    reports="the wire is armed at once with the saved steady state, no new warm-up",
    within="the first poll")
async def test_state_survives_a_restart_of_watchdog(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=1, name_prefix="restart")
    endpoint = cluster.endpoints[0]
    storm = Storm(endpoint)
    try:
        await storm.start(12)
        await wait_for(lambda: asyncio.sleep(0, storm.created == 12), 10, "12 watches")
        config = write_config({
            "etcd": {"endpoints": [endpoint], "discover_members": False, "interval": "1s",
                     "timeout": "500ms"},
            "tripwire": {"warmup": "2s"},
        })
        first = run_watchdog(config)
        await wait_for(lambda: metric(first, "watchdog_etcd_watch_streams_steady_state"), 15,
                       "steady state learned")
        assert first.stop() == 0
        second = run_watchdog(config)
        await wait_for(lambda: metric(second, "watchdog_etcd_watch_streams"), 10,
                       "first poll after restart")
        # Armed at once: the baseline came from disk, no new warm-up.
        assert await metric(second, "watchdog_etcd_watch_streams_steady_state") == 12
    finally:
        await storm.stop()
