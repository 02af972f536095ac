"""The real `watchdog run` process against real etcd members."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import all_samples, require_tool, sample, wait_until
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration


def etcd_config(cluster: EtcdCluster, **etcd: object) -> dict[str, object]:
    return {"etcd": {"endpoints": [cluster.endpoints[0]], "interval": "1s", "timeout": "500ms",
                     **etcd}}


def peer_up(proc: WatchdogProcess) -> dict[str, float]:
    return {labels["peer"]: value
            for labels, value in all_samples(proc.metrics(), "watchdog_etcd_peer_up")}


def test_three_members_discovered_from_one_endpoint(
    etcd_cluster3: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    proc = run_watchdog(write_config(etcd_config(etcd_cluster3)))
    proc.wait_ready()
    names = {m.name for m in etcd_cluster3.members}
    wait_until(lambda: peer_up(proc) == dict.fromkeys(names, 1.0), timeout=10, what="3 peers up")
    text = proc.metrics()
    leaders = [labels["peer"] for labels, v in all_samples(text, "watchdog_etcd_peer_is_leader")
               if v == 1]
    assert len(leaders) == 1 and leaders[0] in names
    for member in etcd_cluster3.members:
        info = all_samples(text, "watchdog_etcd_peer_info", peer=member.name)
        assert info and info[0][0]["version"] == "3.5.1"
        assert info[0][0]["endpoint"] == member.client_url
        assert sample(text, "watchdog_etcd_watch_streams", peer=member.name) is not None
        assert sample(text, "watchdog_etcd_client_connections", peer=member.name) is not None
    status, page = proc.get("/")
    assert status == 200 and all(name in page for name in names)


@pytest.mark.fault(
    "a member killed while polled every second",
    reports="`peer_up` 0 with probe failures counted; the others stay up; back to 1 after a restart",
    within="3 s; back in 10 s (asserted)")
def test_killed_member_goes_down_and_comes_back(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=3, name_prefix="kill")
    proc = run_watchdog(write_config(etcd_config(cluster)))
    proc.wait_ready()
    victim = cluster.members[2].name
    wait_until(lambda: peer_up(proc).get(victim) == 1.0, timeout=10, what="victim up")
    cluster.kill_member(2)
    # interval 1s: down within two poll intervals (plus the 0.5s probe deadline)
    wait_until(lambda: peer_up(proc).get(victim) == 0.0, timeout=3.0, interval=0.05,
               what="victim down within two intervals")
    assert proc.get("/healthz")[0] == 200
    text = proc.metrics()
    failures = sum(v for _, v in all_samples(text, "watchdog_etcd_poll_failures_total",
                                             peer=victim))
    assert failures >= 1
    assert sample(text, "watchdog_etcd_peer_up", peer=cluster.members[0].name) == 1.0
    cluster.restart_member(2)
    wait_until(lambda: peer_up(proc).get(victim) == 1.0, timeout=10, what="victim back")


def test_sigterm_exits_zero_and_flushes_state(
    etcd_single: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    config = etcd_config(etcd_single, discover_members=False)
    proc = run_watchdog(write_config({**config, "tripwire": {"warmup": "1s"}}))
    proc.wait_ready()
    wait_until(lambda: sample(proc.metrics(), "watchdog_etcd_watch_streams_steady_state")
               is not None, timeout=10, what="steady state learned")
    assert proc.stop(signal.SIGTERM) == 0
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["data"]["tripwire"]
    assert "stopped cleanly" in proc.output()
    assert "Traceback" not in proc.output()


def test_metrics_pass_promtool(
    etcd_tls: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    promtool = require_tool("promtool")
    assert etcd_tls.tls_files is not None
    config = etcd_config(etcd_tls, tls={"ca_file": str(etcd_tls.tls_files.ca_file)})
    proc = run_watchdog(write_config(config))
    proc.wait_ready()
    text = proc.metrics()
    assert sample(text, "watchdog_etcd_peer_up") == 1.0
    assert sample(text, "watchdog_etcd_stream_limit_exposed") == 1.0  # TLS on 3.5.1
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stdout + done.stderr


@pytest.mark.fault(
    "a hung member that is also a configured endpoint",
    reports="`peer_up` 0 with JSON and gRPC timeouts counted; discovery does not wait on it; "
            "`/metrics` < 0.5 s; the others keep polling each interval",
    within="4 s (asserted)")
def test_hung_member_times_out_without_stalling_the_others(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    import time

    from tests.helpers import http_get

    cluster = make_cluster(size=3, name_prefix="hang")
    # The hung member is a configured endpoint too: discovery must not wait on it.
    config = etcd_config(cluster)
    config["etcd"]["endpoints"] = [cluster.members[1].client_url, cluster.members[0].client_url]  # type: ignore[index]
    proc = run_watchdog(write_config(config))
    proc.wait_ready()
    hung = cluster.members[1].name
    cluster.pause_member(1)
    try:
        wait_until(lambda: peer_up(proc).get(hung) == 0.0, timeout=4, interval=0.05,
                   what="hung member down")
        def timeouts() -> float:
            return sample(proc.metrics(), "watchdog_etcd_probe_failures_total", peer=hung,
                          api="json", op="range", reason="timeout") or 0.0
        wait_until(lambda: timeouts() >= 1, timeout=4, what="JSON timeouts counted")
        grpc_timeouts = sample(proc.metrics(), "watchdog_etcd_probe_failures_total", peer=hung,
                               api="grpc", op="range", reason="timeout")
        assert grpc_timeouts and grpc_timeouts >= 1
        before = sample(proc.metrics(), "watchdog_job_runs_total", task="etcd", outcome="success")
        started = time.monotonic()
        status, _ = http_get(proc.url + "/metrics", timeout=2)
        assert status == 200 and time.monotonic() - started < 0.5
        time.sleep(2.5)
        text = proc.metrics()
        after = sample(text, "watchdog_job_runs_total", task="etcd", outcome="success")
        assert after is not None and before is not None and after - before >= 2, \
            "polls go on at the interval, each bounded by the deadline"
        for member in (cluster.members[0], cluster.members[2]):
            assert sample(text, "watchdog_etcd_peer_up", peer=member.name) == 1.0
            poll = sample(text, "watchdog_etcd_poll_duration_seconds", peer=member.name)
            assert poll is not None and poll < 0.5
    finally:
        cluster.resume_member(1)
    wait_until(lambda: peer_up(proc).get(hung) == 1.0, timeout=10, what="resumed member up")


@pytest.mark.fault(
    "a member added to and another removed from the cluster",
    reports="the new one is polled; the removed one leaves the output (`peer left`), no failures "
            "counted for it",
    within="10 s each (asserted)")
def test_members_joining_and_leaving_are_followed(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=2, name_prefix="churn")
    proc = run_watchdog(write_config(etcd_config(cluster)))
    proc.wait_ready()
    wait_until(lambda: set(peer_up(proc)) == {"churn-0", "churn-1"}, timeout=10, what="2 peers")
    joined = cluster.add_member()
    wait_until(lambda: peer_up(proc).get(joined.name) == 1.0, timeout=10,
               what="the joined member watched")
    cluster.remove_member(1)
    wait_until(lambda: set(peer_up(proc)) == {"churn-0", joined.name}, timeout=10,
               what="the removed member gone from /metrics")
    text = proc.metrics()
    assert not all_samples(text, "watchdog_etcd_probe_failures_total", peer="churn-1")
    assert "peer left peer=churn-1" in proc.output()
