"""Benchmark of the tripwire: poll-cycle cost, detection latency and the adaptation rate.

    python bench/bench_tripwire.py [--peers 1000] [--trials 400] [--json PATH]

1. Cost: one observe() per peer and signal (1,000 peers x 2 signals by default; integer counts,
   +/-10 % noise) per 15 s poll cycle, during warm-up and over the hour after it (cycles where
   a minute bucket closes cost the most).
   Also the cost of saving and restoring the whole bank (to_dict + JSON, JSON + load_dict).
2. Detection latency: after warm-up on noisy traffic, a surge starts at a random moment between
   polls; the number of poll intervals until the wire reports `tripped`.
3. Adaptation: linear growth to N x over D hours; does the wire trip, and when? Growth that
   trips is treated as a leak, growth that does not is learned as the new normal.
Runs on a fake clock: no sleeping, no freezegun.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.tripwire import SIGNALS, TripwireBank, TripwireSettings, Wire

INTERVAL = 15.0
START = 1_700_000_040.0  # minute-aligned


class FakeClock:
    """A clock the benchmark moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def bench_cost(peers: int, seed: int) -> dict[str, Any]:
    """Milliseconds per poll cycle for `peers` x 2 signals, during and after warm-up."""
    settings = TripwireSettings()
    clock = FakeClock()
    bank = TripwireBank(settings, clock, monotonic=clock)
    rng = random.Random(seed)
    levels = {f"etcd-{i}": rng.uniform(20, 2000) for i in range(peers)}

    def cycle() -> float:
        started = time.perf_counter()
        for peer, level in levels.items():
            for signal in SIGNALS:
                bank.observe(peer, signal, round(level * rng.uniform(0.9, 1.1)))
        elapsed = time.perf_counter() - started
        clock.now += INTERVAL
        return elapsed * 1000

    cycles_per_hour = round(3600 / INTERVAL)
    gc.collect()
    warmup = [cycle() for _ in range(cycles_per_hour)]
    armed = [cycle() for _ in range(cycles_per_hour)]

    started = time.perf_counter()
    payload = json.dumps(bank.to_dict())
    save_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    fresh = TripwireBank(settings, clock, monotonic=clock)
    warnings = fresh.load_dict(json.loads(payload), max_age=3600)
    load_ms = (time.perf_counter() - started) * 1000
    assert not warnings, warnings

    def summary(samples: list[float]) -> dict[str, float]:
        return {
            "mean_ms": statistics.fmean(samples),
            "p50_ms": percentile(samples, 50),
            "p95_ms": percentile(samples, 95),
            "max_ms": max(samples),
        }

    return {
        "peers": peers,
        "observes_per_cycle": peers * len(SIGNALS),
        "warmup_cycle": summary(warmup),
        "armed_cycle": summary(armed),
        "armed_cycles_ms": armed,
        "per_observe_us": statistics.fmean(armed) * 1000 / (peers * len(SIGNALS)),
        "state_bytes": len(payload),
        "save_ms": save_ms,
        "load_ms": load_ms,
    }


def one_surge(rng: random.Random, surge: float, noise: float, limit: int) -> int | None:
    """Warm a wire up, surge at a random moment; polls until tripped (None: not in `limit`)."""
    settings = TripwireSettings()
    clock = FakeClock(START + rng.uniform(0, INTERVAL))  # polls at a random phase
    wire = Wire(settings, clock)
    level = rng.uniform(50, 1000)

    def sample(factor: float) -> bool:
        state = wire.observe(round(level * factor * rng.uniform(1 - noise, 1 + noise)))
        clock.now += INTERVAL
        return state.tripped

    for _ in range(round(settings.warmup / INTERVAL)):
        sample(1.0)
    surge_at = clock.now + rng.uniform(0, 3600)
    while clock.now < surge_at:
        if sample(1.0):
            raise AssertionError("tripped on normal traffic")
    for polls in range(1, limit + 1):
        if sample(surge):
            return polls
    return None


