"""No torn peer: every scrape shows each peer as of one poll cycle.

A real `watchdog run` polls a real 3-member etcd cluster every 250 ms while four threads
scrape /metrics as fast as they can. Every peer is polled from cycle 1 on (the first cycle
discovers the members, then polls them), and each poll runs all four probes, so in a
consistent scrape each probe's calls (latency count + failures) equal the peer's
`watchdog_etcd_peer_poll_cycle`, and no peer is ahead of `watchdog_snapshot_cycle`. A render
that mixed two cycles (a histogram fed after the cycle number was published, or before)
breaks one of these equalities.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import http_get, samples, wait_until
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration

PROBES = {("json", "range"), ("json", "status"), ("grpc", "range"), ("grpc", "status")}
DURATION = 15.0


def torn_peers(text: str) -> tuple[int, list[str]]:
    """(snapshot cycle, descriptions of every inconsistency in one scrape)."""
    values = samples(text)
    cycle = int(values[("watchdog_snapshot_cycle", frozenset())])
    peer_cycle: dict[str, float] = {}
    calls: dict[tuple[str, str, str], float] = defaultdict(float)
    for (name, labels), value in values.items():
        label = dict(labels)
        if name == "watchdog_etcd_peer_poll_cycle":
            peer_cycle[label["peer"]] = value
        elif name in ("watchdog_etcd_probe_duration_seconds_count",
                      "watchdog_etcd_probe_failures_total"):
            calls[(label["peer"], label["api"], label["op"])] += value
    problems = []
    for peer, polled in peer_cycle.items():
        if polled > cycle:
            problems.append(f"{peer}: cycle {polled} ahead of snapshot {cycle}")
        for api, op in PROBES:
            seen = calls.get((peer, api, op))
            if seen != polled:
                problems.append(f"{peer} {api}/{op}: {seen} calls at cycle {polled}")
    return cycle, problems


def test_torn_peer_is_detected_by_the_check() -> None:
    ok = ('watchdog_snapshot_cycle 3\nwatchdog_etcd_peer_poll_cycle{peer="a"} 3\n' + "".join(
        f'watchdog_etcd_probe_duration_seconds_count{{peer="a",api="{a}",op="{o}"}} 3\n'
        for a, o in sorted(PROBES)))
    assert torn_peers(ok) == (3, [])
    torn = ok.replace('api="grpc",op="status"} 3', 'api="grpc",op="status"} 2')
    problems = torn_peers(torn)[1]
    assert len(problems) == 1 and problems[0].startswith("a grpc/status: 2.0 calls at cycle 3")


def test_no_scrape_shows_a_peer_from_two_cycles(
    etcd_cluster3: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    proc = run_watchdog(write_config({"etcd": {
        "endpoints": [etcd_cluster3.endpoints[0]], "interval": "250ms", "timeout": "200ms"}}))
    proc.wait_ready()
    wait_until(lambda: torn_peers(proc.metrics())[0] >= 2, timeout=10, what="two cycles")
    texts: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION

    def scrape() -> None:
        while time.monotonic() < deadline:
            status, body = http_get(proc.url + "/metrics", timeout=5)
            assert status == 200
            with lock:
                texts.append(body)

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DURATION + 10)
    cycles = set()
    torn = []
    for text in texts:
        cycle, problems = torn_peers(text)
        cycles.add(cycle)
        torn += problems
    print(f"\n{len(texts)} scrapes over {DURATION:.0f}s saw {len(cycles)} cycles; "
          f"{len(torn)} inconsistencies")
    assert len(texts) >= 100 and len(cycles) >= 10, (len(texts), len(cycles))
    assert torn == []
