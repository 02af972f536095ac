"""Section 6: the existing micro-benchmarks, run as they are (`--json`) and folded in.

- bench/bench_parse.py: watchdog's filtered etcd /metrics parser vs prometheus_client's full
  parser, per fixture page (CPU time, medians);
- bench/bench_tripwire.py: trip-wire cost per poll cycle for 1,000 peers x 2 signals, and
  detection latency in poll intervals after a surge.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import BENCH, PYTHON, REPO


def run_script(name: str, args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    done = subprocess.run([PYTHON, str(BENCH / name), *args, "--json", str(out)],
                          capture_output=True, text=True, cwd=str(REPO), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{name} exited {done.returncode}: {done.stderr[-800:]}")
    return json.loads(out.read_text())


def run(quick: bool) -> dict[str, Any]:
    parse_args = ["--runs", "100", "--full-runs", "10"] if quick else []
    trip_args = ["--trials", "100"] if quick else []
    with tempfile.TemporaryDirectory(prefix="wdbench-micro-") as tmp:
        parse = run_script("bench_parse.py", parse_args, Path(tmp) / "parse.json", 300)
        trip = run_script("bench_tripwire.py", trip_args, Path(tmp) / "trip.json", 300)
    pages = []
    for p in parse["pages"]:
        pages.append({
            "page": p["page"], "kb": p["bytes"] / 1024, "lines": p["lines"],
            "full_ms": p["full_median_ns"] / 1e6, "filtered_ms": p["fast_median_ns"] / 1e6,
            "filtered_bytes_ms": p["fast_bytes_median_ns"] / 1e6,
            "ratio": p["full_median_ns"] / p["fast_median_ns"],
        })
    cost = trip["cost"]
    latency = [{k: row[k] for k in ("surge", "noise", "trials", "within_1", "p50", "p95", "max",
                                    "missed_within_hour")} for row in trip["latency"]]
    return {
        "parse": {"clock": parse["clock"], "runs": parse["runs"], "full_runs": parse["full_runs"],
                  "pages": pages,
                  "ratio_geomean": statistics.geometric_mean([p["ratio"] for p in pages]),
                  "slowest_filtered_ms": max(p["filtered_bytes_ms"] for p in pages)},
        "tripwire": {
            "interval_s": trip["interval"], "peers": cost["peers"],
            "observes_per_cycle": cost["observes_per_cycle"],
            "warmup_cycle_ms": cost["warmup_cycle"], "armed_cycle_ms": cost["armed_cycle"],
            "per_observe_us": cost["per_observe_us"], "state_bytes": cost["state_bytes"],
            "save_ms": cost["save_ms"], "load_ms": cost["load_ms"],
            "latency": latency,
            "ramps": trip["ramps"],
        },
    }
