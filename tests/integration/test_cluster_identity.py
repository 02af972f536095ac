"""Learned state belongs to one etcd cluster (issue #14.13), on real `watchdog run` processes
and real etcd: a new cluster whose member has the same name never inherits it; the same
cluster, restarted from its data directory, keeps it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import sample, wait_until
from watchdog.etcd.client import b64, prefix_end
from watchdog.lab.cluster import EtcdCluster
from watchdog.state import StateStore

pytestmark = pytest.mark.integration

WATCHES = 3


@contextmanager
def held_watches(endpoint: str, count: int) -> Iterator[None]:
    """`count` HTTP watch long-polls held open on the endpoint (one watch stream each)."""
    parts = urlsplit(endpoint)
    body = json.dumps({"create_request": {"key": b64("/apisix/"),
                                          "range_end": b64(prefix_end("/apisix/"))}})
    conns = []
    try:
        for _ in range(count):
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
            conn.request("POST", "/v3/watch", body=body,
                         headers={"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conns.append(conn)
        yield
    finally:
        for conn in conns:
            with suppress(OSError):
                conn.close()


def streams(cluster: EtcdCluster) -> float:
    return sample(cluster.metrics_text(), "etcd_debugging_mvcc_watch_stream_total") or 0.0


@pytest.mark.fault(
    "a new etcd cluster whose member has the same name, same state directory",
    reports="no trip on the first poll; `foreign state discarded: learned on cluster ...` logged; "
            "the steady state learned afresh",
    within="the first poll (asserted)")
@pytest.mark.fault(
    "the same cluster's member restarted from its data directory",
    reports="the learned state applies (steady state at once despite a 1 h warm-up); nothing "
            "discarded",
    within="the first poll (asserted)")
def test_state_of_another_cluster_with_the_same_member_name_is_discarded(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    def config(cluster: EtcdCluster, warmup: str, name: str) -> Path:
        # min_streams 1: a steady state of 0 streams, applied to a peer holding 3, trips.
        return write_config({"etcd": {"endpoints": cluster.endpoints, "interval": "500ms",
                                      "timeout": "400ms", "grpc_probes": False},
                             "tripwire": {"warmup": warmup, "min_streams": 1}}, name=name)

    # Two unrelated clusters (each its own token and ports), started side by side.
    with ThreadPoolExecutor(2) as pool:
        old, new = pool.map(lambda name: make_cluster(name_prefix="etcd",
                                                      workdir=tmp_path / name), ("old", "new"))
    learn = run_watchdog(config(old, "0s", "learn.yml"))
    wait_until(lambda: sample(learn.metrics(), "watchdog_etcd_watch_streams_steady_state",
                              peer="etcd-0") == 0.0, timeout=10, what="a steady state of 0")
    assert learn.stop() == 0
    saved = StateStore(tmp_path / "state").load()
    assert saved is not None
    old_id = saved["tripwire"]["cluster_id"]
    assert old_id and saved["tripwire"]["members"]["etcd-0"], saved["tripwire"]

    # The same cluster, its member restarted from its data directory: the state applies
    # (a fresh wire could not arm within the hour of warm-up).
    old.restart_member(0)
    again = run_watchdog(config(old, "1h", "again.yml"))
    wait_until(lambda: sample(again.metrics(), "watchdog_etcd_peer_up", peer="etcd-0") == 1.0,
               timeout=10, what="the restarted member polled")
    assert sample(again.metrics(), "watchdog_etcd_watch_streams_steady_state",
                  peer="etcd-0") == 0.0
    assert again.stop() == 0
    assert "foreign state discarded" not in again.output(), again.output()

    assert new.members[0].name == "etcd-0"
    with held_watches(new.endpoints[0], WATCHES):
        wait_until(lambda: streams(new) >= WATCHES, timeout=10, what="watch streams held")
        fresh = run_watchdog(config(new, "0s", "fresh.yml"))
        wait_until(lambda: sample(fresh.metrics(), "watchdog_etcd_peer_up",
                                  peer="etcd-0") == 1.0, timeout=10, what="the new member polled")
        text = fresh.metrics()
        assert sample(text, "watchdog_etcd_watch_streams", peer="etcd-0") == WATCHES
        # Had the old steady state (0) judged 3 streams, the wire would be tripped now.
        assert sample(text, "watchdog_etcd_watch_tripwire", peer="etcd-0") == 0.0
        # The steady state is learned here, from 3 streams, not inherited (0).
        wait_until(lambda: sample(fresh.metrics(), "watchdog_etcd_watch_streams_steady_state",
                                  peer="etcd-0") == WATCHES, timeout=10, what="a steady state")
        assert sample(fresh.metrics(), "watchdog_etcd_watch_tripwire", peer="etcd-0") == 0.0
        assert fresh.stop() == 0
    log = fresh.output()
    assert "learned state loaded" in log  # read from disk, then recognised as foreign
    assert f"foreign state discarded: learned on cluster {old_id}, this is cluster" in log, log
    resaved = StateStore(tmp_path / "state").load()
    assert resaved is not None
    assert resaved["tripwire"]["cluster_id"] not in ("", None, old_id)
