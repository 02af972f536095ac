"""The reducer: previous snapshot + result + clock -> next snapshot, with no I/O.

Results are built from real types (PeerPoll with a page parsed from a captured etcd
/metrics fixture); the clock is a plain counter."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from watchdog.config import Config, config_from_dict
from watchdog.etcd.job import Discovery, EtcdCycle
from watchdog.etcd.peers import PeerPoll, PeerTarget
from watchdog.etcd.promtext import PeerMetrics, parse_peer_metrics
from watchdog.events import changes
from watchdog.gateway.jobs import GatewayPoll, SmokeRun
from watchdog.gateway.smoke import SmokeResult
from watchdog.reducer import Reducer, Settings, expected_streams, reduce
from watchdog.results import ProbeResult, Reason
from watchdog.snapshot import Snapshot
from watchdog.tripwire import TripwireBank, TripwireSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "etcd"
A = PeerTarget("etcd-0", "https://127.0.0.1:2379", "a1")
B = PeerTarget("etcd-1", "https://127.0.0.1:2381", "b2")
C = PeerTarget("etcd-2", "https://127.0.0.1:2383", "c3")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def page() -> PeerMetrics:
    return parse_peer_metrics((FIXTURES / "etcd-3.5.1-tls-idle.metrics").read_bytes())


def make_config(**etcd: object) -> Config:
    return config_from_dict({
        "etcd": {"endpoints": [A.url], **etcd},
        "gateways": [{"name": "gw-1", "admin_url": "http://127.0.0.1:9180", "workers": 2,
                      "sync_mode": "modern"}],
        "state_dir": "/nonexistent-never-written",
    })


def make_reducer(config: Config | None = None, warmup: float = 3600.0
                 ) -> tuple[Reducer, Clock, TripwireBank]:
    clock = Clock()
    bank = TripwireBank(TripwireSettings(warmup=warmup, hold=0.0), clock=clock)
    return Reducer(config or make_config(), bank, clock), clock, bank


def probe(api: str, op: str, duration: float = 0.02, reason: Reason | None = None
          ) -> ProbeResult:
    return ProbeResult(api=api, op=op, ok=reason is None, duration=duration, reason=reason)


def up_poll(target: PeerTarget, page: PeerMetrics, streams: float | None = None,
            probes: tuple[ProbeResult, ...] = ()) -> PeerPoll:
    metrics = page if streams is None else dataclasses.replace(page, watch_streams=streams)
    return PeerPoll(target=target, up=True, reason=None, duration=0.05, metrics=metrics,
                    probes=list(probes), version="3.5.1", member_id=target.member_id,
                    is_leader=target is A, revision=42)


def down_poll(target: PeerTarget, reason: Reason = Reason.REFUSED) -> PeerPoll:
    return PeerPoll(target=target, up=False, reason=reason, duration=0.01,
                    probes=[probe("json", "range", reason=reason)])


def test_initial_snapshot_has_the_gateways_and_no_peers() -> None:
    reducer, clock, _ = make_reducer()
    snap = reducer.snapshot
    assert (snap.cycle, snap.started, snap.factor) == (0, clock.now, 2.0)
    assert list(snap.gateways) == ["gw-1"] and not snap.peers
    assert not snap.ready() and snap.waiting_for() == ["gw-1"]


def test_snapshots_are_immutable_and_reduce_leaves_the_previous_one_alone(
        page: PeerMetrics) -> None:
    reducer, clock, _ = make_reducer()
    first, _ = reducer.apply(EtcdCycle(polls=(), before=Discovery((A,))))
    _, found = first, reducer.snapshot
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.cycle = 7  # type: ignore[misc]
    with pytest.raises(TypeError):
        found.peers["x"] = found.peers["etcd-0"]  # type: ignore[index]
    before = reducer.snapshot
    clock.now += 1
    reducer.apply(EtcdCycle(polls=(up_poll(A, page, probes=(probe("json", "range"),)),)))
    assert before.peers["etcd-0"].calls[("json", "range")].latency.count == 0
    assert reducer.snapshot.peers["etcd-0"].calls[("json", "range")].latency.count == 1


def test_first_cycle_discovers_then_polls_all_under_one_cycle_number(page: PeerMetrics) -> None:
    reducer, clock, _ = make_reducer()
    probes = (probe("json", "range", 0.004), probe("grpc", "range", 0.3),
              probe("json", "status", reason=Reason.TIMEOUT))
    _, snap = reducer.apply(EtcdCycle(
        polls=(up_poll(A, page, 12, probes), up_poll(B, page, 8)),
        before=Discovery((A, B, C))))
    assert snap.cycle == 1 and snap.taken == clock.now and snap.discovered
    assert [p.cycle for p in snap.peers.values()] == [1, 1, 0]  # etcd-2 not polled yet
    peer = snap.peers["etcd-0"]
    assert (peer.up, peer.watch_streams, peer.version, peer.is_leader, peer.revision) == (
        True, 12, "3.5.1", True, 42)
    json_range = peer.calls[("json", "range")]
    assert (json_range.latency.count, json_range.latency.total) == (1, 0.004)
    assert json_range.latency.cumulative()[0] == (0.05, 1)  # 4 ms falls in the 50 ms bucket
    assert peer.calls[("json", "status")].failures["timeout"] == 1
    assert peer.calls[("grpc", "status")].latency.count == 0  # pre-created at zero
    assert not snap.ready()


def test_grpc_series_are_not_created_when_grpc_probes_are_off() -> None:
    reducer, _, _ = make_reducer(make_config(grpc_probes=False))
    _, snap = reducer.apply(Discovery((A,)))
    assert set(snap.peers["etcd-0"].calls) == {("json", "range"), ("json", "status")}


def test_a_lost_peer_is_down_with_its_reason_and_keeps_what_it_knew(page: PeerMetrics) -> None:
    reducer, clock, _ = make_reducer()
    reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10),), before=Discovery((A,))))
    clock.now += 5
    prev, snap = reducer.apply(EtcdCycle(polls=(down_poll(A),)))
    peer = snap.peers["etcd-0"]
    assert (peer.cycle, peer.up, peer.poll_reason, peer.metrics, peer.is_leader) == (
        2, False, "refused", None, None)
    assert peer.revision == 42 and peer.version == "3.5.1" and peer.member_id == "a1"
    assert peer.poll_failures["refused"] == 1 and peer.poll_failures["timeout"] == 0
    assert peer.calls[("json", "range")].failures["refused"] == 1
    assert [h[1] for h in peer.history] == [10, None]
    assert (logging.WARNING, "peer down peer=etcd-0 reason=refused") in list(changes(prev, snap))


def test_a_peer_down_from_its_first_poll_is_logged(page: PeerMetrics) -> None:
    reducer, _, _ = make_reducer()
    prev = reducer.snapshot
    _, snap = reducer.apply(EtcdCycle(polls=(down_poll(A, Reason.TLS),),
                                      before=Discovery((A,))))
    assert (logging.WARNING, "peer down peer=etcd-0 reason=tls first_poll=true") in list(
        changes(prev, snap))


def test_discovery_beside_the_polls_applies_after_them(page: PeerMetrics) -> None:
    reducer, clock, bank = make_reducer(warmup=0.0)
    reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10), up_poll(B, page, 10)),
                            before=Discovery((A, B))))
    assert bank.state("etcd-1", "watch_streams") is not None
    clock.now += 5
    # etcd-1 left and etcd-2 joined: this cycle's polls (of A and B) are applied first.
    prev, snap = reducer.apply(EtcdCycle(
        polls=(up_poll(A, page, 10), up_poll(B, page, 10)), after=Discovery((A, C))))
    assert snap.cycle == 2 and sorted(snap.peers) == ["etcd-0", "etcd-2"]
    assert snap.peers["etcd-2"].cycle == 0 and snap.peers["etcd-0"].cycle == 2
    assert bank.state("etcd-1", "watch_streams") is None  # its learned state is gone
    events = [m for _, m in changes(prev, snap)]
    assert "peer left peer=etcd-1" in events
    assert f"watching peer peer=etcd-2 url={C.url}" in events
    assert [t.name for t in snap.targets] == ["etcd-0", "etcd-2"]


def test_a_moved_member_keeps_its_state_and_a_discovery_error_is_shown(page: PeerMetrics) -> None:
    reducer, _, _ = make_reducer()
    reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10),), before=Discovery((A,))))
    moved = PeerTarget(A.name, "http://127.0.0.1:2479", A.member_id)
    _, snap = reducer.apply(Discovery((moved,), error="member list from x: timeout: slow"))
    peer = snap.peers["etcd-0"]
    assert (peer.endpoint, peer.tls, peer.cycle, peer.watch_streams) == (moved.url, False, 1, 10)
    assert snap.discovery_error.startswith("member list")


def test_polls_of_peers_no_longer_known_are_ignored(page: PeerMetrics) -> None:
    reducer, _, _ = make_reducer()
    reducer.apply(Discovery((A,)))
    _, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page), up_poll(B, page))))
    assert list(snap.peers) == ["etcd-0"]


def test_gateway_results_between_etcd_cycles_touch_only_their_gateway(page: PeerMetrics) -> None:
    reducer, clock, _ = make_reducer()
    reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10),), before=Discovery((A,))))
    before = reducer.snapshot
    clock.now += 2
    admin = ProbeResult(api="admin", op="get_missing_route", ok=True, duration=0.03)
    _, snap = reducer.apply(GatewayPoll("gw-1", admin, ready=True, scraped=True,
                                        etcd_reachable=1.0, loaded_revision=40, config_lag=2))
    assert snap.cycle == before.cycle == 1 and snap.taken == clock.now
    assert snap.peers["etcd-0"] is before.peers["etcd-0"]
    gw = snap.gateways["gw-1"]
    assert (gw.polled, gw.ready, gw.config_lag, gw.last_poll) == (True, True, 2, clock.now)
    assert gw.admin_calls["get_missing_route"].latency.count == 1
    assert snap.ready()
    # A poll without a metrics page leaves the scraped state as it was.
    failed = ProbeResult(api="admin", op="get_missing_route", ok=False, duration=2.0,
                         reason=Reason.TIMEOUT)
    prev, snap = reducer.apply(GatewayPoll("gw-1", failed))
    assert snap.gateways["gw-1"].config_lag == 2 and snap.gateways["gw-1"].ready is True
    assert snap.gateways["gw-1"].admin_calls["get_missing_route"].failures["timeout"] == 1
    assert any(m.startswith("admin call failed gateway=gw-1 reason=timeout")
               for _, m in changes(prev, snap))
    clock.now += 1
    smoke = SmokeResult(gateway="gw-1", ok=False, phase="propagation", message="not served",
                        reason=Reason.TIMEOUT)
    _, snap = reducer.apply(SmokeRun("gw-1", smoke))
    gw = snap.gateways["gw-1"]
    assert gw.smoke is smoke and gw.last_smoke == clock.now and gw.smoke_failures["timeout"] == 1
    assert snap.peers is not before.peers or snap.peers == before.peers


def test_results_for_unknown_gateways_change_nothing() -> None:
    reducer, _, _ = make_reducer()
    before = reducer.snapshot
    admin = ProbeResult(api="admin", op="get_missing_route", ok=True, duration=0.03)
    _, snap = reducer.apply(GatewayPoll("nope", admin))
    assert snap is before
    with pytest.raises(TypeError):
        reduce(before, object(), 0.0, TripwireBank(TripwireSettings()), Settings())


def test_the_trip_wire_is_fed_through_the_reducer(page: PeerMetrics) -> None:
    reducer, clock, _ = make_reducer(warmup=0.0)
    reducer.apply(Discovery((A,)))
    for _ in range(3):
        clock.now += 1
        reducer.apply(EtcdCycle(polls=(up_poll(A, page, 20),)))
    clock.now += 1
    prev, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page, 50),)))
    wire = snap.peers["etcd-0"].wires["watch_streams"]
    assert wire.tripped and wire.steady == 20
    assert snap.peers["etcd-0"].history[-1] == (clock.now, 50, 20)
    assert any(m.startswith("trip wire tripped peer=etcd-0 signal=watch_streams")
               for _, m in changes(prev, snap))
    # A NaN page is shown as it is but never learned from.
    clock.now += 1
    _, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page, float("nan")),)))
    assert snap.peers["etcd-0"].wires["watch_streams"].steady == 20


def test_the_snapshot_carries_the_wires_own_warmup_left_across_a_restart(
        page: PeerMetrics) -> None:
    clock = Clock()
    before = TripwireBank(TripwireSettings(warmup=3600.0), clock=clock, monotonic=clock,
                          boot="b")
    for _ in range(41):  # ten minutes of warm-up, then watchdog restarts
        before.observe("etcd-0", "watch_streams", 10.0)
        clock.now += 15
    bank = TripwireBank(TripwireSettings(warmup=3600.0), clock=clock, monotonic=clock, boot="b")
    assert bank.load_dict(before.to_dict(), max_age=3600) == []
    reducer = Reducer(make_config(), bank, clock)
    reducer.apply(Discovery((A,)))
    _, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10),)))
    assert snap.peers["etcd-0"].wires["watch_streams"].warmup_left == 3600 - 615
    clock.now += 3600 - 615
    _, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10),)))
    wire = snap.peers["etcd-0"].wires["watch_streams"]
    assert wire.armed and wire.warmup_left is None


def test_expected_streams_pinned_and_spread(page: PeerMetrics) -> None:
    from watchdog.reducer import FanoutEntry

    polls = [up_poll(A, page), up_poll(B, page), down_poll(C)]
    fanout = [FanoutEntry("gw-1", 8, None), FanoutEntry("gw-2", 3, B.url),
              FanoutEntry("gw-3", None, None)]
    assert expected_streams(polls, fanout) == {"etcd-0": 4.0, "etcd-1": 7.0, "etcd-2": 0.0}
    assert expected_streams(polls, [FanoutEntry("gw-3", None, None)]) == {}
    reducer, _, _ = make_reducer()
    _, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page),), before=Discovery((A,))))
    assert snap.peers["etcd-0"].expected_streams == 3.0  # gw-1: 2 workers + agent, modern


def test_a_shard_spreads_unpinned_fanout_over_the_whole_cluster(page: PeerMetrics) -> None:
    from watchdog.reducer import FanoutEntry

    # One shard of three holds etcd-0 alone; the gateway's 9 streams go to 3 members, so
    # this shard expects 3 on its peer, not all 9.
    fanout = [FanoutEntry("gw-1", 9, None)]
    assert expected_streams([up_poll(A, page)], fanout, members=3) == {"etcd-0": 3.0}
    assert expected_streams([up_poll(A, page)], fanout) == {"etcd-0": 9.0}
    reducer, _, _ = make_reducer()
    _, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page),),
                                      before=Discovery((A,), members=2)))
    assert snap.members == 2
    # gw-1: 2 workers + the privileged agent, modern sync: 3 streams over 2 members
    assert snap.peers["etcd-0"].expected_streams == 1.5


def test_snapshot_defaults_are_empty() -> None:
    snap = Snapshot()
    assert (snap.cycle, dict(snap.peers), snap.targets, snap.ready()) == (0, {}, [], False)


def test_config_lag_is_read_through_a_peer_whose_json_gateway_answers(page: PeerMetrics) -> None:
    reducer, _, _ = make_reducer()
    stalled = up_poll(A, page, 250, (probe("json", "range", reason=Reason.TIMEOUT),
                                     probe("grpc", "range")))
    _, snap = reducer.apply(EtcdCycle(
        polls=(stalled, up_poll(B, page, 10, (probe("json", "range"),))),
        before=Discovery((A, B))))
    assert snap.peers["etcd-0"].up  # gRPC answers: the stalled peer is up...
    assert [t.name for t in snap.json_healthy()] == ["etcd-1"]  # ...but not read through
    _, snap = reducer.apply(EtcdCycle(polls=(stalled, down_poll(B))))
    assert [t.name for t in snap.json_healthy()] == ["etcd-0"]  # the best there is


def test_an_endpoint_keeps_its_member_name_when_the_member_list_cannot_say(
        page: PeerMetrics) -> None:
    reducer, _, _ = make_reducer()
    reducer.apply(Discovery((A,)))
    # The member list is unreachable: discovery names the endpoint by its URL...
    _, snap = reducer.apply(Discovery((PeerTarget(A.url, A.url),), error="timeout"))
    assert list(snap.peers) == ["etcd-0"]  # ...but the peer keeps its series' name
    assert dict(snap.names) == {A.url: "etcd-0"}
    # A restart: the saved names are remembered before the first discovery.
    fresh, _, _ = make_reducer()
    fresh.remember(snap.names)
    by_url = PeerTarget(A.url, A.url)  # what the job polls in that first cycle
    _, snap = fresh.apply(EtcdCycle(polls=(down_poll(by_url),), before=Discovery((by_url,))))
    assert list(snap.peers) == ["etcd-0"]
    assert snap.peers["etcd-0"].polled and not snap.peers["etcd-0"].up


def test_stream_headroom_crossing_is_logged_once_each_way(page: PeerMetrics) -> None:
    reducer, _, _ = make_reducer()
    exposed = dataclasses.replace(up_poll(A, page, 200), exposed=True, stream_limit=250)
    reducer.apply(EtcdCycle(polls=(exposed,), before=Discovery((A,))))
    messages = []
    for streams in (230, 240, 249, 200):
        prev, snap = reducer.apply(EtcdCycle(polls=(dataclasses.replace(
            exposed, metrics=dataclasses.replace(page, watch_streams=streams)),)))
        messages += [m for _, m in changes(prev, snap) if "headroom" in m]
    assert messages == ["stream headroom low peer=etcd-0 headroom=20 limit=250",
                        "stream headroom recovered peer=etcd-0 headroom=50"]


def learned_on(cluster: str, page: PeerMetrics) -> dict[str, object]:
    """The trip wire's saved state after peer A learned 10 streams on `cluster`."""
    reducer, _, bank = make_reducer(warmup=0.0)  # armed at the second sample
    reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10),),
                            before=Discovery((A,), cluster_id=cluster)))
    reducer.apply(EtcdCycle(polls=(up_poll(A, page, 10),)))
    data = bank.to_dict()
    assert data["cluster_id"] == cluster and data["members"] == {"etcd-0": "a1"}
    return data