def detection_latency(surge: float, noise: float, trials: int, seed: int) -> dict[str, Any]:
    """Poll intervals from a surge starting between polls to the first `tripped` state."""
    rng = random.Random(seed)
    found = [one_surge(rng, surge, noise, limit=240) for _ in range(trials)]  # an hour of polls
    latencies = [polls for polls in found if polls is not None]
    return {
        "surge": surge,
        "noise": noise,
        "trials": trials,
        "missed_within_hour": trials - len(latencies),
        "within_1": sum(1 for n in latencies if n == 1) / trials,
        "p50": percentile(latencies, 50) if latencies else None,
        "p95": percentile(latencies, 95) if latencies else None,
        "max": max(latencies) if latencies else None,
        "latencies": latencies,
    }


def ramp(top: float, hours: float) -> dict[str, Any]:
    """Linear growth from 1x to `top` x over `hours`, then flat for a day; when does it trip?"""
    clock = FakeClock()
    wire = Wire(TripwireSettings(), clock)
    step = 60.0

    def value(elapsed: float) -> float:
        return 100.0 * (1 + (top - 1) * min(1.0, elapsed / (hours * 3600)))

    for _ in range(round(3600 / step)):
        wire.observe(100.0)
        clock.now += step
    start = clock.now
    while clock.now - start < (hours + 24) * 3600:
        elapsed = clock.now - start
        state = wire.observe(value(elapsed))
        if state.tripped:
            return {
                "top": top,
                "hours": hours,
                "tripped_after_h": elapsed / 3600,
                "ratio_at_trip": state.ratio,
            }
        clock.now += step
    return {"top": top, "hours": hours, "tripped_after_h": None, "final_steady": state.steady}


def main(argv: list[str] | None = None) -> int:
    """Run every part and print tables; --json writes the raw numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--json", type=Path, metavar="PATH", help="write raw numbers here")
    args = parser.parse_args(argv)

    print(f"python {platform.python_version()} on {platform.machine()}, {platform.system()}")
    cost = bench_cost(args.peers, args.seed)
    print(f"\n1. cost of one poll cycle: {cost['observes_per_cycle']} observe() calls")
    print(f"{'phase':<10} {'mean ms':>9} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for phase in ("warmup_cycle", "armed_cycle"):
        row = cost[phase]
        print(
            f"{phase.removesuffix('_cycle'):<10} {row['mean_ms']:>9.2f} {row['p50_ms']:>9.2f} "
            f"{row['p95_ms']:>9.2f} {row['max_ms']:>9.2f}"
        )
    print(
        f"per observe(): {cost['per_observe_us']:.2f} us; "
        f"state: {cost['state_bytes'] / 1e6:.2f} MB JSON, "
        f"to_dict+dumps {cost['save_ms']:.0f} ms, loads+load_dict {cost['load_ms']:.0f} ms"
    )

    print(f"\n2. detection latency, {INTERVAL:g} s polls, {args.trials} surges at random times")
    print(f"{'surge':>6} {'noise':>6} {'in 1':>7} {'p50':>5} {'p95':>5} {'max':>5} {'missed':>7}")
    latency = []
    for surge in (2.1, 2.5, 3.0):
        for noise in (0.0, 0.05, 0.10):
            row = detection_latency(surge, noise, args.trials, args.seed)
            latency.append(row)
            print(
                f"{surge:>5.1f}x {noise:>6.0%} {row['within_1']:>7.1%} {row['p50']!s:>5} "
                f"{row['p95']!s:>5} {row['max']!s:>5} {row['missed_within_hour']:>7}"
            )

    print("\n3. adaptation: linear growth from 1x to N x over D hours, then flat for a day")
    print(f"{'N':>5} {'D h':>5} {'tripped after':>14}")
    ramps = []
    for top in (2.1, 2.5, 3.0):
        for hours in (2, 4, 8, 12, 24, 48):
            row = ramp(top, hours)
            ramps.append(row)
            after = row["tripped_after_h"]
            shown = f"{after:.1f} h ({row['ratio_at_trip']:.2f}x)" if after else "never"
            print(f"{top:>4.1f}x {hours:>5} {shown:>14}")

    if args.json:
        raw = {"interval": INTERVAL, "cost": cost, "latency": latency, "ramps": ramps}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1))
        print(f"\nraw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
