"""The /metrics page written straight from a snapshot: the series budget, and a page that
Prometheus' own tools accept.

Snapshots come from the real reducer fed with the results real jobs return
(`tests/fleet.py`); the page is checked with prometheus_client's text and OpenMetrics parsers
and with `promtool check metrics`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.fleet import fleet_snapshot, series_per_target
from watchdog.config import Config, ConfigError, config_from_dict
from watchdog.daemon import Daemon
from watchdog.metrics import SnapshotCollector, TaskRegistry, make_registry
from watchdog.render import Renderer
from watchdog.snapshot import Snapshot

REPO = Path(__file__).resolve().parents[2]

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


# Default families read by neither a dashboard nor an alert, and why they stay.
NOT_ON_A_BOARD = {
    "watchdog_snapshot_cycle": "one per process: which snapshot a scrape shows",
    "watchdog_snapshot_timestamp_seconds": "one per process: the age of what /metrics shows",
    "watchdog_etcd_peer_poll_cycle": "the cycle of a peer's series: scrapes are checked "
                                     "against it (test_snapshot_consistency)",
    "watchdog_etcd_poll_failures": "only once a poll failed (no series at 0)",
}


def test_every_default_family_is_read_by_a_dashboard_or_an_alert(fleet: Snapshot) -> None:
    readers = "\n".join(p.read_text() for p in (
        *REPO.glob("dashboards/*.json"), *REPO.glob("alerts/*.rules.yml")))
    read = set(re.findall(r"watchdog_[a-z_]+", readers))
    families = {f.name for f in text_string_to_metric_families(render(fleet))}
    unread = {f for f in families
              if not {f, f + "_total", f + "_bucket"} & read and f not in NOT_ON_A_BOARD}
    assert not unread, f"series nobody reads: add them to a dashboard or alert, or drop them: " \
                       f"{sorted(unread)}"


def test_mirror_histograms_is_a_config_key_the_daemon_reads(tmp_path: Path) -> None:
    def config(value: object) -> Config:
        return config_from_dict({"etcd": {"endpoints": ["http://127.0.0.1:2379"],
                                          "mirror_histograms": value},
                                 "state_dir": str(tmp_path)})

    with pytest.raises(ConfigError) as err:
        config("maybe")
    assert any(key == "etcd.mirror_histograms" for key, _ in err.value.details)
    assert config_from_dict({"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                             "state_dir": str(tmp_path)}).etcd.mirror_histograms is False
    daemon = Daemon(config(True))
    try:
        writer = daemon.renderer.writers[0]
        assert isinstance(writer, SnapshotCollector) and writer.mirror_histograms() is True
        daemon.config = config(False)  # a reload swaps the config; the page follows it
        assert writer.mirror_histograms() is False
    finally:
        daemon.renderer.close()


async def test_the_whole_openmetrics_page_parses(fleet: Snapshot) -> None:
    registry, metrics = make_registry()
    metrics.add_job("etcd")
    metrics.job_runs.labels("smoke:gw-0", "timeout").inc()
    renderer = Renderer(registry, [SnapshotCollector(lambda: fleet), metrics.tasks],
                        lambda: fleet, min_interval=5.0)
    try:
        body, content_type = await renderer.scrape(openmetrics=True)
    finally:
        renderer.close()
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(body.decode())}
    assert families["watchdog_job_runs"].type == "counter"
    assert families["watchdog_etcd_probe_duration_seconds"].type == "histogram"
    assert "process_cpu_seconds" in families  # the live part, after the per-cycle part


def test_a_family_filter_leaves_out_whole_families(fleet: Snapshot) -> None:
    wanted = {"watchdog_etcd_watch_streams", "watchdog_etcd_probe_failures"}
    snap = fleet
    text = SnapshotCollector(lambda: snap, exported=lambda name: name in wanted).render(snap)
    assert {f.name for f in text_string_to_metric_families(text)} == wanted
    assert "watchdog_etcd_probe_failures_total{" in text
