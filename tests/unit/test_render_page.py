"""The /metrics page written straight from a snapshot: the series budget, and a page that
Prometheus' own tools accept.

Snapshots come from the real reducer fed with the results real jobs return
(`tests/fleet.py`); the page is checked with prometheus_client's text and OpenMetrics parsers
and with `promtool check metrics`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet import fleet_snapshot, series_per_target
from watchdog.metrics import SnapshotCollector, TaskRegistry
from watchdog.snapshot import Snapshot

# Names a member may carry: every character the formats must escape, and more.
AWKWARD = ['back\\slash', 'quo"te', 'new\nline', 'all \\"\n of them', 'ünïcødé', 'plain']


def render(snap: Snapshot, mirror: bool = False, openmetrics: bool = False) -> str:
    return SnapshotCollector(lambda: snap, lambda: mirror).render(snap, openmetrics)


@pytest.fixture(scope="module")
def fleet() -> Snapshot:
    # warm (steady states learned), every peer exposed, every gateway with status and metrics
    return fleet_snapshot(12, 12, warmup=0.0)


def test_series_budget_per_peer_and_per_gateway(fleet: Snapshot) -> None:
    peers, gateways = series_per_target(render(fleet))
    assert len(peers) == 12 and len(gateways) == 12
    print(f"\nper peer: {sorted(set(peers.values()))}, per gateway: "
          f"{sorted(set(gateways.values()))}")
    assert max(peers.values()) <= 40, peers
    assert max(gateways.values()) <= 15, gateways
    # the mirrored etcd histograms are the option that adds series
    mirrored, _ = series_per_target(render(fleet, mirror=True))
    assert all(mirrored[p] > peers[p] + 20 for p in peers)
    assert "watchdog_etcd_wal_fsync_duration_seconds_bucket" not in render(fleet)


def test_buckets_fit_the_timeout_and_reasons_appear_on_first_use(fleet: Snapshot) -> None:
    text = render(fleet)
    bounds = {float(le) for le in re.findall(r'_duration_seconds_bucket\{[^}]*le="([^"]+)"', text)}
    assert bounds == {0.05, 1.0, 2.5, float("inf")}  # the default timeout is 5 s
    families = {f.name: f for f in text_string_to_metric_families(text)}
    probe_reasons = {(s.labels["op"], s.labels["reason"], s.value > 0)
                     for s in families["watchdog_etcd_probe_failures"].samples}
    # timeouts of the range probes exist at 0 (the alerts read them); nothing else at 0
    assert ("range", "timeout", False) in probe_reasons
    assert all(reason == "timeout" or failed for _, reason, failed in probe_reasons)
    assert {op for op, _, _ in probe_reasons} == {"range"}
    admin = families["watchdog_gateway_admin_failures"].samples
    assert {s.labels["reason"] for s in admin if s.value == 0} == {"timeout"}
    assert any(s.labels["reason"] == "http" and s.value > 0 for s in admin)
    assert "watchdog_gateway_smoke_failures_total{" not in text  # no smoke failed yet


def test_label_values_are_escaped_and_families_declared_once() -> None:
    snap = fleet_snapshot(len(AWKWARD), 2, cycles=1, names=AWKWARD)
    text = render(snap)
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(types) == len(set(types)), "HELP/TYPE once per family"
    assert len(re.findall(r"^# HELP ", text, re.M)) == len(types)
    seen = {s.labels["peer"] for f in text_string_to_metric_families(text) for s in f.samples
            if f.name == "watchdog_etcd_peer_up"}
    assert seen == set(AWKWARD)
    # a family's samples are contiguous: a parser that met one again would make a second family
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
    om = render(snap, openmetrics=True) + "# EOF\n"
    om_seen = {s.labels["peer"] for f in parse_openmetrics(om) for s in f.samples
               if f.name == "watchdog_etcd_peer_up"}
    assert om_seen == set(AWKWARD)
    counters = {f.name: f.type for f in parse_openmetrics(om)}
    assert counters["watchdog_etcd_probe_failures"] == "counter"


def test_promtool_accepts_the_page() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus)")
    snap = fleet_snapshot(len(AWKWARD), 3, cycles=2, names=AWKWARD)
    tasks = TaskRegistry()
    tasks.job_runs.labels("gateway:gw-0", "success").inc()
    tasks.job_duration.labels("gateway:gw-0").set(0.25)
    for page in (render(snap, mirror=True), render(snap) + tasks.render(None)):
        done = subprocess.run([promtool, "check", "metrics"], input=page, text=True,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
