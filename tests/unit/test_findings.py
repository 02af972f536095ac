"""The findings rules (one test per finding) and the tracker's hysteresis, on real snapshot
values built the way the reducer builds them."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest

from watchdog.etcd.promtext import Histogram, PeerMetrics
from watchdog.etcd.sockets import ConnectionCount
from watchdog.events import changes
from watchdog.findings import (
    Candidate,
    FindingSettings,
    FindingTracker,
    GatewayFanout,
    Severity,
    evaluate,
    growth,
    human_duration,
    worst,
)
from watchdog.gateway.smoke import SmokeResult
from watchdog.metrics import SnapshotCollector
from watchdog.results import ProbeResult, Reason
from watchdog.snapshot import GatewayState, PeerState, Snapshot, frozen_map
from watchdog.tripwire import WireState
from watchdog.web import findings_document, render_status_page

NOW = 1_800_000_000.0
WARMING = WireState(None, False, None, 0, False, warmup_left=3000.0)  # 10 of 60 min seen


def metrics(**kw: Any) -> PeerMetrics:
    base: dict[str, Any] = dict(
        watch_streams=20.0, watchers=40.0, slow_watchers=0.0, pending_events=0.0,
        grpc_watch_streams_open=0.0, has_leader=1.0, is_leader=0.0, leader_changes=1.0,
        db_size=2e6, db_size_in_use=1e6, quota_bytes=2 * 2**30, open_fds=50.0,
        max_fds=1e6, version="3.5.1", wal_fsync=None, backend_commit=None, samples_read=10)
    base.update(kw)
    return PeerMetrics(**base)


def ok(api: str, op: str = "range", seconds: float = 0.003) -> ProbeResult:
    return ProbeResult(api, op, True, seconds)


def fail(api: str, reason: Reason, op: str = "range") -> ProbeResult:
    return ProbeResult(api, op, False, 1.0, reason=reason, detail=f"{reason.value}!")


def peer(name: str = "etcd-0", up: bool = True, json: ProbeResult | None = None,
         grpc: ProbeResult | None = None, **kw: Any) -> PeerState:
    probes = {("json", "range"): json or ok("json"), ("grpc", "range"): grpc or ok("grpc")}
    base: dict[str, Any] = dict(
        name=name, endpoint=f"https://127.0.0.1:2379/{name}", version="3.5.1", tls=True,
        cycle=3, up=up, last_poll=NOW - 2, metrics=metrics() if up else None,
        poll_reason="" if up else "refused", probes=frozen_map(probes), exposed=True,
        is_leader=False)
    base.update(kw)
    return PeerState(**base)


def gateway(name: str = "gw-1", **kw: Any) -> GatewayState:
    base: dict[str, Any] = dict(
        name=name, admin_url="http://127.0.0.1:9180", polled=True, last_poll=NOW - 1,
        admin=frozen_map({"get_missing_route": ok("admin", "get_missing_route", 0.01)}),
        ready=True, config_lag=0.0)
    base.update(kw)
    return GatewayState(**base)


def snap(peers: list[PeerState] | None = None, gateways: list[GatewayState] | None = None
         ) -> Snapshot:
    ps = peers if peers is not None else [peer("etcd-0"), peer("etcd-1"), peer("etcd-2")]
    return Snapshot(cycle=3, taken=NOW - 1, started=NOW - 3600,
                    peers=frozen_map({p.name: p for p in ps}),
                    gateways=frozen_map({g.name: g for g in gateways or []}))


def kinds(found: list[Candidate], severity: Severity | None = None) -> set[str]:
    return {c.id for c in found if severity is None or c.severity is severity}


def smoke_failed(message: str, phase: str = "propagate") -> SmokeResult:
    return SmokeResult("gw-1", False, phase, message, reason=Reason.TIMEOUT)


SETTINGS = FindingSettings(interval=15, timeout=5, warmup=3600)


# -- each finding -----------------------------------------------------------------------


def test_healthy_cluster_has_no_warning_or_critical() -> None:
    found = evaluate(snap(gateways=[gateway()]), NOW, SETTINGS)
    assert {c.kind for c in found} <= {"warmup"}
    assert all(c.severity is Severity.INFO for c in found)


def test_json_gateway_stalled_names_the_250_limit() -> None:
    stalled = peer("etcd-0", json=fail("json", Reason.TIMEOUT),
                   grpc=ok("grpc", seconds=0.002), metrics=metrics(watch_streams=250.0))
    found = evaluate(snap([stalled, peer("etcd-1"), peer("etcd-2")]), NOW, SETTINGS)
    c = next(c for c in found if c.kind == "json_gateway_stalled")
    assert c.subject == "etcd-0" and c.severity is Severity.CRITICAL
    assert "250/250" in c.summary and "3.5.5" in c.summary and "2 ms" in c.summary
    assert "--max-concurrent-streams" in c.fix and "one watch per worker" in c.fix
    assert c.runbook.endswith("#etcdjsongatewaystalled")
    assert [e.age for e in c.evidence] == [2.0, 2.0, 2.0]
    # at the wall, the stall is the verdict, not "limit near"
    assert "stream_limit_near:etcd-0" not in kinds(found)


def test_json_slow_while_grpc_fast_is_a_stall_and_unexposed_names_the_flag() -> None:
    slow = peer(json=ok("json", seconds=2.5), exposed=False)
    c = next(c for c in evaluate(snap([slow]), NOW, SETTINGS) if c.kind ==
             "json_gateway_stalled")
    assert "took 2500 ms" in c.summary and "--max-concurrent-streams" in c.summary


def test_json_failing_with_grpc_failing_too_is_not_a_stall() -> None:
    both = peer(json=fail("json", Reason.TIMEOUT), grpc=fail("grpc", Reason.TIMEOUT))
    assert "json_gateway_stalled:etcd-0" not in kinds(evaluate(snap([both]), NOW, SETTINGS))


def test_stream_limit_near_with_time_to_reach() -> None:
    history = tuple((NOW - 60 + i * 10, 200.0 + i * 5, None) for i in range(6))
    near = peer(metrics=metrics(watch_streams=230.0), history=history)
    c = next(c for c in evaluate(snap([near]), NOW, SETTINGS) if c.kind == "stream_limit_near")
    assert "20 streams of headroom" in c.summary and "+30.0 streams/min" in c.summary
    assert "reached in 40s" in c.summary
    assert "stream_limit_near:etcd-0" not in kinds(
        evaluate(snap([peer(metrics=metrics(watch_streams=230.0), exposed=False)]), NOW,
                 SETTINGS))


def test_watch_surge_compares_observed_with_expected() -> None:
    wire = WireState(steady=40.0, tripped=True, ratio=2.5, tripped_for=120.0, armed=True)
    conns = ConnectionCount(100, (("127.0.0.9", 60), ("127.0.0.8", 20)), True)
    surged = peer(metrics=metrics(watch_streams=100.0), expected_streams=40.0,
                  wires=frozen_map({"watch_streams": wire}), connections=conns)
    c = next(c for c in evaluate(snap([surged]), NOW, SETTINGS) if c.kind == "watch_surge")
    assert "100 streams, 2.5x the steady state of 40" in c.summary
    assert "observed 100 vs 40 expected" in c.summary and "60 unexplained" in c.summary
    assert any("127.0.0.9 (60)" in e.value for e in c.evidence)


def test_watch_surge_in_warm_up_uses_the_expected_fan_out() -> None:
    gws = tuple(GatewayFanout(f"gw-{i}", 2, "modern", 13) for i in range(2))
    settings = replace(SETTINGS, fanout=gws)
    leaking = [peer("etcd-0", metrics=metrics(watch_streams=16.0)),
               peer("etcd-1", metrics=metrics(watch_streams=2.0))]
    c = next(c for c in evaluate(snap(leaking), NOW, settings) if c.kind == "watch_surge")
    assert c.subject == "etcd" and "18 watch streams on etcd, 3.0x the 6" in c.summary
    normal = [peer("etcd-0", metrics=metrics(watch_streams=4.0)),
              peer("etcd-1", metrics=metrics(watch_streams=1.0))]
    assert "watch_surge:etcd" not in kinds(evaluate(snap(normal), NOW, settings))


def test_fanout_counts_workers_plus_the_privileged_agent() -> None:
    # APISIX runs init_worker (and so config sync) in every worker and in the privileged
    # agent: 4 workers hold 5 watches (>= 3.4) or 5 x 13 (before); docs/configuration.md.
    gws = tuple(GatewayFanout(f"gw-{i}", 4, "modern", 13) for i in range(2))
    assert [gws[0].streams("modern"), gws[0].streams("legacy")] == [5, 65]
    settings = replace(SETTINGS, fanout=gws)
    legacy_like = [peer(metrics=metrics(watch_streams=130.0))]  # 2 x (4 + 1) x 13
    c = next(c for c in evaluate(snap(legacy_like), NOW, settings) if c.kind ==
             "fanout_mismatch")
    assert "pre-3.4 per-prefix fan-out" in c.summary and "130 legacy vs 10 modern" in \
        c.summary
    for observed in (10.0, 8.0):  # exact, and a fleet missing its privileged agents' watches
        fits = [peer(metrics=metrics(watch_streams=observed))]
        assert "fanout_mismatch:gateways" not in kinds(evaluate(snap(fits), NOW, settings))
    legacy = replace(settings, fanout=tuple(replace(g, sync_mode="legacy") for g in gws))
    c = next(c for c in evaluate(snap([peer(metrics=metrics(watch_streams=10.0))]), NOW,
                                  legacy) if c.kind == "fanout_mismatch")
    assert "APISIX >= 3.4 fan-out" in c.summary


def test_gateway_admin_leak_only_while_etcd_is_fast() -> None:
    slow = gateway(admin=frozen_map({"get_missing_route": fail("admin", Reason.TIMEOUT,
                                                                "get_missing_route")}))
    c = next(c for c in evaluate(snap(gateways=[slow]), NOW, SETTINGS)
             if c.kind == "gateway_admin_leak")
    assert c.subject == "gw-1" and "#7078" in c.cause and "restart gateway gw-1" in c.fix
    slow_etcd = [peer(json=ok("json", seconds=0.8))]
    assert "gateway_admin_leak:gw-1" not in kinds(
        evaluate(snap(slow_etcd, [slow]), NOW, SETTINGS))


def test_init_sync_hang_from_not_ready_or_unserved_canary() -> None:
    for gw in (gateway(ready=False),
               gateway(ready=None, config_lag=5.0, smoke=smoke_failed(
                   "canary written, ...; the gateway reports no config loaded (modify index 0)"
                   " while the canary is at revision 87: it is not applying etcd changes")),
               gateway(ready=None, smoke=smoke_failed("canary written, data plane still "
                                                      "answers 404 after 5.0s"),
                       last_smoke=NOW - 30)):
        c = next(c for c in evaluate(snap(gateways=[gw]), NOW, SETTINGS)
                 if c.kind == "init_sync_hang")
        assert "#12580" in c.cause and "pin a known-good" in c.fix


def test_shim_drops_writes() -> None:
    gw = gateway(smoke=smoke_failed("canary written ...; the admin API lists no routes although"
                                    " it accepted the write: ... (an etcd-adapter shim?)"),
                 last_smoke=NOW - 10)
    found = evaluate(snap(gateways=[gw]), NOW, SETTINGS)
    assert "shim_drops_writes:gw-1" in kinds(found)
    assert "init_sync_hang:gw-1" not in kinds(found)


def test_stale_config() -> None:
    found = evaluate(snap(gateways=[gateway(config_lag=7.0)]), NOW, SETTINGS)
    c = next(c for c in found if c.kind == "stale_config")
    assert "7 revisions behind" in c.summary and c.open_after == 75, "a lag alone must last"
    assert "init_sync_hang:gw-1" not in kinds(found)
    never_loaded = smoke_failed("canary written ...; the gateway has loaded config up to "
                                "revision 9 but the canary is at revision 12: it stopped "
                                "applying etcd changes (a stuck watch?)")
    found = evaluate(snap(gateways=[gateway(config_lag=3.0, smoke=never_loaded)]), NOW,
                     SETTINGS)
    c = next(c for c in found if c.kind == "stale_config")
    assert c.open_after == 0, "a canary it never loaded confirms it"
    t = FindingTracker(open_after=10, clear_after=30)
    lag_only = evaluate(snap(gateways=[gateway(config_lag=7.0)]), NOW, SETTINGS)
    assert not [t.update(lag_only, NOW + i * 15) for i in range(5)][-1]
    assert t.update(lag_only, NOW + 75)


def test_peer_down_and_quorum() -> None:
    one_down = [peer("etcd-0", up=False), peer("etcd-1"), peer("etcd-2")]
    found = evaluate(snap(one_down), NOW, SETTINGS)
    assert {"peer_down:etcd-0", "quorum_at_risk:etcd"} <= kinds(found, Severity.WARNING)
    two_down = [peer("etcd-0", up=False), peer("etcd-1", up=False), peer("etcd-2")]
    assert "quorum_lost:etcd" in kinds(evaluate(snap(two_down), NOW, SETTINGS),
                                       Severity.CRITICAL)
    leaderless = [peer(n, metrics=metrics(has_leader=0.0)) for n in ("etcd-0", "etcd-1")]
    assert "no_leader:etcd" in kinds(evaluate(snap(leaderless), NOW, SETTINGS),
                                     Severity.CRITICAL)



def test_a_shard_with_part_of_the_cluster_does_not_judge_quorum() -> None:
    # This shard holds etcd-0 of three members; its peer down is its own finding, but
    # quorum is the whole cluster's and the other shards see the rest.
    part = replace(snap([peer("etcd-0", up=False)]), members=3)
    found = {c.kind for c in evaluate(part, NOW, SETTINGS)}
    assert "peer_down" in found and not found & {"quorum_lost", "quorum_at_risk"}
    whole = replace(snap([peer("etcd-0", up=False)]), members=1)
    assert "quorum_lost" in {c.kind for c in evaluate(whole, NOW, SETTINGS)}

def test_db_quota_and_fsync() -> None:
    mib = 2.0**20
    full = peer(metrics=metrics(db_size=15.5 * mib, quota_bytes=16 * mib))
    c = next(c for c in evaluate(snap([full]), NOW, SETTINGS) if c.kind == "db_quota")
    assert c.severity is Severity.CRITICAL and "97%" in c.summary and "NOSPACE" in c.summary
    assert "alarm disarm" in c.fix
    warn = peer(metrics=metrics(db_size=13 * mib, quota_bytes=16 * mib))
    assert "db_quota:etcd-0" in kinds(evaluate(snap([warn]), NOW, SETTINGS), Severity.WARNING)
    hist = Histogram(((0.01, 100.0), (0.1, 200.0), (0.5, 1000.0), (float("inf"), 1000.0)),
                     300.0, 1000.0)
    slow = peer(metrics=metrics(wal_fsync=hist))
    assert "fsync_slow:etcd-0" in kinds(evaluate(snap([slow]), NOW, SETTINGS))
    few = Histogram(((0.01, 20.0), (0.5, 25.0), (float("inf"), 25.0)), 3.0, 25.0)
    assert "fsync_slow:etcd-0" not in kinds(
        evaluate(snap([peer(metrics=metrics(wal_fsync=few))]), NOW, SETTINGS)), \
        "one slow fsync in 25 is not a slow disk"


def test_backend_not_etcd_is_info() -> None:
    kine = peer(metrics=metrics(watch_streams=None, has_leader=None), version="3.6.11")
    c = next(c for c in evaluate(snap([kine]), NOW, SETTINGS) if c.kind == "backend_not_etcd")
    assert c.severity is Severity.INFO and "not available" in c.fix


def test_auth_denied_names_the_permission() -> None:
    denied = peer(json=fail("json", Reason.AUTH), grpc=fail("grpc", Reason.AUTH))
    c = next(c for c in evaluate(snap([denied]), NOW, SETTINGS) if c.kind == "auth_denied")
    assert "read permission on /apisix/watchdog/probe" in c.summary
    gw = gateway(admin=frozen_map({"get_missing_route": fail("admin", Reason.AUTH,
                                                              "get_missing_route")}))
    c = next(c for c in evaluate(snap(gateways=[gw]), NOW, SETTINGS) if c.kind == "auth_denied")
    assert c.subject == "gw-1" and "admin key" in c.summary


def test_warmup_says_when_the_wire_arms() -> None:
    warming = peer(wires=frozen_map({"watch_streams": WARMING}))
    c = next(c for c in evaluate(snap([warming]), NOW, SETTINGS) if c.kind == "warmup")
    assert c.severity is Severity.INFO and "arms in about 50m" in c.summary
    assert c.evidence[0].value == "50m of 60m"
    # The page reads the wire itself, before the finding has opened.
    assert '<div class="muted">arms in about 50m</div>' in render_status_page(snap([warming]), NOW)
    armed = WireState(20.0, False, 1.0, 0, True)
    for wires in ({}, {"watch_streams": armed}):
        assert "warmup" not in {c.kind for c in evaluate(
            snap([peer(wires=frozen_map(wires))]), NOW, SETTINGS)}


# -- hysteresis -------------------------------------------------------------------------


def cand(kind: str = "peer_down", sev: Severity = Severity.WARNING) -> Candidate:
    return Candidate(kind, sev, "peer", "etcd-0", "s", (), "c", "f", "etcdpeerdown")


def test_tracker_opens_after_holding_and_clears_after_absence() -> None:
    t = FindingTracker(open_after=10, clear_after=30)
    assert t.update([cand()], 0) == ()
    assert t.update([cand()], 5) == (), "held 5s < 10s"
    opened = t.update([cand()], 10)
    assert [f.id for f in opened] == ["peer_down:etcd-0"] and opened[0].opened_at == 10
    assert t.update([], 20) == opened, "absent 10s < 30s: still open"
    assert t.update([cand()], 25) == opened, "back before the hold: same opening"
    assert t.update([], 40) == opened
    assert t.update([], 55) == (), "absent 30s since last held: cleared"


def test_tracker_never_flaps_on_an_alternating_condition() -> None:
    t = FindingTracker(open_after=10, clear_after=30)
    states = []
    for i in range(40):  # condition on/off every other evaluation, 5s apart
        states.append(bool(t.update([cand()] if i % 2 == 0 else [], i * 5.0)))
    assert not any(states), "a condition with gaps never opens"
    t = FindingTracker(open_after=0, clear_after=30)
    t.update([cand()], 0)
    t.update([cand()], 1)
    states = [bool(t.update([cand()] if i % 2 else [], 1 + i * 5.0)) for i in range(1, 40)]
    assert all(states), "an open finding seen every 10s never clears with a 30s hold"


def test_tracker_needs_two_evaluations_and_follows_severity() -> None:
    t = FindingTracker(open_after=0, clear_after=30)
    assert t.update([cand()], 0) == ()
    assert t.update([cand()], 0) != ()
    (f,) = t.update([cand(sev=Severity.CRITICAL)], 1)
    assert f.severity is Severity.CRITICAL and f.opened_at == 0


# -- one snapshot, every output -----------------------------------------------------------


def test_outputs_read_the_snapshot_findings() -> None:
    t = FindingTracker(open_after=0, clear_after=30)
    stalled = peer("etcd-0", json=fail("json", Reason.TIMEOUT),
                   metrics=metrics(watch_streams=250.0))
    base = snap([stalled, peer("etcd-1"), peer("etcd-2")], [gateway()])
    t.update(evaluate(base, NOW, SETTINGS), NOW)
    cur = replace(base, findings=t.update(evaluate(base, NOW, SETTINGS), NOW))
    assert len(cur.findings) == 1
    # /metrics
    families = {m.name: m for m in SnapshotCollector(lambda: cur).collect()}
    (s,) = families["watchdog_finding"].samples
    assert s.labels == {"finding": "json_gateway_stalled", "subject": "etcd-0",
                        "severity": "critical"} and s.value == 1
    # /api/v1/findings
    doc = findings_document(cur, NOW + 4)
    assert doc["status"] == "critical"
    (item,) = doc["findings"]  # type: ignore[misc]
    assert item["id"] == "json_gateway_stalled:etcd-0"
    assert item["subject"] == {"kind": "peer", "name": "etcd-0"}
    assert item["evidence"][0]["age_seconds"] == 7.0  # 2s old at the snapshot, taken 5s ago
    assert item["runbook"] == "docs/runbook.md#etcdjsongatewaystalled"
    # the page: the banner is the worst finding, red, with its fix
    page = render_status_page(cur, NOW)
    banner = page.split('class="banner', 1)[1].split("</div></div>", 1)[0]
    assert "bad-bg" in banner and "JSON gateway on etcd-0 is stalled" in banner
    assert "Fix: upgrade etcd" in banner and 'name="viewport"' in page
    # the log: one line at open, one at clear
    events = list(changes(base, cur))
    assert [lvl for lvl, msg in events if "finding opened" in msg] == [logging.WARNING]
    cleared = list(changes(cur, base))
    assert any("finding cleared finding=json_gateway_stalled peer=etcd-0" in m
               for _, m in cleared)


def test_banner_is_green_only_without_warning_or_critical() -> None:
    healthy = snap(gateways=[gateway()])
    page = render_status_page(healthy, NOW)
    assert 'class="banner ok-bg"' in page and "no warning or critical finding" in page
    t = FindingTracker(open_after=0, clear_after=30)
    hung = snap(gateways=[gateway(ready=False)])
    t.update(evaluate(hung, NOW, SETTINGS), NOW)
    cur = replace(hung, findings=t.update(evaluate(hung, NOW, SETTINGS), NOW))
    page = render_status_page(cur, NOW)
    assert 'class="banner ok-bg"' not in page and 'class="banner warn-bg"' in page
    assert "gw-1 never served" in page
    assert worst(cur.findings) is not None


def test_helpers() -> None:
    assert growth([(0.0, 10.0, None), (10.0, 20.0, None), (20.0, 30.0, None)]) == 1.0
    assert growth([(0.0, 10.0, None)]) is None
    assert [human_duration(s) for s in (5, 120, 3 * 3600 + 300, 3 * 86400)] == \
        ["5s", "2m", "3h 5m", "3d 0h"]


@pytest.mark.parametrize("sev", list(Severity))
def test_severity_rank_orders(sev: Severity) -> None:
    assert sev.rank == {"critical": 2, "warning": 1, "info": 0}[sev.value]


def test_every_finding_links_a_runbook_section_and_is_documented() -> None:
    from pathlib import Path

    from tests.unit.test_alerts import runbook_anchors

    mib = 2.0**20
    gws = tuple(GatewayFanout(f"gw-{i}", 2, "modern", 13) for i in range(2))
    settings = replace(SETTINGS, fanout=gws)
    wire = WireState(steady=4.0, tripped=True, ratio=5.0, tripped_for=60.0, armed=True)
    hist = Histogram(((0.5, 1000.0), (float("inf"), 1000.0)), 300.0, 1000.0)
    bad_peers = [
        peer("etcd-0", json=fail("json", Reason.TIMEOUT), metrics=metrics(
            watch_streams=250.0, db_size=15.5 * mib, quota_bytes=16 * mib, wal_fsync=hist)),
        peer("etcd-1", metrics=metrics(watch_streams=230.0, has_leader=0.0),
             wires=frozen_map({"watch_streams": wire})),
        peer("etcd-2", up=False, poll_reason="auth"),
        peer("etcd-3", json=fail("json", Reason.AUTH), grpc=fail("grpc", Reason.AUTH),
             metrics=metrics(watch_streams=None, has_leader=None),
             wires=frozen_map({"watch_streams": WARMING})),
    ]
    admin_timeout = frozen_map({"get_missing_route": fail("admin", Reason.TIMEOUT,
                                                           "get_missing_route")})
    bad_gws = [gateway("gw-1", ready=False),
               gateway("gw-2", config_lag=9.0),
               gateway("gw-3", smoke=smoke_failed("... (an etcd-adapter shim?)")),
               gateway("gw-4", admin=frozen_map({"get_missing_route": fail(
                   "admin", Reason.AUTH, "get_missing_route")}))]
    found = evaluate(snap(bad_peers, bad_gws), NOW, settings)
    found += evaluate(snap([peer("etcd-0", metrics=metrics(watch_streams=104.0))]), NOW,
                      settings)  # fan-out mismatch
    found += evaluate(snap([peer("etcd-0", metrics=metrics(watch_streams=30.0))]), NOW,
                      settings)  # surge in warm-up
    found += evaluate(snap(gateways=[gateway("gw-5", admin=admin_timeout)]), NOW, settings)
    found += evaluate(snap([peer("a", up=False), peer("b", up=False), peer("c")]), NOW,
                      settings)  # quorum lost
    found += evaluate(snap([peer("a", metrics=metrics(has_leader=0.0), wires=frozen_map(
        {"watch_streams": WARMING}))]), NOW, settings)
    kinds_seen = {c.kind for c in found}
    assert len(kinds_seen) >= 17, sorted(kinds_seen)
    anchors = runbook_anchors()
    assert {c.anchor for c in found} <= anchors, {c.anchor for c in found} - anchors
    doc = (Path(__file__).resolve().parents[2] / "docs" / "findings.md").read_text()
    assert not [k for k in kinds_seen if f"`{k}`" not in doc], "finding not in docs/findings.md"


def test_an_alarm_is_one_cluster_finding_naming_its_reporters() -> None:
    """etcd raises alarms cluster-wide: NOSPACE seen by three members is one finding."""
    peers = [peer("etcd-0", alarms=("NOSPACE",)), peer("etcd-1", alarms=("NOSPACE",)),
             peer("etcd-2")]
    found = [c for c in evaluate(snap(peers), NOW, SETTINGS) if c.kind.startswith("etcd_alarm")]
    assert [(c.id, c.severity) for c in found] == [("etcd_alarm_nospace:etcd",
                                                     Severity.CRITICAL)]
    assert "reported by etcd-0, etcd-1" in found[0].summary
    assert "alarm disarm" in found[0].fix and found[0].anchor == "etcdalarmactive"
    assert not [c for c in evaluate(snap(), NOW, SETTINGS) if c.kind.startswith("etcd_alarm")]


def test_a_count_still_growing_through_the_legacy_band_is_a_surge_not_a_mismatch() -> None:
    """A leak passes through the band the pre-3.4 fan-out predicts: while it climbs it is a
    surge; the same count held steady is a fan-out mismatch."""
    gws = tuple(GatewayFanout(f"gw-{i}", 4, "modern", 13) for i in range(2))
    settings = replace(SETTINGS, fanout=gws)
    climbing = tuple((NOW - 20 + 2 * i, 60.0 + 5 * i, None) for i in range(10))  # +150/min
    steady = tuple((NOW - 20 + 2 * i, 104.0, None) for i in range(10))
    leak = [peer(metrics=metrics(watch_streams=104.0), history=climbing)]
    found = kinds(evaluate(snap(leak), NOW, settings))
    assert "watch_surge:etcd" in found and "fanout_mismatch:gateways" not in found
    held = [peer(metrics=metrics(watch_streams=104.0), history=steady)]
    found = kinds(evaluate(snap(held), NOW, settings))
    assert "fanout_mismatch:gateways" in found and "watch_surge:etcd" not in found
