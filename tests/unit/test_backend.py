"""Recognising the server behind a peer URL from real captured answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchdog.etcd.backend import (
    ANTIETCD,
    ETCD,
    ETCD_ADAPTER,
    GRPC,
    JSON,
    KINE,
    METRICS,
    UNKNOWN,
    WATCH_STREAMS,
    Evidence,
    identify,
    is_etcd_page,
)
from watchdog.etcd.client import EtcdStatus, VersionInfo
from watchdog.etcd.promtext import MARKER_FAMILIES, families_present

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BACKENDS = FIXTURES / "backends"
ETCD_FIXTURES = FIXTURES / "etcd"


def status_of(path: Path) -> EtcdStatus:
    return EtcdStatus.from_json(json.loads(path.read_text()))


def evidence(
    *,
    version: Path | None = None,
    status: EtcdStatus | None = None,
    page: Path | None = None,
    json_answered: bool | None = True,
    grpc_answered: bool | None = True,
) -> Evidence:
    """Evidence as a poll builds it from the answers (see peers._evidence)."""
    doc = None
    if version is not None:
        doc = dict(VersionInfo.from_json(json.loads(version.read_text())).doc)
    families = families_present(page.read_bytes(), MARKER_FAMILIES) if page else None
    return Evidence(
        version_doc=doc,
        status_version=status.version if status else None,
        status_member_id=status.member_id if status else None,
        status_raft_term=status.raft_term if status else None,
        status_keys=status.keys if status else frozenset(),
        metric_families=families,
        metrics_answered=page is not None,
        json_answered=json_answered,
        grpc_answered=grpc_answered,
    )


@pytest.mark.parametrize(
    ("release", "page"),
    [
        ("3.5.35", None),
        ("3.6.16", "etcd-3.6.16.200.metrics"),
        ("3.7.3", None),
    ],
)
def test_etcd_releases(release: str, page: str | None) -> None:
    status = status_of(BACKENDS / f"etcd-{release}_status.200.json")
    found = identify(evidence(version=BACKENDS / f"etcd-{release}_version.200.json",
                              status=status, page=BACKENDS / page if page else None))
    assert found.backend == ETCD
    assert found.version == release
    assert found.unavailable == frozenset()


@pytest.mark.parametrize(("prefix", "release"), [("etcd-3.4.23-idle", "3.4.23"),
                                                 ("etcd-3.5.1-tls-idle", "3.5.1")])
def test_older_etcd_captures(prefix: str, release: str) -> None:
    found = identify(evidence(version=ETCD_FIXTURES / f"{prefix}_version.json",
                              status=status_of(ETCD_FIXTURES /
                                               f"{prefix}_v3_maintenance_status.json"),
                              page=ETCD_FIXTURES / f"{prefix}.metrics"))
    assert (found.backend, found.version) == (ETCD, release)


def test_etcd_known_by_its_page_or_its_status_alone() -> None:
    # Status refused to a non-root user: /version and the page still say etcd.
    found = identify(evidence(version=BACKENDS / "etcd-3.6.16_version.200.json",
                              page=BACKENDS / "etcd-3.6.16.200.metrics"))
    assert (found.backend, found.version) == (ETCD, "3.6.16")
    # Known already, /version no longer asked: a raft term and a member id in Status.
    found = identify(evidence(status=status_of(BACKENDS / "etcd-3.7.3_status.200.json")))
    assert (found.backend, found.version) == (ETCD, "3.7.3")


def test_3_6_status_fields_and_version_storage() -> None:
    status = status_of(BACKENDS / "etcd-3.6.16_status.200.json")
    assert status.storage_version == "3.6.0"
    assert status.member_id.isdigit() and status.is_leader
    info = VersionInfo.from_json(json.loads(
        (BACKENDS / "etcd-3.6.16_version.200.json").read_text()))
    assert (info.server, info.cluster, info.storage) == ("3.6.16", "3.6.0", "3.6.0")
    old = VersionInfo.from_json(json.loads(
        (BACKENDS / "etcd-3.5.35_version.200.json").read_text()))
    assert old.storage is None


def test_antietcd() -> None:
    status = status_of(BACKENDS / "antietcd-1.3.1_status.200.json")
    # Standalone antietcd reports no member id and no leader: nothing is invented.
    assert status.member_id == "" and status.leader == "" and not status.has_leader
    assert status.revision == 1 and status.raft_term is None
    found = identify(evidence(status=status, grpc_answered=False))
    assert (found.backend, found.version) == (ANTIETCD, "1.3.1")
    assert {GRPC, METRICS, WATCH_STREAMS} <= found.unavailable
    assert JSON not in found.unavailable


def test_antietcd_cluster_member_ids_are_names() -> None:
    # As a clustered antietcd answers (captured from antietcd 1.3.1 with --node_id n1).
    status = EtcdStatus.from_json({
        "header": {"member_id": "n1", "revision": 0, "compact_revision": 0, "raft_term": 2},
        "version": "antietcd 1.3.1", "cluster": {"n1": "http://127.0.0.1:23792"},
        "leader": "n1", "raftTerm": 2, "raftState": "candidate", "dbSize": 5746256})
    assert (status.member_id, status.leader, status.is_leader) == ("n1", "n1", True)
    assert identify(evidence(status=status, grpc_answered=False)).backend == ANTIETCD


def test_kine_by_its_empty_status_header() -> None:
    # kine 0.17.5's gRPC Status (as JSON): an empty header and the emulated version.
    status = status_of(BACKENDS / "kine-0.17.5_grpc_status.json")
    assert (status.version, status.member_id, status.raft_term) == ("3.6.11", "", None)
    found = identify(evidence(status=status, json_answered=False, grpc_answered=True))
    assert found.backend == KINE
    assert found.version is None  # 3.6.11 is what kine emulates, not what it is
    assert JSON in found.unavailable and GRPC not in found.unavailable


def test_kine_by_its_metric_families() -> None:
    # The page on kine's --metrics-bind-address port, should someone point watchdog there.
    found = identify(evidence(page=BACKENDS / "kine-0.17.5-metrics-port.200.metrics",
                              json_answered=None, grpc_answered=None))
    assert found.backend == KINE
    assert not is_etcd_page(families_present(
        (BACKENDS / "kine-0.17.5-metrics-port.200.metrics").read_bytes(), MARKER_FAMILIES))


def test_etcd_adapter_by_its_hard_coded_version() -> None:
    # api7/etcd-adapter: /version hard-coded, no /metrics, a Status without a version.
    adapter_status = EtcdStatus(version="", member_id="", leader="", db_size=None,
                                raft_term=None, raft_index=None, revision=None)
    found = identify(Evidence(
        version_doc={"etcdserver": "3.5.0", "etcdcluster": "3.5.0"},
        status_version=adapter_status.version, status_member_id="", status_raft_term=None,
        metrics_answered=False, json_answered=True, grpc_answered=True))
    assert found.backend == ETCD_ADAPTER
    assert found.version is None


def test_a_real_etcd_3_5_0_is_not_the_adapter() -> None:
    found = identify(Evidence(
        version_doc={"etcdserver": "3.5.0", "etcdcluster": "3.5.0"},
        status_version="3.5.0", status_member_id="123", status_raft_term=2,
        json_answered=True, grpc_answered=True))
    assert (found.backend, found.version) == (ETCD, "3.5.0")


def test_prometheus_text_that_is_not_etcd() -> None:
    page = (b"# HELP process_open_fds x\n# TYPE process_open_fds gauge\nprocess_open_fds 7\n"
            b"node_load1 0.5\n")
    families = families_present(page, MARKER_FAMILIES)
    assert not is_etcd_page(families)
    assert identify(Evidence(metric_families=families, metrics_answered=True)).backend == UNKNOWN


@pytest.mark.parametrize("ev", [
    Evidence(),
    Evidence(json_answered=False, grpc_answered=False),
    Evidence(version_doc={"etcdserver": 3}),
    Evidence(version_doc={"etcdserver": "3.5.0", "etcdcluster": "3.5.0"},
             status_version="3.5.0"),
    Evidence(status_version="", status_member_id="", grpc_answered=False),
])
def test_too_little_says_unknown(ev: Evidence) -> None:
    assert identify(ev).backend == UNKNOWN


def test_version_placeholders_are_not_versions() -> None:
    found = identify(Evidence(version_doc={"etcdserver": "not_decided", "etcdcluster": ""},
                              status_version="", status_member_id="5", status_raft_term=1))
    assert found.backend == ETCD and found.version is None
