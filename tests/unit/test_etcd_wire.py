"""Parsing etcd's answers across releases and servers, from real captures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watchdog.etcd.client import (
    SET_CA,
    SPEAKS_PLAIN,
    SPEAKS_TLS,
    EtcdStatus,
    Member,
    _etcd_error,
    _refine,
    mismatch,
    wire_hint,
)
from watchdog.etcd.sniff import PLAIN, SILENT, TLS
from watchdog.etcd.tlsfiles import TlsFiles
from watchdog.results import ProbeResult, Reason

BACKENDS = Path(__file__).resolve().parent.parent / "fixtures" / "backends"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "etcd"


@pytest.mark.parametrize("release", ["3.5.35", "3.6.16", "3.7.3"])
def test_both_gateway_error_shapes(release: str) -> None:
    body = json.loads((BACKENDS / f"etcd-{release}_error_bad_range.400.json").read_text())
    assert ("error" in body) is release.startswith("3.5")  # the shape did change in 3.6
    assert _etcd_error(body) == (3, "etcdserver: key is not provided")


def failed(op: str, status: int, body: object) -> ProbeResult:
    return ProbeResult("json", op, False, 0.1, Reason.HTTP, f"HTTP {status}", status=status,
                       body=body)


@pytest.mark.parametrize("shape", [
    {"error": "etcdserver: permission denied", "code": 7,
     "message": "etcdserver: permission denied"},
    {"code": 7, "message": "etcdserver: permission denied", "details": []},
])
def test_root_only_status_names_the_releases(shape: dict[str, object]) -> None:
    status = _refine(failed("status", 403, shape))
    assert status.reason is Reason.AUTH
    assert "root role" in status.detail and "3.6.0-3.6.11" in status.detail
    members = _refine(failed("member_list", 403, shape))
    assert members.reason is Reason.AUTH and "MemberList" in members.detail
    other = _refine(failed("range", 403, shape))
    assert other.reason is Reason.AUTH and "root" not in other.detail


def test_text_bodies_name_the_scheme_and_never_leave() -> None:
    go_tls = failed("range", 400, "Client sent an HTTP request to an HTTPS server.\n")
    hinted = _refine(go_tls)
    assert (hinted.reason, hinted.detail, hinted.body) == (Reason.TLS, SPEAKS_TLS, None)
    antietcd = _refine(failed("range", 400, "content-type should be application/json"))
    assert antietcd.reason is Reason.HTTP and antietcd.body is None


def test_tls_details() -> None:
    plain = ProbeResult("json", "range", False, 0.1, Reason.TLS,
                        "tls handshake failed: WRONG_VERSION_NUMBER")
    assert wire_hint(plain).detail == SPEAKS_PLAIN
    unknown_ca = ProbeResult("json", "range", False, 0.1, Reason.TLS,
                             "certificate verify failed: unable to get local issuer certificate")
    assert wire_hint(unknown_ca).detail.endswith(SET_CA)
    assert wire_hint(wire_hint(unknown_ca)).detail.count(SET_CA) == 1
    assert mismatch("https://h:1", PLAIN) == SPEAKS_PLAIN
    assert mismatch("http://h:1", TLS) == SPEAKS_TLS
    assert mismatch("https://h:1", TLS) is None and mismatch("http://h:1", SILENT) is None


def test_status_of_each_server() -> None:
    etcd = EtcdStatus.from_json(json.loads((BACKENDS / "etcd-3.7.3_status.200.json").read_text()))
    assert etcd.member_id.isdigit() and etcd.raft_term == 2 and etcd.db_size == 20480
    anti = EtcdStatus.from_json(json.loads(
        (BACKENDS / "antietcd-1.3.1_status.200.json").read_text()))
    assert (anti.member_id, anti.leader, anti.raft_term, anti.db_size_in_use) == ("", "", None,
                                                                                   None)
    # proto3 leaves zero fields out; 0 and absent both mean "not reported", never "0".
    empty = EtcdStatus.from_json({"header": {"member_id": "0"}, "leader": 0})
    assert (empty.member_id, empty.leader, empty.db_size) == ("", "", None)
    assert (anti.cluster_id, empty.cluster_id) == ("", "")


def test_cluster_id_in_hex_as_etcdctl_prints_it() -> None:
    status = EtcdStatus.from_json(json.loads(
        (FIXTURES / "etcd-3.4.23-idle_v3_maintenance_status.json").read_text()))
    assert status.cluster_id == format(324952591200643719, "x")


@pytest.mark.parametrize("bad", [
    {"header": "x"}, {"header": {"member_id": [1]}}, {"header": {}, "dbSize": {"a": 1}},
    {"header": {}, "raftTerm": True},
])
def test_status_garbage_is_an_error_not_a_crash(bad: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        EtcdStatus.from_json(bad)


def test_members_with_named_or_missing_ids() -> None:
    assert Member.from_json({"ID": "15134069013717940743", "name": "a"}).id_hex == \
        format(15134069013717940743, "x")
    assert Member.from_json({"ID": "n1", "name": "n1"}).id_hex == "n1"
    with pytest.raises(ValueError):
        Member.from_json({"name": "no id"})


def test_tls_files_changed_is_cheap_and_fires_once(tmp_path: Path) -> None:
    now = [0.0]
    ca = tmp_path / "ca.pem"
    ca.write_text("one")
    files = TlsFiles(str(ca), None, min_interval=1.0, clock=lambda: now[0])
    assert not files.changed()
    ca.write_text("two, longer")
    now[0] = 0.5
    assert not files.changed()  # not looked at again within min_interval
    now[0] = 1.5
    assert files.changed()
    now[0] = 3.0
    assert not files.changed()  # once per change
    ca.unlink()
    now[0] = 4.5
    assert files.changed()  # gone is a change too (and is then re-read or kept)
    assert not TlsFiles(None, None, None).changed()
