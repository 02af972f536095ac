"""Section 1: CPU per poll of one peer, against Prometheus scraping the same etcd member and
against prometheus_client's full parser of the same page.

One real etcd member. Two real Prometheus servers run side by side for the whole section: one
scrapes the member through `jobs` identical jobs at a 1 s interval, the other has no targets
(its CPU is the idle baseline). Time is cut into windows; in each window this process polls the
member at a fixed pace with one watchdog variant (rotating) while Prometheus scrapes it, so
every watchdog number has a Prometheus number from the same seconds next to it.

watchdog CPU is `time.process_time()` of this process (all threads: aiohttp, the gRPC
workers) around the polls of a window, divided by the polls. Prometheus CPU is the utime+stime
delta of its process over the window divided by the scrapes it finished in the window
(`prometheus_target_interval_length_seconds_count`), raw and minus the idle instance's delta.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
from common import Children, Prometheus, median, ratio, sample_sum, summary
from prometheus_client.parser import text_string_to_metric_families

from watchdog.config import config_from_dict
from watchdog.daemon import Daemon
from watchdog.etcd.client import EtcdHttp
from watchdog.etcd.job import EtcdCycle
from watchdog.etcd.peers import PeerPoll, poll_peer
from watchdog.etcd.promtext import parse_peer_metrics
from watchdog.etcd.sockets import SocketTable, snapshot_connections
from watchdog.lab.cluster import EtcdCluster

TARGET_RATIO = 0.5  # issue #17: half of what Prometheus spends scraping the same page

VARIANTS = {
    "metrics": "fetch /metrics + filtered parse + record (the Prometheus-comparable part)",
    "metrics_keepalive": "the same on a kept-alive connection (EtcdHttp(keepalive=True); the "
                         "daemon opens a new connection per call, blackbox-style)",
    "poll_json": "poll_peer with the 2 JSON-gateway probes (grpc_probes: false) + record",
    "poll_full": "poll_peer as configured by default: /metrics + 2 JSON + 2 gRPC probes + record",
    "cycle_1peer": "the daemon's whole etcd job for a 1-peer cluster: member list + socket "
                   "snapshot + poll_peer (default) + record",
}


def prometheus_config(host: str, jobs: int) -> str:
    lines = ["global: {scrape_interval: 1s, scrape_timeout: 900ms}", "scrape_configs:"]
    for i in range(jobs):
        lines += [f"  - job_name: etcd-{i}", "    static_configs:",
                  f"      - targets: ['{host}']"]
    return "\n".join(lines) + "\n"


def make_daemon(url: str, grpc: bool, state_dir: str, keepalive: bool = False) -> Daemon:
    config = config_from_dict({
        "etcd": {"endpoints": [url], "discover_members": False, "grpc_probes": grpc,
                 "interval": "15s", "timeout": "2s"},
        "state_dir": state_dir,
    })
    daemon = Daemon(config)
    if keepalive:
        daemon.etcd.http = EtcdHttp(config.etcd.endpoints, keepalive=True)
    return daemon


async def metrics_only(daemon: Daemon) -> None:
    """fetch + parse + record: what poll_peer does for the /metrics page, without probes."""
    target = daemon.snapshot().targets[0]
    etcd = daemon.config.etcd
    started = time.monotonic()
    scrape, page = await daemon.etcd.http.metrics_page(target.url, etcd.timeout,
                                                  max_bytes=etcd.max_metrics_bytes)
    metrics = parse_peer_metrics(page) if scrape.ok and page is not None else None
    poll = PeerPoll(target=target, up=metrics is not None, reason=None if metrics else
                    scrape.reason, duration=time.monotonic() - started, metrics=metrics,
                    member_id=target.member_id)
    daemon.deliver(EtcdCycle(polls=(poll,)))


async def full_poll(daemon: Daemon) -> None:
    target = daemon.snapshot().targets[0]
    poll = await poll_peer(target, daemon.config.etcd, daemon.etcd.http, daemon.etcd.grpc, None,
                           daemon.config.etcd.connections_top_n)
    assert poll.up, poll.reason
    daemon.deliver(EtcdCycle(polls=(poll,)))


async def paced(fn: Callable[[], Awaitable[None]], seconds: float, rate: float) -> tuple[int, float]:
    """Call fn at `rate` per second for `seconds`; (calls, CPU seconds of this process)."""
    loop = asyncio.get_running_loop()
    gc.collect()
    start = loop.time()
    cpu0 = time.process_time()
    calls = 0
    while True:
        due = start + calls / rate
        now = loop.time()
        if due - start >= seconds:
            break
        if due > now:
            await asyncio.sleep(due - now)
        await fn()
        calls += 1
    return calls, time.process_time() - cpu0


async def measure(url: str, busy: Prometheus, idle: Prometheus, rounds: int, window: float,
                  rate: float, state_dir: str) -> dict[str, Any]:
    plain = make_daemon(url, grpc=False, state_dir=state_dir)
    kept = make_daemon(url, grpc=False, state_dir=state_dir, keepalive=True)
    full = make_daemon(url, grpc=True, state_dir=state_dir)
    daemons = (plain, kept, full)
    for d in daemons:
        await d.poll_etcd()  # discovery, channels, first-poll allocations
        await d.poll_etcd()
    await paced(lambda: metrics_only(plain), window, rate)  # warm-up window, discarded
    fns: dict[str, Callable[[], Awaitable[None]]] = {
        "metrics": lambda: metrics_only(plain),
        "metrics_keepalive": lambda: metrics_only(kept),
        "poll_json": lambda: full_poll(plain),
        "poll_full": lambda: full_poll(full),
        "cycle_1peer": full.poll_etcd,
    }
    windows: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            for variant, fn in fns.items():
                scrapes0 = sample_sum(busy.metrics(),
                                      "prometheus_target_interval_length_seconds_count")
                idle.metrics()  # the same self-scrape on both, so it cancels out
                b0, i0 = busy.cpu(), idle.cpu()
                w0 = time.monotonic()
                calls, cpu = await paced(fn, window, rate)
                wall = time.monotonic() - w0
                b1, i1 = busy.cpu(), idle.cpu()
                scrapes1 = sample_sum(busy.metrics(),
                                      "prometheus_target_interval_length_seconds_count")
                idle.metrics()
                scrapes = scrapes1 - scrapes0
                prom_raw = (b1 - b0) / scrapes if scrapes else None
                prom_adj = ((b1 - b0) - (i1 - i0)) / scrapes if scrapes else None
                wd = cpu / calls
                windows.append({
                    "round": r, "variant": variant, "wall_s": wall, "polls": calls,
                    "watchdog_cpu_s": cpu, "watchdog_ms_per_poll": wd * 1000,
                    "prom_scrapes": scrapes, "prom_cpu_s": b1 - b0, "prom_idle_cpu_s": i1 - i0,
                    "prom_ms_per_scrape_raw": prom_raw * 1000 if prom_raw else None,
                    "prom_ms_per_scrape_adj": prom_adj * 1000 if prom_adj else None,
                    "ratio_vs_prom_adj": ratio(wd, prom_adj),
                })
                print(f"  s1 round {r} {variant:11} wd {wd * 1000:6.2f} ms/poll  prom "
                      f"{(prom_adj or 0) * 1000:5.2f} ms/scrape ({scrapes:.0f} scrapes)",
                      flush=True)
        # The per-cycle socket snapshot (one per cycle, whatever the peer count).
        snap = []
        for _ in range(20):
            c0 = time.process_time()
            table = snapshot_connections()
            snap.append((time.process_time() - c0) * 1000)
        sockets = sum(len(v) for v in table.established.values())
        old = []  # the psutil path (the fallback, and what the snapshot was before)
        for _ in range(5):
            c0 = time.process_time()
            SocketTable.from_connections(psutil.net_connections(kind="tcp"))
            old.append((time.process_time() - c0) * 1000)
    finally:
        for d in daemons:
            await d.stop()
    return {"windows": windows, "snapshot_ms": summary(snap), "snapshot_established": sockets,
            "snapshot_psutil_ms": summary(old)}


def parse_costs(page: bytes, runs: int) -> dict[str, Any]:
    """prometheus_client's full parse vs watchdog's filtered parse of the live page (CPU)."""
    text = page.decode()

    def full() -> None:
        for _ in text_string_to_metric_families(text):
            pass

    out: dict[str, Any] = {"page_bytes": len(page), "lines": text.count("\n"),
                           "families": sum(1 for _ in text_string_to_metric_families(text))}
    for name, fn, n in (("prometheus_client_full", full, runs),
                        ("watchdog_filtered", lambda: parse_peer_metrics(page), runs * 10)):
        fn()
        samples = []
        for _ in range(n):
            c0 = time.process_time_ns()
            fn()
            samples.append((time.process_time_ns() - c0) / 1e6)
        out[name + "_ms"] = summary(samples)
    out["full_over_filtered"] = ratio(out["prometheus_client_full_ms"]["median"],
                                      out["watchdog_filtered_ms"]["median"])
    return out


def run(quick: bool) -> dict[str, Any]:
    rounds, window, jobs, rate = (2, 3.0, 20, 10.0) if quick else (3, 5.0, 20, 10.0)
    with EtcdCluster(size=1, name_prefix="s1") as cluster, Children() as children, \
            tempfile.TemporaryDirectory(prefix="wdbench-s1-") as state:
        url = cluster.endpoints[0]
        host = url.split("//", 1)[1]
        busy = Prometheus(children, prometheus_config(host, jobs), "busy").start()
        idle = Prometheus(children, prometheus_config(host, 0), "idle").start()
        try:
            time.sleep(4.0)  # first scrapes create the series; steady appends after
            page = cluster.metrics_text().encode()
            parse = parse_costs(page, 10 if quick else 20)
            result = asyncio.run(measure(url, busy, idle, rounds, window, rate,
                                         str(Path(state))))
        finally:
            busy.close()
            idle.close()
    windows = result["windows"]
    prom_adj = median(w["prom_ms_per_scrape_adj"] for w in windows)
    prom_raw = median(w["prom_ms_per_scrape_raw"] for w in windows)
    variants = {}
    for v in VARIANTS:
        rows = [w for w in windows if w["variant"] == v]
        ms = summary([w["watchdog_ms_per_poll"] for w in rows])
        variants[v] = {
            "description": VARIANTS[v],
            "ms_per_poll": ms,
            # headline: median of this variant over the median Prometheus scrape of the run
            "ratio": ratio(ms["median"], prom_adj),
            "ratio_vs_prom_adj": summary([w["ratio_vs_prom_adj"] for w in rows]),
        }
    return {
        "settings": {"rounds": rounds, "window_s": window, "prometheus_jobs": jobs,
                     "scrape_interval_s": 1.0, "watchdog_polls_per_s": rate},
        "prometheus_ms_per_scrape_raw": prom_raw,
        "prometheus_ms_per_scrape_adj": prom_adj,
        "prometheus_idle_cpu_s_per_window": median(w["prom_idle_cpu_s"] for w in windows),
        "variants": variants,
        "parse": parse,
        "snapshot_ms": result["snapshot_ms"],
        "snapshot_established": result["snapshot_established"],
        "snapshot_psutil_ms": result["snapshot_psutil_ms"],
        "windows": windows,
        "target": "watchdog fetch+parse+record CPU per poll <= 0.5 x Prometheus CPU per scrape",
        "target_met": (variants["metrics"]["ratio"] or 1e9) <= TARGET_RATIO,
    }