@pytest.mark.fault(
    "another cluster's learned state when no member list can be read (Status names the cluster)",
    reports="discarded before the first poll is judged, with the same warning; a fresh wire",
    within="the first poll")
@pytest.mark.parametrize("via", ["member list", "status"])
def test_state_of_another_cluster_never_judges_the_first_poll(page: PeerMetrics,
                                                              via: str) -> None:
    saved = learned_on("aaaa", page)
    reducer, _, bank = make_reducer(warmup=0.0)
    assert bank.load_dict(saved, max_age=3600) == [] and bank.wire_count() == 1
    # The same member name and id on another cluster, holding 10x the learned streams.
    poll = up_poll(A, page, 100)
    if via == "status":  # no member list (kine, or a refused one): Status names the cluster
        found, poll = Discovery((A,), error="member list: auth"), \
            dataclasses.replace(poll, cluster_id="bbbb")
    else:
        found = Discovery((A,), cluster_id="bbbb")
    _, snap = reducer.apply(EtcdCycle(polls=(poll,), before=found))
    wire = snap.peers["etcd-0"].wires["watch_streams"]
    assert not wire.tripped and wire.steady is None  # a fresh wire, nothing inherited
    assert bank.drain_warnings() == [
        "foreign state discarded: learned on cluster aaaa, this is cluster bbbb"]
    assert bank.drain_warnings() == [] and bank.to_dict()["cluster_id"] == "bbbb"


