"""Every metric watchdog exports, declared once, on an injected registry.

Everything about peers and gateways, the accumulated latency histograms and failure counters
included, is rendered by `SnapshotCollector` from one snapshot (`watchdog.snapshot`), so all
of a peer's series in one scrape come from the same poll cycle, a peer that leaves the cluster
leaves the output with it, and a scrape never waits on a target. Only the process's own
bookkeeping (task runs, state saves, build info) is instrumented directly.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from watchdog import __version__
from watchdog.etcd.exposure import headroom as headroom_of
from watchdog.snapshot import GatewayState, PeerState, Snapshot

PHASES = ("connect", "tls", "processing", "transfer")
PROBE_DURATION_HELP = (
    "Latency of read probes through each etcd API (json = the HTTP/JSON gateway APISIX uses, "
    "grpc = native). JSON far slower than gRPC on one peer points at the 250-stream limit.")
PROBE_FAILURES_HELP = (
    "Failed etcd probes by reason (timeout, refused, tls, auth, http, protocol). JSON "
    "timeouts while gRPC succeeds: the JSON gateway is stalled.")


class WatchdogMetrics:
    """The process's own instrumented metrics: task runs (on `tasks`), state saves, renders,
    build info (on `registry`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Per task (one or two per gateway: thousands of series in a large fleet), and they
        # change only when a task runs: rendered once per poll cycle with the snapshot, not
        # at every scrape (see watchdog.render).
        self.tasks = CollectorRegistry(auto_describe=False)
        self.job_runs = Counter(
            "watchdog_job_runs",
            "Runs of each polling task by outcome: success; failed (it ran but observed nothing, "
            "e.g. no etcd peer answered); timeout; error (it crashed).",
            ["task", "outcome"], registry=self.tasks,
        )
        self.job_duration = Gauge(
            "watchdog_job_duration_seconds",
            "Wall time of the task's last run.", ["task"], registry=self.tasks,
        )
        self.state_save_failures = Counter(
            "watchdog_state_save_failures",
            "Failed writes of the learned steady states to state_dir (check disk and "
            "permissions; the baseline is kept in memory).", registry=registry,
        )
        self.renders = Counter(
            "watchdog_metrics_renders",
            "Renders of the /metrics page. One render serves every scrape of a poll cycle, "
            "so this grows with cycles, not with scrapes.", registry=registry,
        )
        self.build_info = Gauge(
            "watchdog_build_info", "watchdog build information.",
            ["version", "python"], registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)

    def add_job(self, job: str) -> None:
        for outcome in ("success", "failed", "timeout", "error"):
            self.job_runs.labels(job, outcome)


def _gauge(name: str, doc: str, labels: Iterable[str] = ("peer",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class SnapshotCollector(Collector):
    """Renders the latest snapshot. Example output:

    # HELP watchdog_etcd_peer_up 1 if the last poll of the peer's /metrics succeeded.
    # TYPE watchdog_etcd_peer_up gauge
    watchdog_etcd_peer_up{peer="etcd-0"} 1.0
    """

    def __init__(self, latest: Callable[[], Snapshot]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        snap = self.latest()  # read once: every family below comes from this one snapshot
        peers = list(snap.peers.values())
        gateways = list(snap.gateways.values())
        yield from self._snapshot_families(snap)
        yield from self._call_families(peers, gateways)
        yield from self._peer_families(peers)
        yield from self._gateway_families(gateways)
        yield from self._finding_families(snap)

    def _snapshot_families(self, snap: Snapshot) -> Iterator[Metric]:
        cycle = GaugeMetricFamily(
            "watchdog_snapshot_cycle",
            "Number of etcd poll cycles applied; every peer series in a scrape comes from "
            "the one snapshot with this number.", value=snap.cycle)
        taken = GaugeMetricFamily(
            "watchdog_snapshot_timestamp_seconds",
            "Unix time the snapshot this scrape renders was made (its age is the data's age).",
            value=snap.taken)
        yield from (cycle, taken)

    def _finding_families(self, snap: Snapshot) -> Iterator[Metric]:
        finding = GaugeMetricFamily(
            "watchdog_finding",
            "1 per open finding (a verdict: what is wrong, where); the summary and fix are at "
            "/api/v1/findings.", labels=["finding", "subject", "severity"])
        for f in snap.findings:
            finding.add_metric([f.kind, f.subject, f.severity.value], 1)
        yield finding

    def _call_families(self, peers: list[PeerState],
                       gateways: list[GatewayState]) -> Iterator[Metric]:
        probe = HistogramMetricFamily("watchdog_etcd_probe_duration_seconds",
                                      PROBE_DURATION_HELP, labels=["peer", "api", "op"])
        probe_fail = CounterMetricFamily("watchdog_etcd_probe_failures", PROBE_FAILURES_HELP,
                                         labels=["peer", "api", "op", "reason"])
        poll_fail = CounterMetricFamily("watchdog_etcd_poll_failures",
                                        "Failed polls of a peer's /metrics page by reason.",
                                        labels=["peer", "reason"])
        admin = HistogramMetricFamily(
            "watchdog_gateway_admin_duration_seconds",
            "Gateway admin API call latency. Each call goes through etcd; seconds here mean "
            "operators and deploy pipelines wait too.", labels=["gateway", "call"])
        admin_fail = CounterMetricFamily(
            "watchdog_gateway_admin_failures",
            "Failed gateway admin API calls by reason (timeout, refused, auth, http, protocol).",
            labels=["gateway", "call", "reason"])
        smoke_fail = CounterMetricFamily(
            "watchdog_gateway_smoke_failures",
            "Failed smoke probes (canary route not served in time) by reason.",
            labels=["gateway", "reason"])
        for p in peers:
            for (api, op), calls in sorted(p.calls.items()):
                probe.add_metric([p.name, api, op], _buckets(calls.latency.cumulative()),
                                 calls.latency.total)
                for reason, n in calls.failures.items():
                    probe_fail.add_metric([p.name, api, op, reason], n)
            for reason, n in p.poll_failures.items():
                poll_fail.add_metric([p.name, reason], n)
        for g in gateways:
            for call, calls in sorted(g.admin_calls.items()):
                admin.add_metric([g.name, call], _buckets(calls.latency.cumulative()),
                                 calls.latency.total)
                for reason, n in calls.failures.items():
                    admin_fail.add_metric([g.name, call, reason], n)
            for reason, n in g.smoke_failures.items():
                smoke_fail.add_metric([g.name, reason], n)
        yield from (probe, probe_fail, poll_fail, admin, admin_fail, smoke_fail)

    def _peer_families(self, peers: list[PeerState]) -> Iterator[Metric]:
        cycle = _gauge("watchdog_etcd_peer_poll_cycle",
                       "The etcd poll cycle whose results this peer's series show.")
        up = _gauge("watchdog_etcd_peer_up",
                    "1 if the peer answered its API in the last poll (a JSON or gRPC read, or "
                    "an etcd auth refusal), 0 if it did not.")
        page_up = _gauge("watchdog_etcd_metrics_up",
                         "1 if the peer's /metrics page answered with etcd's metrics, 0 if not; "
                         "absent on backends that have no such page (antietcd).")
        info = _gauge("watchdog_etcd_peer_info", "Identity of the etcd peer (always 1). "
                      "backend: etcd, kine, etcd-adapter, antietcd or unknown, told from what "
                      "the server serves, not from the version it claims.",
                      ["peer", "member_id", "version", "tls", "endpoint", "backend"])
        alarm = _gauge("watchdog_etcd_alarm",
                       "1 per alarm active on the peer, as its Status reports: NOSPACE (the "
                       "DB reached its quota: every write is refused until the alarm is "
                       "disarmed, even after compaction and defrag), CORRUPT.",
                       ["peer", "alarm"])
        limit = _gauge("watchdog_etcd_stream_limit",
                       "Concurrent streams the peer's JSON gateway connection allows (250 on "
                       "TLS before 3.4.20 / 3.5.5; else --max-concurrent-streams as configured "
                       "or learned from a stall); absent when out of reach or unknown.")
        leader = _gauge("watchdog_etcd_peer_is_leader", "1 on the current raft leader.")
        has_leader = _gauge("watchdog_etcd_peer_has_leader",
                            "0 when the peer sees no leader: it cannot serve requests.")
        changes = CounterMetricFamily(
            "watchdog_etcd_leader_changes_seen",
            "Leader changes the peer has seen (mirrored from etcd). Frequent changes slow "
            "every client.", labels=["peer"])
        streams = _gauge("watchdog_etcd_watch_streams",
                         "Watch streams open on the peer (etcd_debugging_mvcc_watch_stream_total)."
                         " Compare with the steady state; on an exposed peer 250 is a wall.")
        watchers = _gauge("watchdog_etcd_watchers", "Watchers registered on the peer.")
        slow = _gauge("watchdog_etcd_slow_watchers",
                      "Unsynced (slow) watchers; sustained > 0 means the watch system is "
                      "overloaded and writes slow down.")
        grpc_open = _gauge("watchdog_etcd_grpc_watch_streams_open",
                           "gRPC Watch streams started minus handled on the peer.")
        conns = _gauge("watchdog_etcd_client_connections",
                       "Established client TCP connections to the peer, counted from this "
                       "host's socket table (absent when the peer is not local).")
        by_remote = _gauge("watchdog_etcd_client_connections_by_remote",
                           "Established client connections by remote address (top N, rest "
                           "under remote=\"other\"). One remote growing without bound is a "
                           "leaking client.", ["peer", "remote"])
        gap = _gauge("watchdog_etcd_connections_without_stream",
                     "Client connections minus watch streams. Positive and growing: "
                     "connections leak; negative: streams multiplexed on fewer connections.")
        expected = _gauge("watchdog_etcd_expected_watch_streams",
                          "Watch streams the gateway inventory predicts on this peer "
                          "(workers x watched prefixes, or workers for APISIX >= 3.4).")
        steady = _gauge("watchdog_etcd_watch_streams_steady_state",
                        "Learned steady-state watch streams of the peer (absent until "
                        "warm-up ends).")
        ratio = _gauge("watchdog_etcd_watch_streams_ratio",
                       "Watch streams divided by their steady state; the wire trips at the "
                       "configured factor (default 2).")
        wire = _gauge("watchdog_etcd_watch_tripwire",
                      "1 while the peer's watch streams exceed factor x steady state: "
                      "look for a leaking gateway node or a fan-out change.")
        wire_for = _gauge("watchdog_etcd_watch_tripwire_active_seconds",
                          "How long the watch-stream wire has been tripped (0 when clear).")
        conn_steady = _gauge("watchdog_etcd_client_connections_steady_state",
                             "Learned steady-state client connections of the peer.")
        conn_wire = _gauge("watchdog_etcd_client_connections_tripwire",
                           "1 while client connections exceed factor x steady state.")
        exposed = _gauge("watchdog_etcd_stream_limit_exposed",
                         "1 when the peer's JSON gateway can stall at a stream limit within "
                         "reach (250 over TLS on etcd < 3.4.20 / 3.5.5, or a configured or "
                         "learned --max-concurrent-streams): upgrade etcd, raise the flag, or "
                         "reduce watch fan-out.")
        headroom = _gauge("watchdog_etcd_stream_limit_headroom",
                          "Stream limit minus watch streams on an exposed peer. At 0 "
                          "JSON-gateway calls (APISIX admin, new watches) hang.")
        db = _gauge("watchdog_etcd_db_size_bytes", "Physically allocated etcd DB size.")
        db_used = _gauge("watchdog_etcd_db_size_in_use_bytes", "Logically used etcd DB size.")
        quota = _gauge("watchdog_etcd_db_quota_bytes",
                       "etcd backend quota; at the quota etcd refuses writes.")
        fds = _gauge("watchdog_etcd_open_fds", "File descriptors open in the etcd process.")
        max_fds = _gauge("watchdog_etcd_max_fds", "File descriptor limit of the etcd process.")
        revision = _gauge("watchdog_etcd_revision",
                          "etcd revision seen by the peer's last successful read probe.")
        poll_seconds = _gauge("watchdog_etcd_poll_duration_seconds",
                              "Wall time of the last poll of the peer.")
        success = _gauge("watchdog_etcd_probe_success",
                         "1 if the last probe through this API succeeded.",
                         ["peer", "api", "op"])
        phase = _gauge("watchdog_etcd_probe_phase_seconds",
                       "Last JSON-gateway probe by phase (connect, tls, processing = time to "
                       "first byte, transfer), as blackbox_exporter reports them.",
                       ["peer", "op", "phase"])
        fsync = HistogramMetricFamily(
            "watchdog_etcd_wal_fsync_duration_seconds",
            "WAL fsync latency mirrored from etcd; p99 should stay under 10 ms.",
            labels=["peer"])
        commit = HistogramMetricFamily(
            "watchdog_etcd_backend_commit_duration_seconds",
            "Backend commit latency mirrored from etcd; p99 should stay under 25 ms.",
            labels=["peer"])

        for p in peers:
            name = [p.name]
            if not p.polled:
                continue
            cycle.add_metric(name, p.cycle)
            up.add_metric(name, 1.0 if p.up else 0.0)
            info.add_metric([p.name, p.member_id, p.version, str(p.tls).lower(), p.endpoint,
                             p.backend or "unknown"], 1)
            if p.metrics_up is not None:
                page_up.add_metric(name, 1.0 if p.metrics_up else 0.0)
            if p.stream_limit is not None:
                limit.add_metric(name, p.stream_limit)
            for active in p.alarms:
                alarm.add_metric([p.name, active], 1.0)
            poll_seconds.add_metric(name, p.poll_duration)
            if p.is_leader is not None:
                leader.add_metric(name, 1.0 if p.is_leader else 0.0)
            m = p.metrics
            if m is not None:
                for family, value in (
                    (has_leader, m.has_leader), (streams, m.watch_streams),
                    (watchers, m.watchers), (slow, m.slow_watchers),
                    (grpc_open, m.grpc_watch_streams_open), (db, m.db_size),
                    (db_used, m.db_size_in_use), (quota, m.quota_bytes),
                    (fds, m.open_fds), (max_fds, m.max_fds),
                ):
                    if value is not None:
                        family.add_metric(name, value)
                if m.leader_changes is not None:
                    changes.add_metric(name, m.leader_changes)
                for family, hist in ((fsync, m.wal_fsync), (commit, m.backend_commit)):
                    if hist is not None:
                        family.add_metric(
                            name, [(_le(le), count) for le, count in hist.buckets], hist.sum
                        )
            if p.connections is not None:
                conns.add_metric(name, p.connections.total)
                for remote, count in p.connections.by_remote:
                    by_remote.add_metric([p.name, remote], count)
                if m is not None and m.watch_streams is not None:
                    gap.add_metric(name, p.connections.total - m.watch_streams)
            if p.expected_streams is not None:
                expected.add_metric(name, p.expected_streams)
            ws = p.wires.get("watch_streams")
            if ws is not None and ws.steady is not None:
                steady.add_metric(name, ws.steady)
                if ws.ratio is not None:
                    ratio.add_metric(name, ws.ratio)
            if ws is not None:
                wire.add_metric(name, 1.0 if ws.tripped else 0.0)
                wire_for.add_metric(name, ws.tripped_for)
            cs = p.wires.get("client_connections")
            if cs is not None:
                if cs.steady is not None:
                    conn_steady.add_metric(name, cs.steady)
                conn_wire.add_metric(name, 1.0 if cs.tripped else 0.0)
            if p.exposed is not None:
                exposed.add_metric(name, 1.0 if p.exposed else 0.0)
                room = headroom_of(m.watch_streams if m else None, p.exposed, p.stream_limit)
                if room is not None:
                    headroom.add_metric(name, room)
            if p.revision is not None:
                revision.add_metric(name, p.revision)
            for (api, op), result in sorted(p.probes.items()):
                success.add_metric([p.name, api, op], 1.0 if result.ok else 0.0)
                if api == "json":
                    for ph, seconds in result.phases.items():
                        phase.add_metric([p.name, op, ph], seconds)

        yield from (
            cycle, up, page_up, info, limit, alarm, leader, has_leader, changes, streams, watchers,
            slow, grpc_open, conns,
            by_remote, gap, expected, steady, ratio, wire, wire_for, conn_steady, conn_wire,
            exposed, headroom, db, db_used, quota, fds, max_fds, revision, poll_seconds,
            success, phase, fsync, commit,
        )

    def _gateway_families(self, gateways: list[GatewayState]) -> Iterator[Metric]:
        labels = ["gateway"]
        success = _gauge("watchdog_gateway_admin_success",
                         "1 if the last admin API call succeeded.", ["gateway", "call"])
        phase = _gauge("watchdog_gateway_admin_phase_seconds",
                       "Last admin API call by phase (connect, tls, processing, transfer).",
                       ["gateway", "call", "phase"])
        smoke = _gauge("watchdog_gateway_smoke_success",
                       "1 if the last smoke probe passed: a canary route written through the "
                       "admin API was served by the data plane in time.", labels)
        sync = _gauge("watchdog_gateway_sync_seconds",
                      "Last canary propagation time, admin write to first served request.",
                      labels)
        last = _gauge("watchdog_gateway_last_smoke_timestamp_seconds",
                      "Unix time the last smoke probe finished.", labels)
        lag = _gauge("watchdog_gateway_config_lag_revisions",
                     "Newest mod_revision of gateway config in etcd (routes, services, "
                     "upstreams, ssls, consumers, global rules, stream routes, protos) minus the "
                     "newest revision the gateway reports having loaded (max_modify_index); "
                     "absent when the gateway reports a revision that cannot be. Growing: the "
                     "gateway stopped applying config.", labels)
        reachable = _gauge("watchdog_gateway_etcd_reachable",
                           "apisix_etcd_reachable as the gateway reports it.", labels)
        ready = _gauge("watchdog_gateway_ready",
                       "1 when the gateway's /status/ready answers 200 (every worker loaded "
                       "config once).", labels)
        for g in gateways:
            name = [g.name]
            for call, result in sorted(g.admin.items()):
                success.add_metric([g.name, call], 1.0 if result.ok else 0.0)
                for ph, seconds in result.phases.items():
                    phase.add_metric([g.name, call, ph], seconds)
            if g.smoke is not None:
                smoke.add_metric(name, 1.0 if g.smoke.ok else 0.0)
                if g.smoke.sync_seconds is not None:
                    sync.add_metric(name, g.smoke.sync_seconds)
                last.add_metric(name, g.last_smoke)
            if g.config_lag is not None:
                lag.add_metric(name, g.config_lag)
            if g.etcd_reachable is not None:
                reachable.add_metric(name, g.etcd_reachable)
            if g.ready is not None:
                ready.add_metric(name, 1.0 if g.ready else 0.0)
        yield from (success, phase, smoke, sync, last, lag, reachable, ready)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _buckets(pairs: list[tuple[float, int]]) -> list[tuple[str, float]]:
    return [(_le(bound), float(count)) for bound, count in pairs]


def make_registry(
    registry: CollectorRegistry | None = None,
) -> tuple[CollectorRegistry, WatchdogMetrics]:
    """watchdog's own instrumented metrics on `registry` (by default a fresh one that also
    carries the process metrics). The peer and gateway series come from a SnapshotCollector,
    which `watchdog.render.Renderer` renders once per cycle beside this registry."""
    disable_created_metrics()  # *_created series only add noise for a scrape target
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=registry)
    metrics = WatchdogMetrics(registry)
    return registry, metrics
