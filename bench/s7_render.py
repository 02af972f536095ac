"""Section 7: the /metrics render at 200 + 200 and 1,000 + 1,000 peers and gateways.

The snapshot is made by the real reducer from the results real jobs return (tests/fleet.py:
a captured etcd 3.5.1 TLS page per peer, the four probes of a poll, an admin check, status
and metrics of each gateway, a smoke run), warmed up, every peer exposed: the most series the
default config gives a peer watched from another host. The render is the daemon's own
(`watchdog.render.Renderer`: the snapshot writer plus the per-task series, two tasks per
gateway), timed in CPU time of the rendering thread; gzip (made once per render) and the
process's own series (rendered at every scrape) are timed apart.

    python bench/s7_render.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: F401  (puts the repository on sys.path)

from tests.fleet import fleet_snapshot, series_per_target
from watchdog.metrics import SnapshotCollector, make_registry
from watchdog.render import Renderer

SIZES = ((200, 200), (1000, 1000))
TARGET_MS = 100.0
TARGET_BYTES = 3 * 1024 * 1024


async def loop_cpu(renderer: Renderer, times: int) -> list[float]:
    """CPU ms the event loop's thread spends on each fresh page (the render is elsewhere)."""
    out = []
    for _ in range(times):
        renderer.invalidate()
        started = time.thread_time()
        await renderer.page()
        out.append((time.thread_time() - started) * 1000)
    return out


def measure(peers: int, gateways: int, repeats: int) -> dict[str, Any]:
    snap = fleet_snapshot(peers, gateways, warmup=0.0)
    registry, metrics = make_registry()
    for i in range(gateways):  # the daemon's per-gateway tasks, as after their first runs
        for task in (f"gateway:gw-{i}", f"smoke:gw-{i}"):
            metrics.add_job(task)
            metrics.job_runs.labels(task, "success").inc()
            metrics.job_duration.labels(task).set(0.01)
    for task in ("etcd", "state"):
        metrics.add_job(task)
    renderer = Renderer(registry, [SnapshotCollector(lambda: snap), metrics.tasks],
                        lambda: snap, min_interval=5.0)
    try:
        body = renderer._render(snap, False)  # warm caches (label escaping) as a daemon has
        cpu_ms = []
        for _ in range(repeats):
            started = time.thread_time()
            body = renderer._render(snap, False)
            cpu_ms.append((time.thread_time() - started) * 1000)
        started = time.thread_time()
        packed = gzip.compress(body, 6)
        gzip_ms = (time.thread_time() - started) * 1000
        started = time.thread_time()
        live = renderer.live_part()
        live_ms = (time.thread_time() - started) * 1000
        # through the event loop, as a scrape gets it: the loop thread only waits
        loop_ms = statistics.median(asyncio.run(loop_cpu(renderer, min(repeats, 5))))
    finally:
        renderer.close()
    text = body.decode()
    per_peer, per_gateway = series_per_target(text)
    return {
        "peers": peers, "gateways": gateways, "repeats": repeats,
        "render_cpu_ms_median": round(statistics.median(cpu_ms), 1),
        "render_cpu_ms_min": round(min(cpu_ms), 1),
        "render_cpu_ms_max": round(max(cpu_ms), 1),
        "gzip_cpu_ms": round(gzip_ms, 1),
        "live_part_cpu_ms": round(live_ms, 2),
        "event_loop_thread_cpu_ms_median": round(loop_ms, 2),
        "bytes": len(body), "gzip_bytes": len(packed), "live_part_bytes": len(live),
        "lines": text.count("\n"),
        "series_per_peer_max": max(per_peer.values()),
        "series_per_gateway_max": max(per_gateway.values()),
        "met_cpu": statistics.median(cpu_ms) <= TARGET_MS,
        "met_bytes": len(body) <= TARGET_BYTES,
    }


def run(quick: bool) -> dict[str, Any]:
    rows = [measure(p, g, 5 if quick else 20) for p, g in SIZES]
    small, big = rows[0], rows[-1]
    return {
        "rows": rows,
        "target_cpu_ms": TARGET_MS, "target_bytes": TARGET_BYTES,
        "growth_1000_vs_200": round(big["render_cpu_ms_median"] / small["render_cpu_ms_median"],
                                    2),
        "clock": "time.thread_time() of the rendering thread, median of repeats",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.quick)
    for row in result["rows"]:
        print(f"{row['peers']:>5} peers + {row['gateways']:>5} gateways: render "
              f"{row['render_cpu_ms_median']} ms CPU (min {row['render_cpu_ms_min']}), "
              f"{row['bytes'] / 1e6:.2f} MB, gzip {row['gzip_bytes'] / 1e3:.0f} kB "
              f"({row['gzip_cpu_ms']} ms), {row['lines']} lines, "
              f"<= {row['series_per_peer_max']} series/peer, "
              f"<= {row['series_per_gateway_max']} series/gateway")
    print(f"growth 1000 vs 200: {result['growth_1000_vs_200']}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
