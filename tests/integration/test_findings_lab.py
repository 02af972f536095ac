"""Findings on a real lab: real etcd, simulated gateways with their fault modes, a watch
storm. For each fault, `watchdog doctor` names it (exit 1, subject and fix in the text), the
daemon's /api/v1/findings and status-page banner say the same, and the finding clears once
the fault is gone. A healthy lab gives no warning or critical finding and doctor exits 0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO, WatchdogProcess
from tests.helpers import all_samples, wait_until
from tests.integration.test_smoke import (
    SimHost,
    admin_put_route,
    gateway_entry,
    key_file,
    sims,  # noqa: F401 - the fixture
)
from tests.integration.test_status_page import shoot
from watchdog.lab.cluster import EtcdCluster
from watchdog.lab.gateway_sim import GatewaySim
from watchdog.lab.sim_etcd import b64

pytestmark = pytest.mark.integration

ADMIN_KEY = "lab-findings-admin-key"
QUOTA = 8 * 2**20  # small enough to fill in a second, large enough for the lab's config


def doctor(config: Path, *args: str, duration: str = "4s") -> tuple[int, str, dict[str, Any]]:
    """Run `watchdog doctor`: (exit code, its output, the JSON document with --output json)."""
    done = subprocess.run(
        [sys.executable, "-m", "watchdog", "doctor", "--config", str(config),
         "--duration", duration, *args],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    doc = json.loads(done.stdout) if "--output" in args and done.stdout else {}
    return done.returncode, done.stdout + done.stderr[-3000:], doc


def api_findings(proc: WatchdogProcess) -> dict[str, dict[str, Any]]:
    status, body = proc.get("/api/v1/findings")
    assert status == 200, body
    return {f["id"]: f for f in json.loads(body)["findings"]}


def severe(found: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(k for k, f in found.items() if f["severity"] != "info")


def leaked_past(proc: WatchdogProcess, factor: float) -> bool:
    """Watch streams over all peers exceed `factor` x the expected fan-out."""
    text = proc.metrics()
    streams = sum(v for _, v in all_samples(text, "watchdog_etcd_watch_streams"))
    expected = sum(v for _, v in all_samples(text, "watchdog_etcd_expected_watch_streams"))
    return expected > 0 and streams > factor * expected


def banner(proc: WatchdogProcess) -> str:
    status, page = proc.get("/")
    assert status == 200
    return page.split('class="banner', 1)[1].split("</div></div>", 1)[0]


def expect_named(proc: WatchdogProcess, config: Path, finding: str, subject: str, fix: str,
                 *doctor_args: str, timeout: float = 20.0,
                 banner_any: tuple[str, ...] = ()) -> None:
    """doctor names `finding` on `subject` with its fix and exits 1; so does the daemon."""
    key = f"{finding}:{subject}"
    rc, text, _ = doctor(config, *doctor_args)
    assert rc == 1, text + "\n" + proc.get("/api/v1/findings")[1] + "\n" + "\n".join(
        line for line in proc.metrics().splitlines()
        if line.startswith(("watchdog_gateway_admin_success", "watchdog_etcd_probe_success",
                            "watchdog_gateway_ready", "watchdog_gateway_config_lag")))
    assert f"{finding} " in text and f"={subject}" in text and fix in text, text
    found = wait_until(lambda: (f := api_findings(proc)) and key in f and f, timeout=timeout,
                       interval=0.3, what=f"{key} in /api/v1/findings")
    assert fix in found[key]["fix"]
    # The banner shows the worst open finding (the oldest among equals): where several
    # subjects have the same critical finding, any of them is the right banner.
    named = banner_any or (subject,)
    wait_until(lambda: any(s in banner(proc) for s in named), timeout=10, interval=0.3,
               what=f"{' or '.join(named)} in the banner")


def expect_cleared(proc: WatchdogProcess, finding: str, subject: str,
                   timeout: float = 30.0) -> None:
    key = f"{finding}:{subject}"
    wait_until(lambda: key not in api_findings(proc), timeout=timeout, interval=0.3,
               what=f"{key} to clear")


def restart(host: SimHost, sim: GatewaySim, faults: set[str]) -> GatewaySim:
    """Stop a simulated gateway and start it again on the same ports with `faults` (a pod
    restart: APISIX's init-sync hang happens at start)."""
    host.call(sim.stop())
    host.sims.remove(sim)
    ports = {f"{kind}_port": urlsplit(getattr(sim, f"{kind}_url")).port
             for kind in ("admin", "data", "status", "metrics")}
    new = GatewaySim(replace(sim.config, faults=set(faults), **ports))
    host.call(new.start())
    host.sims.append(new)
    return new


@pytest.fixture
def lab(sims: SimHost, make_cluster: Callable[..., EtcdCluster],  # noqa: F811
        write_config: Callable[..., Path], run_watchdog: Callable[..., WatchdogProcess],
        tmp_path: Path) -> Iterator[tuple[EtcdCluster, SimHost, Path, WatchdogProcess]]:
    cluster = make_cluster(size=3, name_prefix="fd",
                           extra_args=("--quota-backend-bytes", str(QUOTA)))
    keys = key_file(tmp_path, ADMIN_KEY)
    # gw-2 leaks fast under its watch-leak fault: a stream every 0.25 s.
    gws = [sims.start(cluster, name, ADMIN_KEY, workers=2, leak_interval=0.5)
           for name in ("gw-1", "gw-2")]
    timing = {"interval": "1s", "timeout": "800ms", "workers": 2, "sync_mode": "modern"}
    config = write_config({
        "etcd": {"endpoints": cluster.endpoints, "interval": "1s", "timeout": "800ms"},
        "gateways": [gateway_entry(gw, keys, **timing) for gw in gws],
        "smoke": {"interval": "2s", "timeout": "2s"},
    })
    proc = run_watchdog(config)
    proc.wait_ready(timeout=30)
    yield cluster, sims, config, proc


@pytest.mark.fault(
    "gateway admin API slowed to 2 s while etcd answers fast (lab)",
    reports="finding `gateway_admin_leak` on gw-1 with the fix `restart gateway gw-1`: doctor exit "
            "1, `/api/v1/findings`, the banner; cleared once the fault is off",
    within="20 s; cleared in 30 s (asserted)")
@pytest.mark.fault(
    "gateway restarted into an initial-sync hang (lab)",
    reports="finding `init_sync_hang` on gw-1 (fix: pin a known-good APISIX release); cleared once "
            "the gateway syncs",
    within="20 s; cleared in 30 s (asserted)")
@pytest.mark.fault(
    "gateway that stops applying etcd events while another writes a route (lab)",
    reports="finding `stale_config` on gw-1 (doctor with `--smoke`); cleared once it applies again",
    within="20 s; cleared in 30 s (asserted)")
@pytest.mark.fault(
    "an etcd-adapter shim that drops writes (lab)",
    reports="finding `shim_drops_writes` on gw-1, naming the same real etcd (doctor with `--smoke`)",
    within="20 s; cleared in 30 s (asserted)")
@pytest.mark.fault(
    "a gateway leaking watches on every reconnect (lab)",
    reports="finding `watch_surge` on etcd with the fix to restart the gateway; cleared after the "
            "restart",
    within="20 s once past 2.5x the fan-out; cleared in 30 s (asserted)")
@pytest.mark.fault(
    "one of three members killed (lab)",
    reports="findings `peer_down` on fd-2 and `quorum_at_risk`; cleared after the restart",
    within="20 s; cleared in 30 s (asserted)")
@pytest.mark.fault(
    "etcd over its DB quota (NOSPACE), then compacted, defragmented and disarmed (lab)",
    reports="finding `db_quota` on the members with the fix `alarm disarm`; cleared on each member "
            "after the disarm",
    within="20 s; cleared in 30 s (asserted)")
def test_lab_faults_are_named_and_clear(
        lab: tuple[EtcdCluster, SimHost, Path, WatchdogProcess], tmp_path: Path) -> None:
    cluster, host, config, proc = lab
    gw1, gw2 = host.sims

    # Healthy: no warning or critical finding over many polls, and doctor exits 0.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert severe(api_findings(proc)) == [], api_findings(proc)
        time.sleep(0.5)
    rc, text, _ = doctor(config)
    assert rc == 0, text
    assert 'class="banner ok-bg"' in proc.get("/")[1]

    # slow-admin: gw-1's admin calls time out while etcd answers fast.
    host.set_faults(gw1, {"slow-admin"}, admin_delay=2.0)
    expect_named(proc, config, "gateway_admin_leak", "gw-1", "restart gateway gw-1")
    host.set_faults(gw1, set())
    expect_cleared(proc, "gateway_admin_leak", "gw-1")

    # init-hang: the gateway restarts and hangs in its first sync (not ready, 404s).
    gw1 = restart(host, gw1, {"init-hang"})
    expect_named(proc, config, "init_sync_hang", "gw-1", "pin a known-good APISIX release")
    if shutil.which("chromium"):
        shoot(proc.url + "/", tmp_path / "p-hang", "status-gateway-hang.png")
    host.set_faults(gw1, set())
    expect_cleared(proc, "init_sync_hang", "gw-1")

    # stale: gw-1 stops applying events; a route written through gw-2 leaves it behind.
    host.set_faults(gw1, {"stale"})
    assert admin_put_route(gw2, ADMIN_KEY, "findings-stale", "/findings/stale") in (200, 201)
    expect_named(proc, config, "stale_config", "gw-1", "restart gateway gw-1", "--smoke")
    host.set_faults(gw1, set())
    expect_cleared(proc, "stale_config", "gw-1")

    # shim: writes accepted, never seen; doctor needs --smoke to write its canary.
    host.set_faults(gw1, {"shim"})
    expect_named(proc, config, "shim_drops_writes", "gw-1", "same real etcd", "--smoke")
    host.set_faults(gw1, set())
    expect_cleared(proc, "shim_drops_writes", "gw-1")

    # A watch leak: gw-2 reconnects without closing its old watches; restarting it is the fix.
    host.set_faults(gw2, {"watch-leak"})
    # doctor is a fresh process polling for a few seconds: let the leak pass twice the
    # expected fan-out first (on a loaded machine it may take longer than doctor's run).
    wait_until(lambda: leaked_past(proc, 2.5), timeout=30, interval=0.5,
               what="leaked watch streams past 2.5x the expected fan-out")
    expect_named(proc, config, "watch_surge", "etcd", "restart it")
    gw2 = restart(host, gw2, set())
    expect_cleared(proc, "watch_surge", "etcd")

    # A killed member.
    cluster.kill_member(2)
    expect_named(proc, config, "peer_down", "fd-2", "restart it")
    assert "quorum_at_risk:etcd" in api_findings(proc)
    cluster.restart_member(2)
    expect_cleared(proc, "peer_down", "fd-2")

    # A quota alarm: fill the DB past its quota, then compact, defragment and disarm.
    blob = b64("x" * 512 * 1024)
    for i in range(40):
        try:
            cluster.request("/v3/kv/put", {"key": b64(f"/filler/{i}"), "value": blob})
        except OSError:
            break  # NOSPACE: etcd refuses writes now
    # Every member is over the same quota (and etcd raises NOSPACE cluster-wide).
    expect_named(proc, config, "db_quota", "fd-0", "alarm disarm",
                 banner_any=("fd-0", "fd-1", "fd-2"))
    answer = cluster.request("/v3/kv/deleterange", {"key": b64("/filler/"),
                                                    "range_end": b64("/filler0")})
    revision = int(answer["header"]["revision"])  # type: ignore[index]
    cluster.request("/v3/kv/compaction", {"revision": revision, "physical": True})
    for member in range(3):
        cluster.request("/v3/maintenance/defragment", {}, member=member, timeout=30)
    alarms = cluster.request("/v3/maintenance/alarm", {"action": "GET"}).get("alarms") or []
    assert alarms, "the quota was exceeded, so etcd raised NOSPACE"
    for alarm in alarms:  # type: ignore[union-attr]
        cluster.request("/v3/maintenance/alarm", {"action": "DEACTIVATE", **alarm})
    for member in range(3):
        expect_cleared(proc, "db_quota", f"fd-{member}")


@pytest.mark.fault(
    "nothing listens on the only etcd endpoint (`watchdog doctor`)",
    reports="JSON findings `peer_down` and `quorum_lost`, status critical, exit 1; no state "
            "written; a bad duration or config exits 2",
    within="a 2 s doctor run")
def test_doctor_json_and_exit_codes(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """Nothing listens on the endpoint: doctor's JSON names the peer down (exit 1) and leaves
    no state behind; a bad duration or config exits 2."""
    from watchdog.lab.cluster import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    config = write_config({"etcd": {"endpoints": [endpoint], "interval": "500ms",
                                    "timeout": "300ms", "discover_members": False}})
    rc, text, doc = doctor(config, "--output", "json", duration="2s")
    assert rc == 1, text
    found = {f["id"]: f for f in doc["findings"]}
    assert doc["exit_code"] == 1 and doc["status"] == "critical"
    assert {f"peer_down:{endpoint}", "quorum_lost:etcd"} <= set(found), found
    assert found[f"peer_down:{endpoint}"]["subject"] == {"kind": "peer", "name": endpoint}
    assert not (tmp_path / "state").exists(), "doctor writes no state"
    assert doctor(config, duration="soon")[0] == 2
    bad = write_config({"etcd": {"endpoints": [endpoint], "bogus": 1}}, name="bad.yml")
    rc, text, _ = doctor(bad)
    assert rc == 2 and "etcd.bogus" in text
