"""The immutable snapshot of everything watchdog has observed: what every output reads.

The reducer (`watchdog.reducer`) is the only code that makes snapshots. Everything that shows
anything (the /metrics collector, the status page, /readyz, the log of state changes) reads
the latest one and nothing else, so all of them agree, and a reader can never see a peer
half-way through an update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from watchdog.results import ProbeResult, Reason

if TYPE_CHECKING:
    from watchdog.etcd.peers import PeerTarget
    from watchdog.etcd.promtext import PeerMetrics
    from watchdog.etcd.sockets import ConnectionCount
    from watchdog.gateway.smoke import SmokeResult
    from watchdog.tripwire import WireState
    from watchdog.verdict import Finding

HISTORY = 120  # points kept per peer for the status page chart
# Few buckets, since every one is a series per peer or gateway: one for a healthy call (a read
# takes milliseconds), one at 1 s (the alerts' threshold), one at half the timeout (so a
# quantile past 1 s reads above 1 s). A call slower than its timeout is a failure, never an
# observation: no bucket above it but +Inf.
LOW_BOUNDS = (0.05, 1.0)


def buckets_for(timeout: float) -> tuple[float, ...]:
    """The finite bucket bounds of a latency histogram for calls bounded by `timeout`."""
    return tuple(sorted({b for b in (*LOW_BOUNDS, timeout / 2) if 0 < b < timeout}))


LATENCY_BUCKETS = buckets_for(5.0)  # the default etcd.timeout
REASONS = tuple(r.value for r in Reason)


K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V] | None = None) -> Mapping[K, V]:
    """A read-only view of a fresh copy of `items`."""
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True, slots=True)
class Latency:
    """A cumulative latency histogram: counts per bucket (not cumulative), total and sum."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: tuple[int, ...] = (0,) * len(LATENCY_BUCKETS)
    count: int = 0
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Latency:
        return cls(bounds, (0,) * len(bounds))

    def observe(self, seconds: float) -> Latency:
        counts = list(self.counts)
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                counts[i] += 1
                break
        return Latency(self.bounds, tuple(counts), self.count + 1, self.total + seconds)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, +Inf last, as exposition wants them."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            running += n
            out.append((bound, running))
        out.append((float("inf"), self.count))
        return out


@dataclass(frozen=True, slots=True)
class Calls:
    """Accumulated outcomes of one kind of call: latency of successes, failures by reason."""

    latency: Latency = field(default_factory=Latency)

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Calls:
        return cls(latency=Latency.empty(bounds))
    failures: Mapping[str, int] = field(default_factory=lambda: frozen_map(
        dict.fromkeys(REASONS, 0)))

    def record(self, result: ProbeResult) -> Calls:
        if result.ok:
            return replace(self, latency=self.latency.observe(result.duration))
        assert result.reason is not None
        failures = dict(self.failures)
        failures[result.reason.value] = failures.get(result.reason.value, 0) + 1
        return replace(self, failures=frozen_map(failures))


