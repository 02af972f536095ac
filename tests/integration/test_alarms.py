"""A NOSPACE alarm on a real etcd is exported while it is raised and gone once disarmed.

etcd runs with a 1 MiB backend quota and is filled through its JSON gateway until it
answers "database space exceeded"; watchdog's daemon polls it."""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import all_samples, wait_until
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration

QUOTA = 1024 * 1024


def fill_until_nospace(cluster: EtcdCluster) -> int:
    """Write 64 KiB values until etcd refuses; the number of writes it took."""
    value = "x" * 65536
    for n in range(200):
        try:
            answer = cluster.put(f"/fill/{n}", value)
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")
            assert "space exceeded" in body, body
            return n
        assert "error" not in answer, answer
    raise AssertionError("etcd never ran out of space with a 1 MiB quota")


def alarms(proc: WatchdogProcess) -> list[tuple[str, str]]:
    return [(labels["peer"], labels["alarm"])
            for labels, value in all_samples(proc.metrics(), "watchdog_etcd_alarm") if value]


@pytest.mark.fault(
    "etcd NOSPACE alarm (a 1 MiB quota filled)",
    reports="`watchdog_etcd_alarm{peer,alarm=\"NOSPACE\"}` 1",
    within="15 s at a 0.5 s interval (asserted)")
@pytest.mark.fault(
    "the NOSPACE alarm disarmed",
    reports="the alarm series leaves the output",
    within="15 s (asserted)")
def test_nospace_alarm_is_exported_and_clears_when_disarmed(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=1, name_prefix="quota",
                           extra_args=(f"--quota-backend-bytes={QUOTA}",))
    proc = run_watchdog(write_config({"etcd": {
        "endpoints": cluster.endpoints, "interval": "500ms", "timeout": "400ms"}}))
    proc.wait_ready()
    assert alarms(proc) == []
    fill_until_nospace(cluster)
    name = cluster.members[0].name
    wait_until(lambda: alarms(proc) == [(name, "NOSPACE")], timeout=15,
               what="watchdog_etcd_alarm{alarm=NOSPACE}")
    # Disarm as `etcdctl alarm disarm` does (list, then deactivate each by member id): the
    # alarm leaves the output.
    listed = cluster.request("/v3/maintenance/alarm", {"action": "GET"})
    raised = listed.get("alarms") or []
    assert raised and all(a.get("alarm") == "NOSPACE" for a in raised), listed  # type: ignore[union-attr]
    for a in raised:  # type: ignore[union-attr]
        cluster.request("/v3/maintenance/alarm", {
            "action": "DEACTIVATE", "memberID": a["memberID"], "alarm": "NOSPACE"})
    wait_until(lambda: alarms(proc) == [], timeout=15, what="the alarm gone after disarm")
