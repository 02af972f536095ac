"""Which rules in alerts/ fire over /metrics pages scraped from a live run (promtool).

The pages are turned into a `promtool test rules` file: the last page's series carried on
for RUN_FOR at a 15 s scrape interval (counters and histograms growing at the rate per second
they grew over the pages, gauges at their last value), so every rule's `for` and range
window is covered. Only the metrics some rule selects are given (the others cannot make
one fire). Every alert of every rule file is then expected to stay silent;
promtool names each one that fires instead.
"""

from __future__ import annotations

import functools
import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.promql import metric_names

ALERTS = Path(__file__).resolve().parent.parent / "alerts"
RUN_FOR = 20 * 60.0  # longer than any rule's `for` (15m) plus its range (5m): see alerts/
EVAL_AT = ("10m", "20m")
STEP = 15.0  # seconds between promtool samples: Prometheus's usual scrape interval
CUMULATIVE = {"counter", "histogram", "summary"}


@dataclass
class Target:
    """One scrape target's pages, oldest first, and the labels Prometheus would add."""

    job: str
    instance: str
    pages: list[str] = field(default_factory=list)


def rule_files() -> list[Path]:
    return sorted(ALERTS.glob("*.rules.yml"))


def alert_names() -> list[str]:
    names: set[str] = set()
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(r["alert"] for r in group["rules"] if "alert" in r)
    return sorted(names)


@functools.cache
def selected_metrics() -> frozenset[str]:
    """Every metric name a rule's expression selects (others cannot make a rule fire)."""
    names: set[str] = {"up"}
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                names |= metric_names(rule["expr"])
    return frozenset(names)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _selector(name: str, labels: dict[str, str]) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return name + "{" + ",".join(f"{k}={quote(v)}" for k, v in sorted(labels.items())) + "}"


def input_series(targets: Sequence[Target], gap: float) -> list[dict[str, str]]:
    """promtool input series, STEP apart, carrying on what the targets' pages (taken `gap`
    seconds apart) showed: the series of the last page, a counter growing at the rate it
    grew over the pages, a gauge at its last value."""
    steps = int(RUN_FOR / STEP)
    wanted = selected_metrics()
    out: list[dict[str, str]] = []
    for target in targets:
        first: dict[str, tuple[int, float]] = {}
        last: dict[str, float] = {}
        kinds: dict[str, str] = {}
        for i, page in enumerate(target.pages):
            last = {}
            for family in text_string_to_metric_families(page):
                for s in family.samples:
                    if s.name not in wanted:
                        continue
                    key = _selector(s.name, {**s.labels, "job": target.job,
                                             "instance": target.instance})
                    kinds[key] = family.type
                    first.setdefault(key, (i, s.value))
                    last[key] = s.value
        last[_selector("up", {"job": target.job, "instance": target.instance})] = 1.0
        end = len(target.pages) - 1
        for key, value in last.items():
            since, was = first.get(key, (end, value))
            if not math.isfinite(value):
                values = " ".join([_number(value)] * (steps + 1))
            else:
                rate = 0.0
                if kinds.get(key) in CUMULATIVE and since < end and math.isfinite(was):
                    rate = (value - was) / ((end - since) * gap) * STEP
                sign = "+" if rate >= 0 else "-"
                values = f"{_number(value)}{sign}{_number(abs(rate))}x{steps}"
            out.append({"series": key, "values": values})
    return out


def firing(targets: Sequence[Target], gap: float, promtool: str, workdir: Path) -> list[str]:
    """The alerts of alerts/ that fire over the pages (empty: none), by name and labels."""
    doc = {
        "rule_files": [str(p) for p in rule_files()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": f"{STEP:g}s",
            "input_series": input_series(targets, gap),
            "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": []}
                                for at in EVAL_AT for name in alert_names()],
        }],
    }
    path = workdir / "healthy-run.test.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1 << 20))
    done = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)
    if done.returncode == 0:
        return []
    fired = re.findall(r"alertname: (\w+), time: (\S+),\s*exp:\[\],\s*got:(\[.*?\])\s*$",
                       done.stdout + done.stderr, re.M | re.S)
    if not fired:
        raise RuntimeError(f"promtool failed on {path}: {(done.stdout + done.stderr)[-2000:]}")
    return [f"{name} at {at}: " + "; ".join(re.findall(r"Labels:(\{[^}]*\})", got))
            for name, at, got in fired]
