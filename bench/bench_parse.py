"""Benchmark: watchdog's filtered etcd /metrics parser against prometheus_client's full parser.

Usage: python bench/bench_parse.py [--runs N] [--full-runs N] [--clock process|perf]
                                   [--fixtures DIR] [--json PATH]

For every ``*.metrics`` page it reports the median time of ``parse_peer_metrics`` (on ``str``
and on ``bytes``, the form the daemon receives) and of fully consuming
``prometheus_client.parser.text_string_to_metric_families``, and their ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script from any directory

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from watchdog.etcd.promtext import parse_peer_metrics  # noqa: E402

CLOCKS: dict[str, Callable[[], int]] = {
    "process": time.process_time_ns,
    "perf": time.perf_counter_ns,
}


def default_fixtures() -> Path:
    """The etcd fixtures, found the way tests/conftest.py finds them."""
    shared = REPO.parent / "shared" / "fixtures" / "etcd"
    return shared if shared.exists() else REPO / "tests" / "fixtures" / "etcd"


def full_parse(text: str) -> None:
    for _ in text_string_to_metric_families(text):
        pass


def time_runs(fn: Callable[[], object], runs: int, clock: Callable[[], int]) -> list[int]:
    """Nanoseconds of each of ``runs`` calls, after one untimed warm-up call."""
    fn()
    gc.collect()
    samples = []
    for _ in range(runs):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def bench_page(path: Path, runs: int, full_runs: int, clock: Callable[[], int]) -> dict[str, Any]:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    fast = time_runs(lambda: parse_peer_metrics(text), runs, clock)
    fast_bytes = time_runs(lambda: parse_peer_metrics(raw), runs, clock)
    full = time_runs(lambda: full_parse(text), full_runs, clock)
    return {
        "page": path.name,
        "bytes": len(raw),
        "lines": text.count("\n"),
        "samples_read": parse_peer_metrics(text).samples_read,
        "fast_ns": fast,
        "fast_bytes_ns": fast_bytes,
        "full_ns": full,
        "fast_median_ns": statistics.median(fast),
        "fast_bytes_median_ns": statistics.median(fast_bytes),
        "full_median_ns": statistics.median(full),
    }


def print_table(results: list[dict[str, Any]], clock: str, runs: int, full_runs: int) -> None:
    python = platform.python_version()
    print(f"clock={clock}  median of {runs} fast / {full_runs} full runs  (Python {python})")
    header = (
        f"{'page':38} {'KB':>6} {'lines':>6} {'full ms':>8} {'fast ms':>8} "
        f"{'bytes ms':>8} {'ratio':>6} {'read':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = r["full_median_ns"] / r["fast_median_ns"]
        print(
            f"{r['page']:38} {r['bytes'] / 1024:6.1f} {r['lines']:6d} "
            f"{r['full_median_ns'] / 1e6:8.2f} {r['fast_median_ns'] / 1e6:8.3f} "
            f"{r['fast_bytes_median_ns'] / 1e6:8.3f} {ratio:5.0f}x {r['samples_read']:5d}"
        )
    ratios = [r["full_median_ns"] / r["fast_median_ns"] for r in results]
    worst = max(r["fast_bytes_median_ns"] for r in results) / 1e6
    print(
        f"ratio geometric mean {statistics.geometric_mean(ratios):.0f}x; "
        f"slowest fast parse {worst:.3f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed runs of the fast parser")
    parser.add_argument("--full-runs", type=int, default=30, help="timed runs of the full parser")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="process")
    parser.add_argument("--fixtures", type=Path, default=default_fixtures())
    parser.add_argument("--json", type=Path, help="write every raw timing to this file")
    args = parser.parse_args(argv)

    pages = sorted(args.fixtures.glob("*.metrics"))
    if not pages:
        parser.error(f"no *.metrics files in {args.fixtures}")
    clock = CLOCKS[args.clock]
    warm_up = pages[0].read_text()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # let CPU frequency and caches settle first
        parse_peer_metrics(warm_up)
    results = [bench_page(page, args.runs, args.full_runs, clock) for page in pages]
    print_table(results, args.clock, args.runs, args.full_runs)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "clock": args.clock,
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "runs": args.runs,
                    "full_runs": args.full_runs,
                    "pages": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
