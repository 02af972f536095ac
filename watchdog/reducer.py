"""The reducer: previous snapshot + one job result + the clock -> the next snapshot.

It is the one place where results change what watchdog shows: peers joining and leaving,
polls, gateway checks, smoke runs, expected fan-out, and the counters and histograms that
accumulate (probe latencies and failures live in the snapshot, so a render of one snapshot is
consistent by construction). The trip wire's learned memory (`TripwireBank`) is the only
state kept outside the snapshot; `reduce` feeds it and copies its verdicts in. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from watchdog.config import Config
from watchdog.etcd.job import Discovery, EtcdCycle
from watchdog.etcd.peers import PeerPoll, PeerTarget
from watchdog.findings import FindingSettings, FindingTracker, evaluate
from watchdog.gateway.jobs import GatewayPoll, SmokeRun
from watchdog.results import Reason
from watchdog.shard import Shard
from watchdog.snapshot import (
    HISTORY,
    LATENCY_BUCKETS,
    Calls,
    GatewayState,
    PeerState,
    Snapshot,
    buckets_for,
    frozen_map,
)
from watchdog.tripwire import TripwireBank

ETCD_PROBES = (("json", "range"), ("json", "status"), ("grpc", "range"), ("grpc", "status"))
ADMIN_CALLS = ("get_missing_route",)


@dataclass(frozen=True)
class FanoutEntry:
    """What one gateway predicts: watch streams, and the etcd endpoint it is pinned to."""

    gateway: str
    streams: float | None
    endpoint: str | None


@dataclass(frozen=True)
class Settings:
    """What the reducer needs from the config."""

    grpc_probes: bool = True
    factor: float = 2.0
    fanout: tuple[FanoutEntry, ...] = ()
    names: Mapping[str, str] = field(default_factory=dict)  # configured: endpoint -> label
    probe_buckets: tuple[float, ...] = LATENCY_BUCKETS  # fitted to etcd.timeout
    admin_buckets: Mapping[str, tuple[float, ...]] = field(default_factory=frozen_map)

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        etcd_timeout = config.etcd.timeout
        return cls(
            grpc_probes=config.etcd.grpc_probes, names=config.etcd.endpoint_names,
            factor=config.tripwire.factor,
            fanout=tuple(FanoutEntry(gw.name, gw.expected_streams(), gw.etcd_endpoint)
                         for gw in config.gateways),
            probe_buckets=buckets_for(etcd_timeout),
            admin_buckets=frozen_map({gw.name: buckets_for(gw.timeout or etcd_timeout)
                                      for gw in config.gateways}),
        )

    def admin_bounds(self, gateway: str) -> tuple[float, ...]:
        return self.admin_buckets.get(gateway, self.probe_buckets)


def initial(config: Config, now: float) -> Snapshot:
    """The snapshot before any job ran: the configured gateways, no peers yet."""
    settings = Settings.from_config(config)
    gateways = {gw.name: _new_gateway(gw.name, gw.admin_url, settings)
                for gw in Shard.of(config).gateways(config.gateways)}
    return Snapshot(started=now, taken=now, factor=settings.factor,
                    interval=config.etcd.interval, gateways=frozen_map(gateways))


def reduce(prev: Snapshot, result: object, now: float, wires: TripwireBank,
           settings: Settings) -> Snapshot:
    """The next snapshot after `result` (an EtcdCycle, GatewayPoll or SmokeRun)."""
    if isinstance(result, EtcdCycle):
        snap = prev
        if result.before is not None:
            snap = apply_discovery(snap, result.before, wires, settings)
        snap = apply_polls(snap, result.polls, now, wires, settings)
        if result.after is not None:
            snap = apply_discovery(snap, result.after, wires, settings)
        return snap
    if isinstance(result, Discovery):
        return apply_discovery(prev, result, wires, settings)
    if isinstance(result, GatewayPoll):
        return _with_gateway(prev, apply_gateway_poll(prev, result, now, settings), now)
    if isinstance(result, SmokeRun):
        return _with_gateway(prev, apply_smoke(prev, result, now), now)
    raise TypeError(f"no reducer for {type(result).__name__}")


def reduce_all(prev: Snapshot, results: Iterable[object], now: float, wires: TripwireBank,
               settings: Settings) -> Snapshot:
    """`reduce` over each result in turn, except that the gateway map is copied once per
    run of gateway results, not once per result (with 1,000 gateways, per result was
    quadratic)."""
    snap = prev
    batch: dict[str, GatewayState] = {}

    def merged(s: Snapshot) -> Snapshot:
        if not batch:
            return s
        gateways = {**s.gateways, **batch}
        batch.clear()
        return replace(s, taken=now, gateways=frozen_map(gateways))

    for result in results:
        if isinstance(result, (GatewayPoll, SmokeRun)):
            old = batch.get(result.name)
            if old is None:
                old = snap.gateways.get(result.name)
            new = _polled_gateway(old, result, now, settings) if isinstance(result, GatewayPoll) \
                else _smoked_gateway(old, result, now)
            if new is not None:
                batch[new.name] = new
        else:
            snap = reduce(merged(snap), result, now, wires, settings)
    return merged(snap)


def apply_discovery(prev: Snapshot, found: Discovery, wires: TripwireBank,
                    settings: Settings) -> Snapshot:
    """Peers that left are dropped (with their learned state); new ones are added. An
    endpoint the member list did not name keeps the member name it had before."""
    names = dict(prev.names)
    targets = []
    for t in found.targets:
        if t.url in settings.names:  # a configured name wins over the member list
            t = PeerTarget(settings.names[t.url], t.url, t.member_id)
            names[t.url] = t.name
        elif t.name == t.url and t.url in names:
            t = PeerTarget(names[t.url], t.url, t.member_id)
        elif t.name != t.url:
            names[t.url] = t.name
        targets.append(t)
    new = {t.name: t for t in targets}
    for gone in prev.peers.keys() - new.keys():
        wires.forget(gone)
    # Before any poll of these peers is observed: learned state of another cluster, or of a
    # replaced member that kept its name, must never judge them.
    wires.identify(found.cluster_id or None, {t.name: t.member_id for t in targets})
    peers: dict[str, PeerState] = {}
    for name, target in new.items():
        old = prev.peers.get(name)
        if old is None:
            peers[name] = _new_peer(name, target.url, target.tls, target.member_id, settings)
        elif (old.endpoint, old.tls) != (target.url, target.tls):
            peers[name] = replace(old, endpoint=target.url, tls=target.tls)
        else:
            peers[name] = old
    return replace(prev, peers=frozen_map(peers), discovery_error=found.error,
                   discovered=True, names=frozen_map(names), members=found.members)


def apply_polls(prev: Snapshot, polls: Iterable[PeerPoll], now: float, wires: TripwireBank,
                settings: Settings) -> Snapshot:
    """One etcd cycle: every polled peer's new state, all numbered with the new cycle."""
    cycle = prev.cycle + 1
    # A poll names its peer as the job knew it; discovery in the same cycle may have named
    # it (a remembered member name for an endpoint): match by URL then.
    by_url = {p.endpoint: name for name, p in prev.peers.items()}
    named = []
    for poll in polls:
        name = by_url.get(poll.target.url) or (
            poll.target.name if poll.target.name in prev.peers else None)
        if name is not None:
            named.append((name, poll))
    polls = [poll for _, poll in named]
    if wires.cluster_id is None:  # no member list read yet (or none to read): Status says
        cluster = next((poll.cluster_id for poll in polls if poll.cluster_id), None)
        if cluster is not None:
            wires.identify(cluster, {})
    peers = dict(prev.peers)
    for name, poll in named:
        peers[name] = _polled_peer(peers[name], poll, cycle, now, wires,
                                   settings.probe_buckets)
    for name, streams in expected_streams(polls, settings.fanout, prev.members).items():
        if name in peers:
            peers[name] = replace(peers[name], expected_streams=streams)
    return replace(prev, cycle=cycle, taken=now, peers=frozen_map(peers))


