"""Findings: verdicts (what is wrong, where, why, what to do) computed from one snapshot.

Pure: the clock is passed in and nothing here does I/O. `evaluate` reads a snapshot and
returns the conditions that hold right now (`Candidate`s); `FindingTracker` adds hysteresis
(a condition opens only after it held for `open_after` seconds over at least two
evaluations, and clears only after it was absent for `clear_after` seconds), so a finding
never flaps. The reducer runs both after every result and stores the open `Finding`s in the
snapshot, so findings are computed from exactly the numbers /metrics shows beside them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from watchdog.etcd.exposure import STREAM_LIMIT, limit_of
from watchdog.verdict import Candidate, Evidence, Finding, Severity, failing, worst

if TYPE_CHECKING:
    from watchdog.config import Config
    from watchdog.snapshot import GatewayState, PeerState, Snapshot

__all__ = ["Candidate", "Evidence", "Finding", "FindingTracker", "Severity", "evaluate",
           "failing", "worst"]


# -- settings -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayFanout:
    """One gateway's configured watch fan-out."""

    name: str
    workers: int | None
    sync_mode: str  # legacy | modern
    prefixes: int

    def streams(self, mode: str) -> int:
        """Watches in `mode`: one per config-syncing Lua VM, i.e. the workers plus the
        privileged agent (as `GatewayConfig.expected_streams`), per prefix in legacy."""
        vms = (self.workers or 0) + 1
        return vms * self.prefixes if mode == "legacy" else vms


@dataclass(frozen=True, slots=True)
class FindingSettings:
    """Thresholds and the static config the rules need beside the snapshot."""

    interval: float = 15.0
    timeout: float = 5.0
    warmup: float = 3600.0
    probe_key: str = "/apisix/watchdog/probe"
    fanout: tuple[GatewayFanout, ...] = ()
    json_slow: float = 1.0  # seconds: a JSON read slower than this (with gRPC fast) stalls
    admin_slow: float = 1.0  # seconds: an admin call slower than this is slow
    etcd_fast: float = 0.25  # seconds: etcd counts as fast when JSON reads answer within this
    headroom_warn: float = 25.0  # streams below the 250 limit that warn
    stale_lag: float = 1.0  # config revisions behind that count as stale
    quota_warn: float = 0.8
    quota_critical: float = 0.95
    fsync_p99: float = 0.1  # seconds; etcd wants < 10 ms, at 100 ms leaders are lost
    fanout_tolerance: float = 0.5  # observed within +-50 % of a prediction "fits" it
    # Fleet-wide streams per minute above which the count is still moving: a leak or a
    # rollout, judged as a surge, never as a (steady) fan-out mismatch.
    growing_per_min: float = 2.0
    factor: float = 2.0  # the trip wire's factor, applied to the expected fan-out in warm-up
    min_streams: float = 10.0
    open_after: float | None = None  # default: one interval
    clear_after: float | None = None  # default: two intervals

    @classmethod
    def from_config(cls, config: Config) -> FindingSettings:
        return cls(
            interval=config.etcd.interval, timeout=config.etcd.timeout,
            warmup=config.tripwire.warmup, probe_key=config.etcd.probe_key,
            factor=config.tripwire.factor, min_streams=config.tripwire.min_streams,
            fanout=tuple(GatewayFanout(g.name, g.workers, g.sync_mode, g.watched_prefixes)
                         for g in config.gateways),
        )

    @property
    def open_delay(self) -> float:
        return self.interval if self.open_after is None else self.open_after

    @property
    def clear_delay(self) -> float:
        return 2 * self.interval if self.clear_after is None else self.clear_after


# -- evaluate -----------------------------------------------------------------------------


def evaluate(snap: Snapshot, now: float, settings: FindingSettings | None = None
             ) -> list[Candidate]:
    """Every condition that holds in `snap` at `now`, worst first."""
    s = settings or FindingSettings()
    out: list[Candidate] = []
    peers = sorted(snap.peers.values(), key=lambda p: p.name)
    # A shard holds a share of the members: quorum and the fleet's fan-out are judged only
    # where the whole cluster is in view (the alerts see every shard's series together).
    whole = snap.members <= len(peers)
    out += _cluster(peers, now, whole)
    for peer in peers:
        out += _peer(peer, now, s)
    if whole:
        out += _fanout(peers, now, s)
    etcd_json = _etcd_json(peers)
    for gw in sorted(snap.gateways.values(), key=lambda g: g.name):
        out += _gateway(gw, now, s, etcd_json)
    out.sort(key=lambda c: (-c.severity.rank, c.kind, c.subject))
    return out


