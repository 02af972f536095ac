"""Issue #15 items without a real-process test elsewhere: each drives the real daemon or CLI
against real etcd and the gateway simulator."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, WatchdogProcess, gateway_sim_process
from tests.helpers import sample, wait_until
from watchdog.etcd.client import SPEAKS_TLS
from watchdog.lab.cluster import EtcdCluster, free_port
from watchdog.lab.storm import Storm

pytestmark = pytest.mark.integration
KEY = "issue15-admin-key"


def metric(proc: WatchdogProcess, name: str, **labels: str) -> float | None:
    return sample(proc.metrics(), name, **labels)


def findings(proc: WatchdogProcess) -> dict[str, dict[str, Any]]:
    status, body = proc.get("/api/v1/findings")
    assert status == 200, body
    return {f["id"]: f for f in json.loads(body)["findings"]}


def test_every_poll_failing_is_no_success_and_the_log_says_use_https(
    etcd_tls: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    """http:// to a TLS member: every poll fails, so no etcd run counts as a success, and
    the reason says what to change."""
    wrong = etcd_tls.endpoints[0].replace("https://", "http://")
    proc = run_watchdog(write_config({"etcd": {"endpoints": [wrong], "interval": "300ms",
                                               "timeout": "250ms"}}))
    wait_until(lambda: (metric(proc, "watchdog_job_runs_total", task="etcd",
                               outcome="failed") or 0) >= 3, timeout=15, what="failed runs")
    assert not metric(proc, "watchdog_job_runs_total", task="etcd", outcome="success")
    status, page = proc.get("/")
    assert status == 200 and SPEAKS_TLS in page
    assert proc.stop() == 0
    assert f"peer down peer={wrong} reason=tls first_poll=true" in proc.output()


def test_reload_keeps_open_findings_and_unchanged_series(
    etcd_single: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    peer = etcd_single.members[0].name
    data = {"etcd": {"endpoints": etcd_single.endpoints, "interval": "300ms",
                     "timeout": "250ms"}, "tripwire": {"warmup": "1h"}}
    config = write_config(data)
    proc = run_watchdog(config)
    key = f"warmup:{peer}"
    opened = wait_until(lambda: findings(proc).get(key), timeout=15, what="warm-up finding")
    probes = metric(proc, "watchdog_etcd_probe_duration_seconds_count", peer=peer, api="json",
                    op="range")
    assert probes
    config.write_text(yaml.safe_dump({**data, "smoke": {"interval": "1m"}}))
    proc.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: "config reloaded" in proc.output(), timeout=15, what="reload")
    assert metric(proc, "watchdog_config_last_reload_successful") == 1
    after = findings(proc)[key]
    assert after["opened_at"] == opened["opened_at"], "the open finding was kept, not reopened"
    later = metric(proc, "watchdog_etcd_probe_duration_seconds_count", peer=peer, api="json",
                   op="range")
    assert later is not None and later >= probes, "a counter of an unchanged peer never resets"
    assert proc.stop() == 0


def test_a_refused_canary_write_asks_nobody_to_delete_it_by_hand(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    """etcd gone: the admin API answers the canary write 503, nothing was stored, and
    neither the gate nor the daemon says "could not be deleted" or "by hand"."""
    cluster = make_cluster(size=1, name_prefix="refused")
    with gateway_sim_process(tmp_path, "--etcd", cluster.endpoints[0], "--name", "gw-1",
                             "--admin-key", KEY, "--workers", "1",
                             "--etcd-timeout", "1") as sim:
        (tmp_path / "key").write_text(KEY + "\n")
        (tmp_path / "key").chmod(0o600)
        config = write_config({
            "etcd": {"endpoints": cluster.endpoints, "interval": "1s", "timeout": "800ms"},
            "gateways": [{"name": "gw-1", "admin_url": sim["admin_url"],
                          "data_url": sim["data_url"], "admin_key_file": str(tmp_path / "key")}],
            "smoke": {"interval": "1s", "timeout": "3s"}})
        cluster.kill_member(0)
        gate = subprocess.run(
            [sys.executable, "-m", "watchdog", "smoke", "--config", str(config), "--timeout",
             "5s", "--output", "json"], capture_output=True, text=True, timeout=30, cwd=REPO)
        assert gate.returncode == 1, gate.stdout + gate.stderr
        (verdict,) = json.loads(gate.stdout)["gateways"]
        assert (verdict["phase"], verdict["reason"]) == ("write", "http"), verdict
        assert "503" in verdict["message"] and verdict["canary_deleted"] is None, verdict
        assert "could not be deleted" not in gate.stdout and "by hand" not in gate.stdout

        proc = run_watchdog(config)
        wait_until(lambda: "smoke failed gateway=gw-1" in proc.output(), timeout=20,
                   what="the daemon's smoke failing")
        time.sleep(2.5)  # two more periodic probes
        assert proc.stop() == 0
        log = proc.output()
        assert "smoke failed gateway=gw-1" in log and "503" in log, log
        assert "could not be deleted" not in log and "by hand" not in log, log


async def test_config_lag_comes_from_a_healthy_peer_while_one_json_gateway_stalls(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    """etcd 3.5.1 over TLS, 263 watches on member 0: its JSON gateway stalls while its
    /metrics page answers. The gateway's config lag is still read, through member 1."""
    cluster = make_cluster(size=2, tls=True, name_prefix="lag")
    assert cluster.tls_files is not None
    ca = str(cluster.tls_files.ca_file)
    stalled, healthy = cluster.members[0], cluster.members[1]
    route = {"id": "r1", "uri": "/r1", "plugins": {"redirect": {"uri": "/ok"}}}
    await asyncio.to_thread(cluster.put, "/apisix/routes/r1", json.dumps(route))
    storm = Storm(stalled.client_url, ca_file=ca)
    try:
        await storm.start(263)
        with gateway_sim_process(tmp_path, "--etcd", healthy.client_url, "--ca-file", ca,
                                 "--name", "gw-1", "--admin-key", KEY, "--workers", "1") as sim:
            config = write_config({
                "etcd": {"endpoints": [stalled.client_url, healthy.client_url],
                         "tls": {"ca_file": ca}, "interval": "1s", "timeout": "800ms"},
                "gateways": [{"name": "gw-1", "admin_url": sim["admin_url"],
                              "metrics_url": sim["metrics_url"]}],
                "smoke": {"interval": 0}})
            proc = run_watchdog(config)

            def stalled_but_lag_read() -> bool:
                text = proc.metrics()
                json_down = (sample(text, "watchdog_etcd_probe_failures_total",
                                    peer=stalled.name, api="json", op="range",
                                    reason="timeout") or 0) >= 2
                return json_down and sample(text, "watchdog_etcd_peer_up",
                                            peer=stalled.name) == 1.0
            await asyncio.to_thread(wait_until, stalled_but_lag_read, 30, 0.3,
                                    "member 0's JSON gateway stalled, its /metrics answering")
            await asyncio.sleep(1.5)  # polls made while the stall holds
            assert metric(proc, "watchdog_gateway_config_lag_revisions", gateway="gw-1") == 0.0
            assert proc.stop() == 0
    finally:
        await storm.stop()


