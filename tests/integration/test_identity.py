"""A peer's label never changes: a member that is down when watchdog starts keeps the member
name it had (remembered in the state), not its URL, and nothing is renamed when it returns."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import all_samples, wait_until
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration


def peers_up(proc: WatchdogProcess) -> dict[str, float]:
    return {labels["peer"]: v for labels, v in all_samples(proc.metrics(),
                                                           "watchdog_etcd_peer_up")}


@pytest.mark.fault(
    "a member down when watchdog starts",
    reports="labelled by its member name from the saved state (`peer_up` 0), never by its URL; up "
            "again once restarted",
    within="15 s; back in 30 s (asserted)")
def test_a_member_down_at_start_keeps_its_member_name(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=1, name_prefix="ident")
    name, url = cluster.members[0].name, cluster.members[0].client_url
    config = write_config({"etcd": {"endpoints": [url], "discover_members": False,
                                     "interval": "500ms", "timeout": "400ms"}})
    first = run_watchdog(config)
    wait_until(lambda: peers_up(first) == {name: 1.0}, timeout=15, what="the member, by name")
    assert first.stop(signal.SIGTERM) == 0  # saves the learned state, names included

    cluster.kill_member(0)
    second = run_watchdog(config)
    # Without the remembered name the peer would be labelled by its URL until it answers.
    wait_until(lambda: peers_up(second) == {name: 0.0}, timeout=15,
               what="the down member labelled by its member name")
    cluster.restart_member(0)
    wait_until(lambda: peers_up(second) == {name: 1.0}, timeout=30, what="the member back")
    log = second.output()
    assert "peer left" not in log and f"watching peer peer={url}" not in log, log


def test_a_configured_endpoint_name_is_the_label_from_the_first_poll(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=1, name_prefix="named")
    member, url = cluster.members[0].name, cluster.members[0].client_url
    cluster.kill_member(0)  # down at start, and no state: nothing but the config names it
    config = write_config({"etcd": {"endpoints": [{"url": url, "name": "etcd-a"}],
                                    "interval": "500ms", "timeout": "400ms"}})
    proc = run_watchdog(config)
    wait_until(lambda: peers_up(proc) == {"etcd-a": 0.0}, timeout=15,
               what="the down member labelled by its configured name")
    wait_until(lambda: "peer down peer=etcd-a reason=refused first_poll=true" in proc.output(),
               timeout=5, what="the down-from-the-first-poll log line, with its reason")
    cluster.restart_member(0)
    # Up, the member list names it `member`; the configured name still wins.
    wait_until(lambda: peers_up(proc) == {"etcd-a": 1.0}, timeout=30, what="the member back")
    time.sleep(1.5)  # a few more polls: nothing renames it
    assert peers_up(proc) == {"etcd-a": 1.0}
    log = proc.output()
    assert "peer left" not in log and f"peer={member}" not in log, log
    assert f"peer={url}" not in log, log
