"""Does scrape load move probe latency? The real agent watches a replayed fleet (200 etcd peers
+ 200 gateways, as in section 3) while /metrics is scraped at 0 and at 100 scrapes/s, in
alternating phases of one run (0, 100, 0, 100, ...).

    python bench/scrape_load.py [--peers 200] [--phase 30] [--rounds 2] [--rate 100]

Also section "scrape" of bench/run.py (`run(quick)`: 15 s phases, one round, when quick).

JSON-probe latency per phase comes from the agent's own histogram
(watchdog_etcd_probe_duration_seconds{api="json"}: sum/count deltas for the mean, bucket
deltas for the median), read at each phase boundary. Before the render was cached, 215
scrapes/s moved JSON latency from 37 ms to 922 ms: the JSON-gateway stall's signature, made
by watchdog itself. Target: the median moves by less than 10 %. Writes
bench/results/scrape_load.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import ADMIN_KEY, PYTHON, REPO, Children, free_port, wait_http  # noqa: E402
from s3_fleet import KEY_ENV, wait_file, write_config  # noqa: E402

RESULTS = BENCH / "results" / "scrape_load.json"
HIST = "watchdog_etcd_probe_duration_seconds"


def json_histogram(text: str) -> tuple[dict[float, float], float, float]:
    """(cumulative bucket counts by bound, sum, count) of JSON probes, all peers added."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for line in text.splitlines():
        if not line.startswith(HIST) or 'api="json"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith(HIST + "_bucket"):
            bound = name.split('le="')[1].split('"')[0]
            key = float("inf") if bound == "+Inf" else float(bound)
            buckets[key] = buckets.get(key, 0.0) + float(value)
        elif name.startswith(HIST + "_sum"):
            total += float(value)
        elif name.startswith(HIST + "_count"):
            count += float(value)
    return buckets, total, count


def median_of(delta: dict[float, float]) -> float | None:
    """The median from cumulative bucket counts, linear within its bucket."""
    bounds = sorted(delta)
    n = delta[bounds[-1]] if bounds else 0
    if n <= 0:
        return None
    below, lower = 0.0, 0.0
    for bound in bounds:
        if delta[bound] >= n / 2:
            if bound == float("inf"):
                return lower
            inside = delta[bound] - below
            return lower + (bound - lower) * ((n / 2 - below) / inside if inside else 0)
        below, lower = delta[bound], bound
    return None


def read(url: str, gzip_ok: bool = False) -> str:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        body = resp.read()
    return gzip.decompress(body).decode() if gzip_ok else body.decode()


def scrape_like_prometheus(url: str) -> None:
    """What a Prometheus scrape asks for: the page, gzip-compressed (not decompressed here:
    Prometheus's own parsing is not the agent's cost)."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        resp.read()


def scrape_at(url: str, rate: float, stop: threading.Event, done: list[int]) -> None:
    """`rate` scrapes per second from 4 threads until `stop`."""
    def worker() -> None:
        period = 4 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                scrape_like_prometheus(url)
                done[0] += 1
            except OSError:
                pass
            next_at += period
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join(30)


def measure(peers: int, phase: float, rounds: int, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir, Children() as children:
        tmp = Path(tmpdir)
        ready = tmp / "replay.json"
        replay = children.start([PYTHON, str(BENCH / "replay_server.py"), "--peers", str(peers),
                                 "--gateways", str(peers), "--ready-file", str(ready)])
        wait_file(ready, replay)
        info = json.loads(ready.read_text())
        config = tmp / "watchdog.yml"
        write_config(config, info["peer_ports"], info["gateway_ports"], tmp / "state")
        port = free_port()
        log = open(tmp / "agent.log", "wb")
        children.start([PYTHON, "-m", "watchdog", "run", "--config", str(config),
                        "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warning"],
                       env={**os.environ, KEY_ENV: ADMIN_KEY}, stdout=log, stderr=log,
                       cwd=str(REPO))
        log.close()
        url = f"http://127.0.0.1:{port}/metrics"
        wait_http(url, timeout=60)
        time.sleep(15)  # warm-up: discovery, first cycles, connections
        phases: list[dict[str, Any]] = []
        before = json_histogram(read(url))
        for _ in range(rounds):
            for scrape_rate in (0.0, rate):
                stop, done = threading.Event(), [0]
                loader = None
                if scrape_rate:
                    loader = threading.Thread(target=scrape_at, args=(url, scrape_rate, stop,
                                                                      done))
                    loader.start()
                time.sleep(phase)
                stop.set()
                if loader is not None:
                    loader.join(60)
                after = json_histogram(read(url))
                delta = {b: after[0].get(b, 0) - before[0].get(b, 0) for b in after[0]}
                calls = after[2] - before[2]
                phases.append({
                    "scrapes_per_s": scrape_rate, "scrapes": done[0],
                    "json_probes": calls,
                    "json_mean_ms": 1000 * (after[1] - before[1]) / calls if calls else None,
                    "json_median_ms": (1000 * m) if (m := median_of(delta)) is not None
                    else None,
                })
                print(json.dumps(phases[-1]), flush=True)
                before = after
    def med(rate_: float, key: str) -> float | None:
        values = sorted(p[key] for p in phases if p["scrapes_per_s"] == rate_ and p[key])
        return values[len(values) // 2] if values else None

    idle, loaded = med(0.0, "json_median_ms"), med(rate, "json_median_ms")
    change = loaded / idle - 1.0 if idle and loaded else None
    return {"peers": peers, "gateways": peers, "phase_s": phase, "rate": rate,
            "phases": phases, "json_median_ms_idle": idle, "json_median_ms_loaded": loaded,
            "ratio": loaded / idle if idle and loaded else None,
            "json_median_change": change,
            "target": "JSON probe p50 moves by < 10 % between 0 and 100 scrapes/s",
            "target_met": None if change is None else abs(change) < 0.10}


def run(quick: bool) -> dict[str, Any]:
    """The bench/run.py section: 200 + 200, 0 and 100 scrapes/s in alternating phases."""
    return measure(200, 15.0 if quick else 30.0, 1 if quick else 2, 100.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--phase", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    result = measure(args.peers, args.phase, args.rounds, args.rate)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON median idle {result['json_median_ms_idle']} ms, at {args.rate:g} scrapes/s "
          f"{result['json_median_ms_loaded']} ms, ratio {result['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