def _age(now: float, at: float) -> float:
    return max(0.0, now - at) if at else 0.0


def _int(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _cluster(peers: list[PeerState], now: float, whole: bool = True) -> Iterator[Candidate]:
    polled = [p for p in peers if p.polled]
    if not polled:
        return
    up = [p for p in polled if p.up]
    n, quorum = len(polled), len(polled) // 2 + 1
    ev = tuple(Evidence(f"peer {p.name}", "up" if p.up else f"down ({p.poll_reason})",
                        _age(now, p.last_poll)) for p in polled)
    if whole and len(up) < quorum:
        yield Candidate(
            "quorum_lost", Severity.CRITICAL, "cluster", "etcd",
            f"etcd has lost quorum: {len(up)} of {n} members up, {quorum} needed",
            ev, "a majority of members is down or unreachable: no writes, no linearizable reads",
            "bring members back (systemctl start etcd / restart the pods); check disks and the "
            "network between members; do not remove members while quorum is lost",
            "etcdinsufficientmembers")
    elif whole and n > 1 and len(up) == quorum and len(up) < n:
        yield Candidate(
            "quorum_at_risk", Severity.WARNING, "cluster", "etcd",
            f"quorum at risk: {len(up)} of {n} members up, one more failure stops etcd",
            ev, "members are down; the cluster runs without failure margin",
            "bring the down members back before any maintenance",
            "etcdinsufficientmembers")
    # etcd raises alarms cluster-wide (through raft): one finding, naming who reported it.
    for alarm in sorted({a for p in polled for a in p.alarms}):
        reporters = [p for p in polled if alarm in p.alarms]
        names = ", ".join(p.name for p in reporters)
        yield Candidate(
            f"etcd_alarm_{alarm.lower()}", Severity.CRITICAL, "cluster", "etcd",
            f"etcd alarm {alarm} is active (reported by {names})"
            + (": every write is refused (APISIX admin changes, deploys, canaries) until it "
               "is disarmed" if alarm == "NOSPACE" else ""),
            tuple(Evidence(f"Status of {p.name}", f"alarm:{alarm}", _age(now, p.last_poll))
                  for p in reporters),
            "the database reached --quota-backend-bytes" if alarm == "NOSPACE"
            else "a member's data differs from the others'",
            "etcdctl compact <revision>; etcdctl defrag (every member); etcdctl alarm disarm"
            if alarm == "NOSPACE" else "remove the member, wipe its data dir, add it back",
            "etcdalarmactive")
    leaderless = [p for p in up if p.metrics is not None and p.metrics.has_leader == 0]
    if up and len(leaderless) == len(up):
        yield Candidate(
            "no_leader", Severity.CRITICAL, "cluster", "etcd",
            f"no etcd leader: {len(leaderless)} of {len(up)} reachable members see none",
            tuple(Evidence(f"etcd_server_has_leader on {p.name}", "0", _age(now, p.last_poll))
                  for p in leaderless),
            "elections fail: lost quorum, a partition, or disks too slow for heartbeats",
            "check member connectivity (peer port 2380) and fsync latency; restore quorum",
            "etcdnoleader")


def _peer(p: PeerState, now: float, s: FindingSettings) -> Iterator[Candidate]:
    if not p.polled:
        return
    age = _age(now, p.last_poll)
    if not p.up:
        if p.poll_reason == "auth":
            yield _auth(p.name, "peer", "its /metrics page", age)
        yield Candidate(
            "peer_down", Severity.WARNING, "peer", p.name,
            f"etcd peer {p.name} is down: it did not answer its API ({p.poll_reason})",
            (Evidence("JSON-gateway and gRPC reads", f"failed: {p.poll_reason}", age),),
            "the member process stopped, its host is unreachable, or TLS/auth to it fails",
            f"check the member: etcdctl --endpoints {p.endpoint} endpoint health; "
            "restart it (systemctl restart etcd / delete the pod)",
            "etcdpeerdown")
        return
    m = p.metrics
    yield from _probe_findings(p, age, s)
    if p.backend not in ("", "etcd"):
        missing = ", ".join(sorted(p.unavailable)) or "nothing"
        claims = f", claims etcd {p.reported_version}" if p.reported_version else ""
        yield Candidate(
            "backend_not_etcd", Severity.INFO, "peer", p.name,
            f"{p.name} is {p.backend}{claims}, not etcd: not available there: {missing}",
            (Evidence("backend", p.backend, age),
             Evidence("not available", missing, age)),
            f"a compatibility backend ({p.backend}) answering the etcd API",
            "nothing to fix; what it cannot tell is left out of /metrics, never shown as 0",
            "backend_not_etcd")
    elif m is not None and m.watch_streams is None and m.has_leader is None:
        yield Candidate(
            "backend_not_etcd", Severity.INFO, "peer", p.name,
            f"{p.name} does not look like etcd (version {p.version or '?'}): its metrics page "
            "has no etcd watch or raft families",
            (Evidence("etcd metric families", "absent", age),),
            "a compatibility backend (kine, etcd-adapter, antietcd) answering the etcd API",
            "nothing to fix; watch streams, the trip wire, leader and quota checks are not "
            "available on this backend",
            "backend_not_etcd")
    yield from _streams(p, now, age, s)
    if m is not None and m.quota_bytes and m.db_size is not None:
        used = m.db_size / m.quota_bytes
        if used >= s.quota_warn:
            sev = Severity.CRITICAL if used >= s.quota_critical else Severity.WARNING
            yield Candidate(
                "db_quota", sev, "peer", p.name,
                f"etcd DB on {p.name} is {used:.0%} of its quota "
                f"({m.db_size / 2**20:.1f} of {m.quota_bytes / 2**20:.1f} MiB): at 100% etcd "
                "raises the NOSPACE alarm and refuses every write",
                (Evidence("etcd_mvcc_db_total_size_in_bytes", _int(m.db_size), age),
                 Evidence("etcd_server_quota_backend_bytes", _int(m.quota_bytes), age)),
                "history not compacted, or more config than the quota allows",
                "etcdctl compact $(etcdctl endpoint status -w json | jq '.[0].Status.header."
                "revision'); etcdctl defrag; etcdctl alarm disarm; or raise "
                "--quota-backend-bytes",
                "etcddatabasequotalowspace")
    if m is not None and m.wal_fsync is not None:
        p99 = _quantile(m.wal_fsync.buckets, 0.99)
        total = m.wal_fsync.buckets[-1][1] if m.wal_fsync.buckets else 0
        # A p99 means little below a few hundred samples: one slow fsync at start-up would
        # be the whole tail.
        if p99 is not None and total >= 200 and p99 > s.fsync_p99:
            yield Candidate(
                "fsync_slow", Severity.WARNING, "peer", p.name,
                f"WAL fsync on {p.name} is slow: p99 {_ms(p99)} since start (etcd wants "
                "< 10 ms)",
                (Evidence("etcd_disk_wal_fsync_duration_seconds p99", _ms(p99), age),),
                "a slow or shared disk; slow fsync delays heartbeats and elections",
                "move the etcd data dir to a dedicated SSD; check iostat on the host",
                "etcdhighfsyncdurations")


def _auth(subject: str, kind: str, what: str, age: float, perm: str = "") -> Candidate:
    need = perm or f"access to {what}"
    return Candidate(
        "auth_denied", Severity.WARNING, kind, subject,
        f"{subject} denied the watchdog user {need}",
        (Evidence(what, "auth error", age),),
        "the watchdog user lacks a role or permission, or its credentials are wrong",
        f"grant it: etcdctl role grant-permission watchdog-ro read <probe_key>; "
        f"etcdctl user grant-role <user> watchdog-ro (needed: {need})",
        "auth_denied")


def _probe_findings(p: PeerState, age: float, s: FindingSettings) -> Iterator[Candidate]:
    json = p.probes.get(("json", "range"))
    grpc = p.probes.get(("grpc", "range"))
    denied = [r for r in p.probes.values() if not r.ok and r.reason == "auth"]
    if denied:
        yield _auth(p.name, "peer", f"{denied[0].api} {denied[0].op}", age,
                    f"read permission on {s.probe_key}")
    if json is None or grpc is None or not grpc.ok:
        return
    stalled = (not json.ok and json.reason == "timeout") or (
        json.ok and json.duration > s.json_slow and json.duration > 10 * grpc.duration)
    if not stalled:
        return
    streams = p.watch_streams
    json_said = f"timed out ({json.detail or 'no answer'})" if not json.ok \
        else f"took {_ms(json.duration)}"
    cap, fixed = limit_of(p)
    if p.exposed and streams is not None and streams >= cap - margin(cap) and fixed:
        limit = (f"the 250-stream HTTP/2 limit is reached ({_int(streams)}/250 streams; etcd "
                 f"{p.version} over TLS, fixed in 3.5.5 / 3.4.20, etcd #14185)")
    elif p.exposed and streams is not None and streams >= cap - margin(cap):
        limit = (f"the peer's --max-concurrent-streams limit of {cap} is reached "
                 f"({_int(streams)}/{cap} streams)")
    elif p.exposed:
        limit = (f"etcd {p.version} shares one {cap}-stream connection for JSON traffic "
                 f"({_int(streams)} watch streams now)")
    else:
        limit = (f"the configured --max-concurrent-streams or an overloaded JSON gateway "
                 f"({_int(streams)} watch streams)")
    yield Candidate(
        "json_gateway_stalled", Severity.CRITICAL, "peer", p.name,
        f"JSON gateway on {p.name} is stalled: a JSON range {json_said} while gRPC answered "
        f"in {_ms(grpc.duration)}; {limit}",
        (Evidence("JSON range probe", json_said, age),
         Evidence("gRPC range probe", _ms(grpc.duration), age),
         Evidence("watch streams", _int(streams), age)),
        f"{limit}. APISIX and the admin API use the JSON gateway, so they hang",
        "upgrade etcd to >= 3.5.5 / 3.4.20; or raise --max-concurrent-streams; or reduce "
        "fan-out (APISIX >= 3.4 opens one watch per worker, plus the privileged agent's); "
        "restart leaking gateways",
        "etcdjsongatewaystalled")


def margin(cap: int) -> float:
    """How close to the limit counts as at it (5 of 250)."""
    return max(1.0, cap * 0.02)


def _streams(p: PeerState, now: float, age: float, s: FindingSettings) -> Iterator[Candidate]:
    streams = p.watch_streams
    if streams is None or not math.isfinite(streams):
        return
    ws = p.wires.get("watch_streams")
    cap, fixed = limit_of(p)
    warn = s.headroom_warn * cap / STREAM_LIMIT  # 25 of 250: a tenth of the limit
    # Near the wall, or at it without a stall yet (a stall is its own finding).
    near = cap - warn <= streams < cap - margin(cap)
    at_wall = streams >= cap - margin(cap) and not _json_stalled(p)
    if p.exposed and (near or at_wall):
        headroom = cap - streams
        rate = growth(p.history)
        eta = (f"at +{rate * 60:.1f} streams/min the limit is reached in "
               f"{_duration(max(0.0, headroom) / rate)}" if rate and rate > 0
               else "not growing right now")
        yield Candidate(
            "stream_limit_near", Severity.WARNING, "peer", p.name,
            f"{p.name} has {_int(headroom)} streams of headroom to the {cap}-stream limit "
            f"({_int(streams)} open); {eta}",
            (Evidence("watch streams", _int(streams), age),
             Evidence("stream limit", f"{cap} (etcd {p.version}"
                      + (" over TLS)" if fixed else ", --max-concurrent-streams)"), age)),
            "etcd < 3.5.5 / 3.4.20 over TLS caps JSON-gateway traffic at 250 streams on one "
            "connection (etcd #14185)" if fixed else
            f"the peer's --max-concurrent-streams ({cap}) caps JSON-gateway traffic on its one "
            "internal connection",
            "upgrade etcd; or raise --max-concurrent-streams; or reduce fan-out before it "
            "stalls (APISIX >= 3.4: one watch per worker)",
            "etcdwatchstreamsnearlimit")
    if ws is not None and ws.tripped:
        expected = p.expected_streams
        excess = streams - expected if expected is not None else None
        remotes = ", ".join(f"{r} ({n:.0f})" for r, n in
                            (p.connections.by_remote[:3] if p.connections else ()))
        explain = (f"observed {_int(streams)} vs {_int(expected)} expected from the gateway "
                   f"inventory: {_int(excess)} unexplained" if expected is not None
                   else "no expected fan-out configured (set gateways[].workers)")
        yield Candidate(
            "watch_surge", Severity.WARNING, "peer", p.name,
            f"watch surge on {p.name}: {_int(streams)} streams, {ws.ratio or 0:.1f}x the "
            f"steady state of {_int(ws.steady)} for {_duration(ws.tripped_for)}; {explain}",
            (Evidence("watch streams", _int(streams), age),
             Evidence("steady state", _int(ws.steady), age),
             Evidence("expected streams", _int(expected), age))
            + ((Evidence("top client connections", remotes, age),) if remotes else ()),
            "a gateway leaking watches (APISIX #7078), a deploy that grew the fleet, or a new "
            "client",
            "find the gateway whose connections grow (top remotes above) and restart it; if the "
            "fleet grew on purpose, wait for the steady state to follow",
            "etcdwatchconnectionstripwire")
    if ws is not None and ws.warmup_left is not None:
        left = ws.warmup_left
        reference = (f"the expected fan-out ({_int(p.expected_streams)} streams) is the "
                     "reference" if p.expected_streams is not None
                     else "set gateways[].workers for an expected fan-out to compare with")
        yield Candidate(
            "warmup", Severity.INFO, "peer", p.name,
            f"trip wire on {p.name} arms in about {_duration(left)}; until then {reference}",
            (Evidence("warm-up left", f"{_duration(left)} of {_duration(s.warmup)}", age),),
            "the steady state is learned for tripwire.warmup after a peer is first seen",
            "nothing to do; keep state_dir on a persistent volume so restarts keep it",
            "warmup")


def _json_stalled(p: PeerState) -> bool:
    json = p.probes.get(("json", "range"))
    grpc = p.probes.get(("grpc", "range"))
    return bool(json and grpc and grpc.ok and not json.ok)


def _fanout(peers: list[PeerState], now: float, s: FindingSettings) -> Iterator[Candidate]:
    """Compare the fleet's total watch streams with both fan-out models."""
    gws = s.fanout
    up = [p for p in peers if p.polled and p.up]
    if not gws or any(g.workers is None for g in gws) or not up or len(up) != len(
            [p for p in peers if p.polled]):
        return
    observed = [p.watch_streams for p in up]
    if any(v is None for v in observed):
        return
    total = sum(v for v in observed if v is not None)
    workers = sum(g.workers or 0 for g in gws)
    modern = sum(g.streams("modern") for g in gws)
    legacy = sum(g.streams("legacy") for g in gws)
    tol = s.fanout_tolerance
    fits_modern = modern * (1 - tol) <= total <= modern * (1 + tol)
    fits_legacy = legacy * (1 - tol) <= total <= legacy * (1 + tol)
    modes = {g.sync_mode for g in gws}
    age = min(_age(now, p.last_poll) for p in up)
    # During warm-up the expected fan-out is the reference: far above what the configured
    # sync mode predicts, and matching neither model, is a surge (a leak) nobody armed for.
    predicted = modern if modes == {"modern"} else legacy
    armed = any((w := p.wires.get("watch_streams")) is not None and w.armed for p in up)
    rates = [growth(p.history) for p in up]
    growing = sum(r for r in rates if r is not None) * 60 > s.growing_per_min
    # A count still climbing is a leak passing through whatever band it is in, not a fit.
    explained = fits_legacy and not growing
    if not armed and not explained and total > s.factor * predicted \
            and total >= s.min_streams:
        yield Candidate(
            "watch_surge", Severity.WARNING, "cluster", "etcd",
            f"watch surge: {_int(total)} watch streams on etcd, {total / predicted:.1f}x the "
            f"{predicted} the gateway inventory predicts ({workers} workers, "
            f"{'/'.join(sorted(modes))} sync); the trip wire is still warming up",
            (Evidence("watch streams, all peers", _int(total), age),
             Evidence("expected from the inventory", str(predicted), 0.0),
             *(Evidence(f"watch streams on {p.name}", _int(p.watch_streams),
                        _age(now, p.last_poll)) for p in up)),
            "a gateway leaking watches (APISIX #7078, reconnects that never close the old "
            "watch), or gateways missing from the inventory",
            "find the gateway whose etcd connections grow (ss -tnp on the gateway hosts; "
            "watchdog_etcd_client_connections_by_remote) and restart it; add missing "
            "gateways to the config",
            "watch_surge-during-warm-up")
    if growing:
        return  # a fan-out mismatch is judged on a steady count
    if modes == {"modern"} and fits_legacy and not fits_modern:
        said, saw = "modern (one watch per worker and privileged agent)", "pre-3.4 per-prefix fan-out"
    elif modes == {"legacy"} and fits_modern and not fits_legacy:
        said, saw = "legacy (one watch per prefix per worker)", "APISIX >= 3.4 fan-out"
    else:
        return
    yield Candidate(
        "fanout_mismatch", Severity.WARNING, "cluster", "gateways",
        f"{_int(total)} watch streams fit the {saw} ({legacy} legacy vs {modern} "
        f"modern predicted for {workers} workers) while the config says {said}",
        (Evidence("watch streams, all peers", _int(total), age),
         Evidence("predicted, modern (workers + 1 per gateway)", str(modern), 0.0),
         Evidence("predicted, legacy ((workers + 1) x prefixes)", str(legacy), 0.0)),
        "gateways_sync_mode in the config does not match the APISIX release that runs "
        "(APISIX 3.4, #9456, moved to one watch per worker and privileged agent)",
        "set gateways[].sync_mode to what the fleet runs (legacy before APISIX 3.4), so the "
        "expected streams and the trip wire's reference are right",
        "etcdwatchfanoutmismatch")


def _etcd_json(peers: list[PeerState]) -> float | None:
    """The median JSON read of the peers that are up (one slow read on a busy host does not
    make etcd slow); None unless every one succeeded."""
    reads = [p.probes.get(("json", "range")) for p in peers if p.up]
    ok = sorted(r.duration for r in reads if r is not None and r.ok)
    return ok[(len(ok) - 1) // 2] if ok and len(ok) == len(reads) else None


def _gateway(g: GatewayState, now: float, s: FindingSettings, etcd_json: float | None
             ) -> Iterator[Candidate]:
    if not g.polled and g.smoke is None:
        return
    age = _age(now, g.last_poll)
    admin = g.admin.get("get_missing_route")
    if admin is not None and not admin.ok and admin.reason == "auth":
        yield _auth(g.name, "gateway", "the admin API", age, "the admin key (X-API-KEY)")
    slow = admin is not None and (
        (not admin.ok and admin.reason == "timeout")
        or (admin.ok and admin.duration > s.admin_slow))
    # etcd counts as fast when its median JSON read took under etcd_fast, or under a
    # quarter of what the admin call waited (a loaded host slows both, not only the gateway).
    fast = etcd_json is not None and admin is not None and (
        etcd_json <= s.etcd_fast or etcd_json * 4 <= admin.duration)
    if slow and fast and admin is not None and etcd_json is not None:
        said = f"timed out after {_ms(admin.duration)}" if not admin.ok \
            else f"took {_ms(admin.duration)}"
        yield Candidate(
            "gateway_admin_leak", Severity.WARNING, "gateway", g.name,
            f"admin API of {g.name} {said} while etcd answers JSON reads in "
            f"{_ms(etcd_json)}: the gateway, not etcd, is stuck",
            (Evidence("admin call", said, age),
             Evidence("median etcd JSON read", _ms(etcd_json), age)),
            "connections to etcd leaking inside the gateway (APISIX #7078): its workers wait "
            "for etcd connections they never get back",
            f"restart gateway {g.name} (kubectl rollout restart / apisix reload is not "
            "enough); upgrade APISIX to a release with the fix",
            "gatewayadminslow")
    smoke, sage = g.smoke, _age(now, g.last_smoke)
    message = smoke.message if smoke is not None and not smoke.ok else ""
    if "shim" in message:
        yield Candidate(
            "shim_drops_writes", Severity.WARNING, "gateway", g.name,
            f"{g.name} accepts admin writes that neither its admin reads nor its data plane "
            "ever see",
            (Evidence("last smoke", message, sage),),
            "an etcd-adapter style shim stores writes somewhere the data plane does not watch "
            "(etcd-adapter #23, #38)",
            "point the gateway's admin API and data plane at the same real etcd; do not run "
            "APISIX on etcd-adapter for writes",
            "shim_drops_writes")
        return
    lagging = g.config_lag is not None and g.config_lag >= s.stale_lag
    # The canary was written and the gateway's loaded revision stays behind it. "No config
    # loaded" (modify index 0) is a gateway that never synced (the init hang below) unless
    # its status API says every worker did load once.
    never_loaded = "no config loaded" in message and g.ready is not True
    confirmed = "applying etcd changes" in message and not never_loaded
    if (lagging or confirmed) and g.ready is not False and not never_loaded:
        ev = [Evidence("config lag", f"{_int(g.config_lag)} revisions", age)]
        if message:
            ev.append(Evidence("last smoke", message, sage))
        yield Candidate(
            "stale_config", Severity.WARNING, "gateway", g.name,
            f"{g.name} is {_int(g.config_lag)} revisions behind etcd: it stopped applying "
            "config events",
            tuple(ev),
            "a stuck watch: the gateway holds a watch that no longer delivers events (lost "
            "events, APISIX #13067)",
            f"restart gateway {g.name}; upgrade APISIX to >= 3.18 (#13917)",
            "gatewayconfiglag",
            # A lag alone is also what a busy moment looks like: it must last a few polls.
            open_after=0.0 if confirmed else 5 * s.interval)
        return
    hang = g.ready is False or (smoke is not None and not smoke.ok and
                                smoke.phase in ("propagate", "status ready"))
    if hang:
        ev = []
        if g.ready is False:
            ev.append(Evidence("/status/ready", "503 (not ready)", age))
        if message:
            ev.append(Evidence("last smoke", message, sage))
        yield Candidate(
            "init_sync_hang", Severity.WARNING, "gateway", g.name,
            f"{g.name} never served a fresh canary"
            + (" and reports not ready" if g.ready is False else ""),
            tuple(ev),
            "workers stuck in the initial etcd sync (APISIX #12580)",
            f"restart gateway {g.name}; pin a known-good APISIX release (one without #12580)",
            "gatewayinitsyncfailed")


# -- small helpers ------------------------------------------------------------------------


def growth(history: Iterable[tuple[float, float | None, float | None]]) -> float | None:
    """Streams per second over the recent history (least squares), None if unknown."""
    pts = [(t, v) for t, v, _ in list(history)[-10:] if v is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    if den <= 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in pts) / den


def _quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style quantile from cumulative (le, count) buckets."""
    pts = sorted(buckets)
    if not pts or pts[-1][1] <= 0:
        return None
    rank = q * pts[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in pts:
        if n >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return prev_le


def _duration(seconds: float) -> str:
    """Human duration: 45s, 12m, 3h 5m, 2d 4h."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f}m"
    hours, mins = divmod(int(minutes), 60)
    if hours < 48:
        return f"{hours}h {mins}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


human_duration = _duration


# -- hysteresis ---------------------------------------------------------------------------


@dataclass
class _Track:
    first_held: float
    seen: int
    last_held: float
    candidate: Candidate
    opened_at: float | None = None


@dataclass
class FindingTracker:
    """Debounces candidates into open findings; never flaps.

    A candidate opens once it held at least `open_after` seconds and in at least two
    evaluations; an open finding clears once it was absent for `clear_after` seconds. While
    open, its summary, evidence and severity follow the latest evaluation."""

    open_after: float = 15.0
    clear_after: float = 30.0
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def update(self, candidates: Iterable[Candidate], now: float) -> tuple[Finding, ...]:
        seen: set[str] = set()
        for c in candidates:
            if c.id in seen:
                continue
            seen.add(c.id)
            t = self._tracks.get(c.id)
            if t is None:
                t = self._tracks[c.id] = _Track(now, 0, now, c)
            t.seen += 1
            t.last_held, t.candidate = now, c
            wait = max(self.open_after, c.open_after)
            if t.opened_at is None and t.seen >= 2 and now - t.first_held >= wait:
                t.opened_at = now
        for key in list(self._tracks):
            t = self._tracks[key]
            if key in seen:
                continue
            if t.opened_at is None:
                del self._tracks[key]  # a pending condition must hold without a gap
            elif now - t.last_held >= self.clear_after:
                del self._tracks[key]
        return self.open()

    def open(self) -> tuple[Finding, ...]:
        out = [Finding.opened(t.candidate, t.opened_at) for t in self._tracks.values()
               if t.opened_at is not None]
        out.sort(key=lambda f: (-f.severity.rank, f.opened_at, f.id))
        return tuple(out)


def index(findings: Iterable[Finding]) -> Mapping[str, list[Finding]]:
    """Findings by subject name (for per-row display)."""
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.subject, []).append(f)
    return out


def with_evidence_ages(f: Finding, now: float, taken: float) -> Finding:
    """The finding with evidence ages advanced from the snapshot's time to `now`."""
    extra = max(0.0, now - taken)
    return replace(f, evidence=tuple(replace(e, age=e.age + extra) for e in f.evidence))