def _polled_peer(old: PeerState, poll: PeerPoll, cycle: int, now: float,
                 wires: TripwireBank, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> PeerState:
    probes = dict(old.probes)
    # A transport the backend lacks (gRPC on antietcd, say) has no series at all: not a
    # zero, not a failure.
    calls = {key: c for key, c in old.calls.items() if key[0] not in poll.unavailable}
    for result in poll.probes:
        key = (result.api, result.op)
        probes[key] = result
        calls[key] = calls.get(key, Calls.empty(bounds)).record(result)
    poll_failures = old.poll_failures
    if not poll.up and poll.reason is not None:
        poll_failures = _inc(poll_failures, poll.reason)
    metrics = poll.metrics if poll.up else None
    streams = metrics.watch_streams if metrics else None
    wire_states = dict(old.wires)
    # A NaN or negative sample on a peer's page is exported as it is but never learned
    # from (the trip wire rejects it, and one bad page must not fail the whole poll).
    if poll.up and streams is not None and math.isfinite(streams) and streams >= 0:
        wire_states["watch_streams"] = wires.observe(old.name, "watch_streams", streams)
    if poll.connections is not None:
        wire_states["client_connections"] = wires.observe(
            old.name, "client_connections", poll.connections.total)
    ws = wire_states.get("watch_streams")
    history = (*old.history[-(HISTORY - 1):], (now, streams, ws.steady if ws else None))
    return replace(
        old,
        cycle=cycle, up=poll.up, poll_reason=poll.reason.value if poll.reason else "",
        last_poll=now, poll_duration=poll.duration, metrics=metrics,
        connections=poll.connections,
        member_id=poll.member_id or old.member_id, version=poll.version or old.version,
        is_leader=poll.is_leader if poll.up else None, exposed=poll.exposed,
        stream_limit=poll.stream_limit, backend=poll.backend or old.backend,
        reported_version=poll.reported_version or old.reported_version,
        metrics_up=poll.metrics_up,
        metrics_reason=poll.metrics_reason.value if poll.metrics_reason else "",
        unavailable=poll.unavailable, notes=poll.notes,
        alarms=poll.alarms if poll.up else old.alarms,
        revision=poll.revision if poll.revision is not None else old.revision,
        probes=frozen_map(probes), calls=frozen_map(calls), poll_failures=poll_failures,
        wires=frozen_map(wire_states), history=history,
    )


def expected_streams(polls: list[PeerPoll], fanout: Iterable[FanoutEntry],
                     members: int = 0) -> dict[str, float]:
    """Expected watch streams per peer from the gateway inventory.

    A gateway pinned to an etcd endpoint counts fully on that peer; the others are
    spread evenly over the peers that are up (an estimate: clients pick endpoints). A shard
    sees only its share of the members, so it spreads over all `members` of the cluster."""
    by_url = {p.target.url: p.target.name for p in polls}
    up = [p.target.name for p in polls if p.up] or [p.target.name for p in polls]
    spread = members if members > len(polls) else len(up)
    expected: dict[str, float] = {}
    known = False
    for gw in fanout:
        if gw.streams is None:
            continue
        known = True
        pinned = by_url.get(gw.endpoint or "")
        if pinned:
            expected[pinned] = expected.get(pinned, 0.0) + gw.streams
        else:
            for name in up:
                expected[name] = expected.get(name, 0.0) + gw.streams / spread
    if known:
        for p in polls:
            expected.setdefault(p.target.name, 0.0)
    return expected


def apply_gateway_poll(prev: Snapshot, poll: GatewayPoll, now: float,
                       settings: Settings | None = None) -> GatewayState | None:
    return _polled_gateway(prev.gateways.get(poll.name), poll, now, settings)


def _polled_gateway(old: GatewayState | None, poll: GatewayPoll, now: float,
                    settings: Settings | None = None) -> GatewayState | None:
    if old is None:
        return None
    called = poll.admin
    admin = dict(old.admin)
    admin[called.op] = called
    calls = dict(old.admin_calls)
    bounds = (settings or Settings()).admin_bounds(poll.name)
    calls[called.op] = calls.get(called.op, Calls.empty(bounds)).record(called)
    new = replace(old, polled=True, last_poll=now, admin=frozen_map(admin),
                  admin_calls=frozen_map(calls))
    if poll.ready is not None:
        new = replace(new, ready=poll.ready)
    if poll.scraped:
        new = replace(new, etcd_reachable=poll.etcd_reachable,
                      loaded_revision=poll.loaded_revision, config_lag=poll.config_lag)
    return new


def apply_smoke(prev: Snapshot, run: SmokeRun, now: float) -> GatewayState | None:
    return _smoked_gateway(prev.gateways.get(run.name), run, now)


def _smoked_gateway(old: GatewayState | None, run: SmokeRun, now: float) -> GatewayState | None:
    if old is None:
        return None
    failures = old.smoke_failures
    if not run.result.ok:
        failures = _inc(failures, run.result.reason or "protocol")
    return replace(old, smoke=run.result, last_smoke=now, smoke_failures=failures)


def _with_gateway(prev: Snapshot, gw: GatewayState | None, now: float) -> Snapshot:
    if gw is None:
        return prev
    gateways = dict(prev.gateways)
    gateways[gw.name] = gw
    return replace(prev, taken=now, gateways=frozen_map(gateways))


def _new_peer(name: str, url: str, tls: bool, member_id: str, settings: Settings) -> PeerState:
    # Every probe's series exist from the start, at zero, so rate() and alerts see them.
    calls = {key: Calls.empty(settings.probe_buckets) for key in ETCD_PROBES
             if settings.grpc_probes or key[0] != "grpc"}
    return PeerState(name=name, endpoint=url, tls=tls, member_id=member_id,
                     calls=frozen_map(calls))


def _new_gateway(name: str, admin_url: str, settings: Settings) -> GatewayState:
    bounds = settings.admin_bounds(name)
    return GatewayState(name=name, admin_url=admin_url,
                        admin_calls=frozen_map({call: Calls.empty(bounds)
                                                for call in ADMIN_CALLS}))


def _inc(counts: Mapping[str, int], reason: Reason | str) -> Mapping[str, int]:
    key = reason.value if isinstance(reason, Reason) else str(reason)
    out = dict(counts)
    out[key] = out.get(key, 0) + 1
    return frozen_map(out)


class Reducer:
    """Holds the latest snapshot, the trip wire's memory and the findings' hysteresis;
    applies results in order."""

    def __init__(self, config: Config, wires: TripwireBank, clock: Callable[[], float]) -> None:
        self.settings = Settings.from_config(config)
        self.finding_settings = FindingSettings.from_config(config)
        self.findings = FindingTracker(self.finding_settings.open_delay,
                                       self.finding_settings.clear_delay)
        self.wires = wires
        self.clock = clock
        self.snapshot = initial(config, clock())

    def remember(self, names: Mapping[str, str]) -> None:
        """Endpoint -> member names from the saved state (before the first discovery)."""
        self.snapshot = replace(self.snapshot, names=frozen_map({**names,
                                                                 **self.snapshot.names}))

    def reconfigure(self, config: Config, wires: TripwireBank) -> None:
        """A reloaded config: new settings and trip wire; the snapshot keeps its peers and
        the gateways still configured, drops the others and adds the new ones."""
        self.settings = Settings.from_config(config)
        self.finding_settings = FindingSettings.from_config(config)  # open findings are kept
        self.wires = wires
        old = self.snapshot.gateways
        gateways = {}
        for gw in Shard.of(config).gateways(config.gateways):
            state = old.get(gw.name)
            gateways[gw.name] = (_new_gateway(gw.name, gw.admin_url, self.settings)
                                 if state is None
                                 else replace(state, admin_url=gw.admin_url))
        self.snapshot = replace(self.snapshot, factor=self.settings.factor,
                                gateways=frozen_map(gateways))

    def apply(self, result: object) -> tuple[Snapshot, Snapshot]:
        """Apply one result; returns (previous, next) so callers can log what changed.
        The next snapshot carries the findings computed from its own numbers."""
        return self.apply_all((result,))

    def apply_all(self, results: Iterable[object]) -> tuple[Snapshot, Snapshot]:
        """Apply results in order, then compute the findings once: a burst of gateway
        results costs one findings pass (which reads every peer and gateway), not one each."""
        prev = self.snapshot
        now = self.clock()
        snap = reduce_all(prev, results, now, self.wires, self.settings)
        found = self.findings.update(evaluate(snap, now, self.finding_settings), now)
        if snap is not prev or found != snap.findings:
            snap = replace(snap, findings=found)
        self.snapshot = snap
        return prev, snap