def watchdog_cli(*args: str, cwd: Path, user: int | None = None
                 ) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "watchdog", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_CONFIG"}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_gateway_timeouts_clamp_to_their_interval_or_are_named(tmp_path: Path) -> None:
    gw = {"name": "gw-1", "admin_url": "http://127.0.0.1:9180", "data_url":
          "http://127.0.0.1:9080", "interval": "1s"}
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump({"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                                      "gateways": [gw], "state_dir": str(tmp_path / "s")}))
    clamped = watchdog_cli("check-config", str(config), cwd=tmp_path)
    assert clamped.returncode == 0 and "every 1s (timeout 800ms)" in clamped.stdout, clamped
    config.write_text(yaml.safe_dump({"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                                      "gateways": [{**gw, "timeout": "1s"}]}))
    named = watchdog_cli("check-config", str(config), cwd=tmp_path)
    assert named.returncode == 2 and "gateways[0].timeout: 1s is not shorter than the " \
        "interval 1s" in named.stderr, named


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run as another user")
def test_run_as_another_user_names_the_unreadable_ca_file_and_exits_2() -> None:
    shared = Path(tempfile.mkdtemp(prefix="watchdog-issue15-"))
    try:
        shared.chmod(0o755)  # pytest's tmp_path is private to root
        (shared / "ca.pem").write_text("root-only\n")
        (shared / "ca.pem").chmod(0o400)  # root can read it, nobody cannot
        (shared / "state").mkdir(mode=0o777)
        config = shared / "c.yml"
        config.write_text(yaml.safe_dump({
            "etcd": {"endpoints": ["https://127.0.0.1:2379"], "tls": {"ca_file": "ca.pem"}},
            "state_dir": "state"}))
        config.chmod(0o644)
        done = watchdog_cli("run", "--config", str(config), "--web.listen-address",
                            f"127.0.0.1:{free_port()}", cwd=shared, user=65534)
        assert done.returncode == 2, done
        assert f"etcd.tls.ca_file: cannot read {shared / 'ca.pem'}: Permission denied" in \
            done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "listen" not in done.stderr, done.stderr
    finally:
        shutil.rmtree(shared)
