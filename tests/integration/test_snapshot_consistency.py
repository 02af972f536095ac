"""No torn peer: every scrape shows each peer as of one poll cycle.

A real `watchdog run` polls a real 3-member etcd cluster every 250 ms while four threads
scrape /metrics as fast as they can. Every peer is polled from cycle 1 on (the first cycle
discovers the members, then polls them), and each poll runs both range probes, so in a
consistent scrape each range probe's calls (latency count + failures) equal the peer's
`watchdog_etcd_peer_poll_cycle`, and no peer is ahead of `watchdog_snapshot_cycle`. A render
that mixed two cycles (a histogram fed after the cycle number was published, or before)
breaks one of these equalities.
"""

from __future__ import annotations

import gzip
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import http_get, samples, wait_until
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration

# The probes with a latency histogram (the status probes are counted in failures only).
PROBES = {("json", "range"), ("grpc", "range")}
DURATION = 15.0
MAX_SCRAPES = 3000


def scan(text: str, names: set[str]) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of the samples of `names`: a line scan, cheap enough to check
    every one of thousands of scrapes (label values here never hold commas or quotes)."""
    out = []
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        if name in names:
            labels = dict(pair.split("=", 1) for pair in rest.rstrip("}").split(",") if pair)
            out.append((name, {k: v.strip('"') for k, v in labels.items()}, float(value)))
    return out


def torn_peers(text: str) -> tuple[int, list[str]]:
    """(snapshot cycle, descriptions of every inconsistency in one scrape)."""
    cycle = -1
    peer_cycle: dict[str, float] = {}
    calls: dict[tuple[str, str, str], float] = defaultdict(float)
    for name, label, value in scan(text, {
            "watchdog_snapshot_cycle", "watchdog_etcd_peer_poll_cycle",
            "watchdog_etcd_probe_duration_seconds_count", "watchdog_etcd_probe_failures_total"}):
        if name == "watchdog_snapshot_cycle":
            cycle = int(value)
        elif name == "watchdog_etcd_peer_poll_cycle":
            peer_cycle[label["peer"]] = value
        else:
            calls[(label["peer"], label["api"], label["op"])] += value
    problems = [] if cycle >= 0 else ["no watchdog_snapshot_cycle"]
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
    torn = ok.replace('api="grpc",op="range"} 3', 'api="grpc",op="range"} 2')
    problems = torn_peers(torn)[1]
    assert len(problems) == 1 and problems[0].startswith("a grpc/range: 2.0 calls at cycle 3")


def test_no_scrape_shows_a_peer_from_two_cycles(
    etcd_cluster3: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    proc = run_watchdog(write_config({"etcd": {
        "endpoints": [etcd_cluster3.endpoints[0]], "interval": "250ms", "timeout": "200ms"}}))
    proc.wait_ready()
    wait_until(lambda: torn_peers(proc.metrics())[0] >= 2, timeout=10, what="two cycles")
    renders_before = samples(proc.metrics())[("watchdog_metrics_renders_total", frozenset())]
    texts: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DURATION

    def scrape() -> None:
        while time.monotonic() < deadline and len(texts) < MAX_SCRAPES:
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
    # One render per cycle serves every scrape of it (a render may start just before the
    # window and one more at its end).
    renders = scan(texts[-1], {"watchdog_metrics_renders_total"})[0][2]
    assert renders - renders_before <= len(cycles) + 2, (renders - renders_before, len(cycles))
    # Prometheus asks for gzip: the same exposition, compressed.
    request = urllib.request.Request(proc.url + "/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(resp.read()).decode()
    assert torn_peers(text)[1] == []