def test_state_of_the_same_cluster_judges_at_once(page: PeerMetrics) -> None:
    saved = learned_on("aaaa", page)
    reducer, _, bank = make_reducer(warmup=3600.0)
    bank.load_dict(saved, max_age=3600)
    _, snap = reducer.apply(EtcdCycle(polls=(up_poll(A, page, 100),),
                                      before=Discovery((A,), cluster_id="aaaa")))
    wire = snap.peers["etcd-0"].wires["watch_streams"]
    assert wire.tripped and wire.steady == 10 and bank.drain_warnings() == []


def test_a_batch_of_results_gives_what_they_give_one_by_one(page: PeerMetrics) -> None:
    one, _, _ = make_reducer()
    batch, _, _ = make_reducer()
    slow = ProbeResult(api="admin", op="get_missing_route", ok=False, duration=4.0,
                       reason=Reason.TIMEOUT)
    fast = ProbeResult(api="admin", op="get_missing_route", ok=True, duration=0.03)
    results = [EtcdCycle(polls=(up_poll(A, page, 10),), before=Discovery((A,))),
               GatewayPoll("gw-1", fast), GatewayPoll("gw-1", slow), GatewayPoll("nope", fast)]
    for result in results:
        one.apply(result)
    prev, snap = batch.apply_all(results)
    assert prev.cycle == 0 and snap is batch.snapshot
    a, b = one.snapshot.gateways["gw-1"], snap.gateways["gw-1"]
    assert a.admin_calls == b.admin_calls and a.admin == b.admin
    assert b.admin_calls["get_missing_route"].failures["timeout"] == 1
    assert [f.id for f in one.snapshot.findings] == [f.id for f in snap.findings]
    assert any(m.startswith("admin call failed gateway=gw-1") for _, m in changes(prev, snap))