@dataclass(frozen=True, slots=True)
class PeerState:
    """Everything known about one etcd peer, as of the poll cycle `cycle`."""

    name: str
    endpoint: str
    member_id: str = ""
    version: str = ""
    tls: bool = False
    cycle: int = 0  # the etcd cycle of the last poll applied (0: not polled yet)
    up: bool = False
    poll_reason: str = ""
    last_poll: float = 0.0
    poll_duration: float = 0.0
    metrics: PeerMetrics | None = None
    connections: ConnectionCount | None = None
    probes: Mapping[tuple[str, str], ProbeResult] = field(default_factory=frozen_map)
    calls: Mapping[tuple[str, str], Calls] = field(default_factory=frozen_map)
    poll_failures: Mapping[str, int] = field(default_factory=lambda: frozen_map(
        dict.fromkeys(REASONS, 0)))
    revision: int | None = None
    is_leader: bool | None = None
    exposed: bool | None = None
    stream_limit: int | None = None
    backend: str = ""  # etcd, kine, etcd-adapter, antietcd, unknown ("": not told yet)
    reported_version: str = ""  # what a shim claims to be
    metrics_up: bool | None = None  # its /metrics page; None: the backend has none
    metrics_reason: str = ""
    unavailable: frozenset[str] = frozenset()  # signals the backend cannot provide
    notes: tuple[str, ...] = ()
    alarms: tuple[str, ...] = ()  # active etcd alarms: NOSPACE (writes refused), CORRUPT
    expected_streams: float | None = None
    wires: Mapping[str, WireState] = field(default_factory=frozen_map)
    history: tuple[tuple[float, float | None, float | None], ...] = ()

    @property
    def polled(self) -> bool:
        return self.cycle > 0

    @property
    def watch_streams(self) -> float | None:
        return self.metrics.watch_streams if self.metrics else None

    @property
    def target(self) -> PeerTarget:
        from watchdog.etcd.peers import PeerTarget

        return PeerTarget(name=self.name, url=self.endpoint, member_id=self.member_id)


@dataclass(frozen=True, slots=True)
class GatewayState:
    """Everything known about one gateway after its last checks."""

    name: str
    admin_url: str
    polled: bool = False
    last_poll: float = 0.0
    admin: Mapping[str, ProbeResult] = field(default_factory=frozen_map)
    admin_calls: Mapping[str, Calls] = field(default_factory=frozen_map)
    ready: bool | None = None
    etcd_reachable: float | None = None
    loaded_revision: float | None = None
    config_lag: float | None = None
    smoke: SmokeResult | None = None
    last_smoke: float = 0.0
    smoke_failures: Mapping[str, int] = field(default_factory=lambda: frozen_map(
        dict.fromkeys(REASONS, 0)))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent picture: numbered by etcd poll cycle, stamped with its time."""

    cycle: int = 0
    taken: float = 0.0
    started: float = 0.0
    factor: float = 2.0  # the trip wire's factor, for readers that draw the trip line
    interval: float = 15.0  # the etcd poll interval, for readers that judge ages
    peers: Mapping[str, PeerState] = field(default_factory=frozen_map)
    gateways: Mapping[str, GatewayState] = field(default_factory=frozen_map)
    discovery_error: str = ""
    discovered: bool = False  # the member list was read (or given up on) at least once
    # Members in the whole cluster as the last discovery counted them, this shard's share
    # or not (0: unknown); a shard spreads unpinned fan-out over all of them, not its own.
    members: int = 0
    # Client URL -> member name, as the member list said (saved with the learned state), so
    # a peer that is down when watchdog starts keeps its member name, not its URL.
    names: Mapping[str, str] = field(default_factory=frozen_map)
    findings: tuple[Finding, ...] = ()  # open findings, computed from this snapshot's numbers

    @property
    def targets(self) -> list[PeerTarget]:
        """The peers to poll, in name order."""
        return [p.target for p in sorted(self.peers.values(), key=lambda p: p.name)]

    def json_healthy(self) -> list[PeerTarget]:
        """Peers whose last JSON-gateway read succeeded (a stalled gateway is up through
        gRPC but not here), else the peers that are up at all."""
        peers = sorted(self.peers.values(), key=lambda p: p.name)
        healthy = [p.target for p in peers
                   if (read := p.probes.get(("json", "range"))) is not None and read.ok]
        return healthy or [p.target for p in peers if p.up]

    def ready(self) -> bool:
        """True once every known peer and gateway has been polled at least once."""
        if not self.peers:
            return self.discovered  # a shard may own no peer at all
        return all(p.polled for p in self.peers.values()) and all(
            g.polled for g in self.gateways.values()
        )

    def waiting_for(self) -> list[str]:
        """Names of the peers and gateways not polled yet."""
        return [p.name for p in self.peers.values() if not p.polled] + [
            g.name for g in self.gateways.values() if not g.polled
        ]