async def test_the_daemon_applies_queued_gateway_results_together(tmp_path: Path) -> None:
    from watchdog.daemon import BATCH_DELAY, Daemon

    config = config_from_dict({
        "etcd": {"endpoints": [A.url]},
        "gateways": [{"name": f"gw-{i}", "admin_url": f"http://127.0.0.1:{9180 + i}"}
                     for i in range(3)],
        "state_dir": str(tmp_path),
    })
    daemon = Daemon(config)
    calls: list[int] = []
    apply_all = daemon.reducer.apply_all

    def counting(results):  # type: ignore[no-untyped-def]
        results = list(results)
        calls.append(len(results))
        return apply_all(results)

    daemon.reducer.apply_all = counting  # type: ignore[method-assign]
    fast = ProbeResult(api="admin", op="get_missing_route", ok=True, duration=0.03)
    for i in range(3):
        daemon.deliver_batched(GatewayPoll(f"gw-{i}", fast))
    assert not any(g.polled for g in daemon.snapshot().gateways.values())
    await asyncio.sleep(BATCH_DELAY * 3)
    assert calls == [3]
    assert all(g.polled for g in daemon.snapshot().gateways.values())
    daemon.deliver_batched(GatewayPoll("gw-0", fast))
    await daemon.stop()  # flushes what is queued
    assert calls == [3, 1]
