"""Every metric watchdog exports, declared once, on an injected registry.

Everything about peers and gateways, the accumulated latency histograms and failure counters
included, is rendered by `SnapshotCollector` from one snapshot (`watchdog.snapshot`), so all
of a peer's series in one scrape come from the same poll cycle, a peer that leaves the cluster
leaves the output with it, and a scrape never waits on a target. Only the process's own
bookkeeping (task runs, state saves, build info) is instrumented directly.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from watchdog import __version__
from watchdog.etcd.exposure import headroom as headroom_of
from watchdog.etcd.promtext import Histogram
from watchdog.snapshot import GatewayState, Latency, PeerState, Snapshot

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
        self.tasks = TaskRegistry()
        self.job_runs = self.tasks.job_runs
        self.job_duration = self.tasks.job_duration
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
        """Pre-creates the outcomes WatchdogJobFailing reads, for the process-wide tasks
        (etcd, state). The per-gateway tasks (`gateway:<name>`, `smoke:<name>`: two per
        gateway) get a series when an outcome first happens, so a gateway costs its task
        series only for what its tasks did."""
        if ":" in job:
            return
        for outcome in ("success", "failed", "timeout", "error"):
            self.job_runs.labels(job, outcome)


# --- the snapshot page ------------------------------------------------------------------------
# The peer and gateway series are written straight into the text exposition format: at a
# thousand peers and gateways, building prometheus_client metric objects for every sample
# cost over a second of CPU per render; formatting lines with each peer's label string made
# once is about twenty times cheaper. HELP and TYPE go out once per family, families stay
# contiguous, label values are escaped (backslash, quote, newline).

_INF = float("inf")
_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def _format(value: float) -> str:
    if value.__class__ is int:
        return str(value)
    text = repr(float(value))
    if text[-1] in "fn":
        return _SPECIAL[text]
    return text[:-2] if text.endswith(".0") else text


_NUMS: dict[float, str] = {}  # the same few values recur on every render (0, 1, quotas...)
_NUMS_MAX = 4096  # then start afresh: sums and timestamps change and must not pile up


def _num(value: float) -> str:
    """A sample value as the exposition formats write it (integers without a fraction)."""
    text = _NUMS.get(value)
    if text is None:
        text = _format(value)
        if len(_NUMS) >= _NUMS_MAX:
            _NUMS.clear()
        _NUMS[value] = text
    return text


@functools.lru_cache(maxsize=1 << 16)
def _lv(value: str) -> str:
    """A label value escaped for the exposition formats (cached: names repeat every render)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _bool(flag: bool | None) -> str:
    return "1" if flag else "0"


@functools.lru_cache(maxsize=256)
def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return (*(f'le="{_num(b)}"' for b in bounds), 'le="+Inf"')


class Page:
    """One page being written, in the Prometheus text format or OpenMetrics."""

    def __init__(self, openmetrics: bool = False,
                 keep: Callable[[str], bool] | None = None) -> None:
        self.openmetrics = openmetrics
        self.keep = keep  # which families go out (by family name); None: all
        self.parts: list[str] = []

    def family(self, name: str, kind: str, doc: str, samples: list[str]) -> None:
        """HELP and TYPE, then the samples (full lines without the newline)."""
        if self.keep is not None and not self.keep(name):
            return
        typed = name + "_total" if kind == "counter" and not self.openmetrics else name
        doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
        if self.openmetrics:
            doc = doc.replace('"', '\\"')
        self.parts.append(f"# HELP {typed} {doc}\n# TYPE {typed} {kind}\n")
        if samples:
            self.parts.append("\n".join(samples))
            self.parts.append("\n")

    def text(self) -> str:
        return "".join(self.parts)


class _Child:
    """One labelled series of a TaskSeries (the prometheus_client calls the scheduler uses)."""

    __slots__ = ("key", "store")

    def __init__(self, store: dict[tuple[str, ...], float], key: tuple[str, ...]) -> None:
        self.store = store
        self.key = key

    def inc(self, amount: float = 1.0) -> None:
        self.store[self.key] = self.store.get(self.key, 0.0) + amount

    def set(self, value: float) -> None:
        self.store[self.key] = value


class TaskSeries:
    """A counter or gauge family kept as a plain dict, written straight to text."""

    def __init__(self, name: str, kind: str, doc: str, labelnames: tuple[str, ...]) -> None:
        self.name, self.kind, self.doc, self.labelnames = name, kind, doc, labelnames
        self.sample = name + "_total" if kind == C else name
        self.values: dict[tuple[str, ...], float] = {}
        self._heads: dict[tuple[str, ...], str] = {}  # name and labels of each series, made once

    def labels(self, *values: str) -> _Child:
        key = tuple(str(v) for v in values)
        self.values.setdefault(key, 0.0)
        return _Child(self.values, key)

    def write(self, page: Page) -> None:
        items = sorted(self.values.items())  # a copy: the event loop may add a series meanwhile
        heads = self._heads
        lines = []
        for key, value in items:
            head = heads.get(key)
            if head is None:
                head = heads[key] = self.sample + "{" + ",".join(
                    f'{n}="{_lv(v)}"' for n, v in zip(self.labelnames, key, strict=True)) + "} "
            lines.append(head + _num(value))
        page.family(self.name, self.kind, self.doc, lines)


class _TaskCollector(Collector):
    def __init__(self, owner: TaskRegistry) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        yield from text_string_to_metric_families(self.owner.render(None))


class TaskRegistry(CollectorRegistry):
    """The per-task series (one or two tasks per gateway: thousands of series in a large
    fleet). They change only when a task runs, so the renderer writes them once per cycle
    with the snapshot, as text; as a registry they also answer get_sample_value."""

    def __init__(self) -> None:
        super().__init__(auto_describe=False)
        self.job_runs = TaskSeries(
            "watchdog_job_runs", C,
            "Runs of each polling task by outcome: success; failed (it ran but observed nothing, "
            "e.g. no etcd peer answered); timeout; error (it crashed).", ("task", "outcome"))
        self.job_duration = TaskSeries(
            "watchdog_job_duration_seconds", G, "Wall time of the task's last run.", ("task",))
        self.register(_TaskCollector(self))

    def render(self, snap: Snapshot | None, openmetrics: bool = False) -> str:
        page = Page(openmetrics)
        self.job_runs.write(page)
        self.job_duration.write(page)
        return page.text()


def _histogram(lines: list[str], name: str, labels: str, latency: Latency) -> None:
    """Bucket, sum and count lines of one histogram; `labels` ends with a comma."""
    running = 0
    bucket = f"{name}_bucket{{{labels}"
    les = _le_labels(latency.bounds)
    for le, n in zip(les, latency.counts, strict=False):
        running += n
        lines.append(f"{bucket}{le}}} {running}")
    lines.append(f"{bucket}{les[-1]}}} {latency.count}")
    # microseconds are all a timer here resolves; the rest of a float sum is noise and bytes
    lines.append(f"{name}_sum{{{labels[:-1]}}} {_format(round(latency.total, 6))}")
    lines.append(f"{name}_count{{{labels[:-1]}}} {latency.count}")


def _mirrored(lines: list[str], name: str, labels: str, hist: Histogram) -> None:
    for bound, count in hist.buckets:
        le = "+Inf" if bound == _INF else _num(bound)
        lines.append(f'{name}_bucket{{{labels}le="{le}"}} {_num(count)}')
    lines.append(f"{name}_sum{{{labels[:-1]}}} {_num(hist.sum)}")
    lines.append(f"{name}_count{{{labels[:-1]}}} {_num(hist.count)}")


# Failure reasons an alert reads: their counters exist at 0 from the first poll on, so
# increase() sees the first failure; every other reason appears when it first happens.
ALERTED_REASON = "timeout"
# The probes whose latency is a histogram (the JSON-vs-gRPC comparison of the alerts and
# dashboards); the status probes are counted in successes and failures only.
HISTOGRAM_OP = "range"

G, C, H = "gauge", "counter", "histogram"
PEER_FAMILIES: dict[str, tuple[str, str]] = {
    # name: (type, help); rendered in this order
    "watchdog_etcd_peer_poll_cycle": (G, "The etcd poll cycle whose results this peer's series show."),
    "watchdog_etcd_peer_up": (G, "1 if the peer answered its API in the last poll (a JSON or gRPC "
                              "read, or an etcd auth refusal), 0 if it did not."),
    "watchdog_etcd_metrics_up": (G, "1 if the peer's /metrics page answered with etcd's metrics, "
                                 "0 if not; absent on backends that have no such page "
                                 "(antietcd)."),
    "watchdog_etcd_peer_info": (G, "Identity of the etcd peer (always 1). backend: etcd, kine, "
                                "etcd-adapter, antietcd or unknown, told from what the server "
                                "serves, not from the version it claims."),
    "watchdog_etcd_alarm": (G, "1 per alarm active on the peer, as its Status reports: NOSPACE "
                            "(the DB reached its quota: every write is refused until the alarm is "
                            "disarmed, even after compaction and defrag), CORRUPT."),
    "watchdog_etcd_peer_is_leader": (G, "1 on the current raft leader."),
    "watchdog_etcd_peer_has_leader": (G, "0 when the peer sees no leader: it cannot serve requests."),
    "watchdog_etcd_leader_changes_seen": (C, "Leader changes the peer has seen (mirrored from "
                                          "etcd). Frequent changes slow every client."),
    "watchdog_etcd_watch_streams": (G, "Watch streams open on the peer "
                                    "(etcd_debugging_mvcc_watch_stream_total). Compare with the "
                                    "steady state; on an exposed peer 250 is a wall."),
    "watchdog_etcd_watchers": (G, "Watchers registered on the peer."),
    "watchdog_etcd_slow_watchers": (G, "Unsynced (slow) watchers; sustained > 0 means the watch "
                                    "system is overloaded and writes slow down."),
    "watchdog_etcd_client_connections": (G, "Established client TCP connections to the peer, "
                                         "counted from this host's socket table (absent when the "
                                         "peer is not local)."),
    "watchdog_etcd_client_connections_by_remote": (
        G, "Established client connections by remote address (top N, rest under "
           "remote=\"other\"). One remote growing without bound is a leaking client."),
    "watchdog_etcd_expected_watch_streams": (
        G, "Watch streams the gateway inventory predicts on this peer (workers x watched "
           "prefixes, or workers for APISIX >= 3.4)."),
    "watchdog_etcd_watch_streams_steady_state": (
        G, "Learned steady-state watch streams of the peer (absent until warm-up ends)."),
    "watchdog_etcd_watch_streams_ratio": (
        G, "Watch streams divided by their steady state; the wire trips at the configured "
           "factor (default 2)."),
    "watchdog_etcd_watch_tripwire": (
        G, "1 while the peer's watch streams exceed factor x steady state: look for a leaking "
           "gateway node or a fan-out change."),
    "watchdog_etcd_client_connections_steady_state": (
        G, "Learned steady-state client connections of the peer."),
    "watchdog_etcd_client_connections_tripwire": (
        G, "1 while client connections exceed factor x steady state."),
    "watchdog_etcd_stream_limit_exposed": (
        G, "1 when the peer's JSON gateway can stall at a stream limit within reach (250 over "
           "TLS on etcd < 3.4.20 / 3.5.5, or a configured or learned --max-concurrent-streams): "
           "upgrade etcd, raise the flag, or reduce watch fan-out."),
    "watchdog_etcd_stream_limit_headroom": (
        G, "Stream limit minus watch streams on an exposed peer. At 0 JSON-gateway calls "
           "(APISIX admin, new watches) hang."),
    "watchdog_etcd_db_size_bytes": (G, "Physically allocated etcd DB size."),
    "watchdog_etcd_db_size_in_use_bytes": (G, "Logically used etcd DB size."),
    "watchdog_etcd_db_quota_bytes": (G, "etcd backend quota; at the quota etcd refuses writes."),
    "watchdog_etcd_open_fds": (G, "File descriptors open in the etcd process."),
    "watchdog_etcd_max_fds": (G, "File descriptor limit of the etcd process."),
    "watchdog_etcd_poll_duration_seconds": (G, "Wall time of the last poll of the peer."),
    "watchdog_etcd_probe_success": (G, "1 if the last read probe through this API succeeded."),
    "watchdog_etcd_probe_duration_seconds": (H, PROBE_DURATION_HELP),
    "watchdog_etcd_probe_failures": (C, PROBE_FAILURES_HELP),
    "watchdog_etcd_poll_failures": (C, "Failed polls of a peer's /metrics page by reason (a "
                                    "reason appears when it first happens)."),
}
MIRRORED_FAMILIES: dict[str, tuple[str, str]] = {
    "watchdog_etcd_wal_fsync_duration_seconds": (
        H, "WAL fsync latency mirrored from etcd (etcd.mirror_histograms); p99 should stay "
           "under 10 ms."),
    "watchdog_etcd_backend_commit_duration_seconds": (
        H, "Backend commit latency mirrored from etcd (etcd.mirror_histograms); p99 should stay "
           "under 25 ms."),
}
GATEWAY_FAMILIES: dict[str, tuple[str, str]] = {
    "watchdog_gateway_admin_success": (G, "1 if the last admin API call succeeded."),
    "watchdog_gateway_admin_duration_seconds": (
        H, "Gateway admin API call latency. Each call goes through etcd; seconds here mean "
           "operators and deploy pipelines wait too."),
    "watchdog_gateway_admin_failures": (
        C, "Failed gateway admin API calls by reason (timeout, refused, auth, http, protocol)."),
    "watchdog_gateway_smoke_success": (
        G, "1 if the last smoke probe passed: a canary route written through the admin API was "
           "served by the data plane in time."),
    "watchdog_gateway_sync_seconds": (
        G, "Last canary propagation time, admin write to first served request."),
    "watchdog_gateway_last_smoke_timestamp_seconds": (
        G, "Unix time the last smoke probe finished."),
    "watchdog_gateway_smoke_failures": (
        C, "Failed smoke probes (canary route not served in time) by reason (a reason appears "
           "when it first happens)."),
    "watchdog_gateway_config_lag_revisions": (
        G, "Newest mod_revision of gateway config in etcd (routes, services, upstreams, ssls, "
           "consumers, global rules, stream routes, protos) minus the newest revision the "
           "gateway reports having loaded (max_modify_index); absent when the gateway reports "
           "a revision that cannot be. Growing: the gateway stopped applying config."),
    "watchdog_gateway_etcd_reachable": (G, "apisix_etcd_reachable as the gateway reports it."),
    "watchdog_gateway_ready": (
        G, "1 when the gateway's /status/ready answers 200 (every worker loaded config once)."),
}


class SnapshotCollector(Collector):
    """Renders the latest snapshot. Example output:

    # HELP watchdog_etcd_peer_up 1 if the peer answered its API in the last poll ...
    # TYPE watchdog_etcd_peer_up gauge
    watchdog_etcd_peer_up{peer="etcd-0"} 1
    """

    def __init__(self, latest: Callable[[], Snapshot],
                 mirror_histograms: Callable[[], bool] = lambda: False,
                 exported: Callable[[str], bool] | None = None) -> None:
        self.latest = latest
        self.mirror_histograms = mirror_histograms
        # A filter on family names (counters without _total), e.g. what a per-host agent
        # exports; applied while writing, so no family is built only to be dropped.
        self.exported = exported

    def collect(self) -> Iterator[Metric]:
        """The same page as metric families (for registries and tests; the web server uses
        `render`, which is far cheaper)."""
        yield from text_string_to_metric_families(self.render(self.latest()))

    def render(self, snap: Snapshot, openmetrics: bool = False) -> str:
        """Every peer and gateway series of one snapshot, as exposition text."""
        page = Page(openmetrics, self.exported)
        page.family("watchdog_snapshot_cycle", G,
                    "Number of etcd poll cycles applied; every peer series in a scrape comes "
                    "from the one snapshot with this number.",
                    [f"watchdog_snapshot_cycle {snap.cycle}"])
        page.family("watchdog_snapshot_timestamp_seconds", G,
                    "Unix time the snapshot this scrape renders was made (its age is the "
                    "data's age).", [f"watchdog_snapshot_timestamp_seconds {_num(snap.taken)}"])
        self._peers(page, [p for p in snap.peers.values() if p.polled])
        self._gateways(page, list(snap.gateways.values()))
        page.family("watchdog_finding", G,
                    "1 per open finding (a verdict: what is wrong, where); the summary and fix "
                    "are at /api/v1/findings.",
                    [f'watchdog_finding{{finding="{_lv(f.kind)}",subject="{_lv(f.subject)}",'
                     f'severity="{_lv(f.severity.value)}"}} 1' for f in snap.findings])
        return page.text()

    def _peers(self, page: Page, peers: list[PeerState]) -> None:
        out: dict[str, list[str]] = {name: [] for name in PEER_FAMILIES}
        mirror = self.mirror_histograms()
        fsync: list[str] = []
        commit: list[str] = []
        for p in peers:
            lp = f'peer="{_lv(p.name)}"'
            m = p.metrics
            out["watchdog_etcd_peer_poll_cycle"].append(
                f"watchdog_etcd_peer_poll_cycle{{{lp}}} {p.cycle}")
            out["watchdog_etcd_peer_up"].append(f"watchdog_etcd_peer_up{{{lp}}} {_bool(p.up)}")
            if p.metrics_up is not None:
                out["watchdog_etcd_metrics_up"].append(
                    f"watchdog_etcd_metrics_up{{{lp}}} {_bool(p.metrics_up)}")
            out["watchdog_etcd_peer_info"].append(
                f'watchdog_etcd_peer_info{{{lp},member_id="{_lv(p.member_id)}",'
                f'version="{_lv(p.version)}",tls="{"true" if p.tls else "false"}",'
                f'endpoint="{_lv(p.endpoint)}",backend="{_lv(p.backend or "unknown")}"}} 1')
            for active in p.alarms:
                out["watchdog_etcd_alarm"].append(
                    f'watchdog_etcd_alarm{{{lp},alarm="{_lv(active)}"}} 1')
            out["watchdog_etcd_poll_duration_seconds"].append(
                f"watchdog_etcd_poll_duration_seconds{{{lp}}} {_num(p.poll_duration)}")
            if p.is_leader is not None:
                out["watchdog_etcd_peer_is_leader"].append(
                    f"watchdog_etcd_peer_is_leader{{{lp}}} {_bool(p.is_leader)}")
            if m is not None:
                for name, value in (
                    ("watchdog_etcd_peer_has_leader", m.has_leader),
                    ("watchdog_etcd_leader_changes_seen_total", m.leader_changes),
                    ("watchdog_etcd_watch_streams", m.watch_streams),
                    ("watchdog_etcd_watchers", m.watchers),
                    ("watchdog_etcd_slow_watchers", m.slow_watchers),
                    ("watchdog_etcd_db_size_bytes", m.db_size),
                    ("watchdog_etcd_db_size_in_use_bytes", m.db_size_in_use),
                    ("watchdog_etcd_db_quota_bytes", m.quota_bytes),
                    ("watchdog_etcd_open_fds", m.open_fds),
                    ("watchdog_etcd_max_fds", m.max_fds),
                ):
                    if value is not None:
                        family = name[:-6] if name.endswith("_total") else name
                        out[family].append(f"{name}{{{lp}}} {_num(value)}")
                if mirror:
                    if m.wal_fsync is not None:
                        _mirrored(fsync, "watchdog_etcd_wal_fsync_duration_seconds",
                                  lp + ",", m.wal_fsync)
                    if m.backend_commit is not None:
                        _mirrored(commit, "watchdog_etcd_backend_commit_duration_seconds",
                                  lp + ",", m.backend_commit)
            conns = p.connections
            if conns is not None:
                out["watchdog_etcd_client_connections"].append(
                    f"watchdog_etcd_client_connections{{{lp}}} {_num(conns.total)}")
                for remote, count in conns.by_remote:
                    out["watchdog_etcd_client_connections_by_remote"].append(
                        f'watchdog_etcd_client_connections_by_remote{{{lp},'
                        f'remote="{_lv(remote)}"}} {_num(count)}')
            if p.expected_streams is not None:
                out["watchdog_etcd_expected_watch_streams"].append(
                    f"watchdog_etcd_expected_watch_streams{{{lp}}} {_num(p.expected_streams)}")
            ws = p.wires.get("watch_streams")
            if ws is not None:
                if ws.steady is not None:
                    out["watchdog_etcd_watch_streams_steady_state"].append(
                        f"watchdog_etcd_watch_streams_steady_state{{{lp}}} {_num(ws.steady)}")
                    if ws.ratio is not None:
                        out["watchdog_etcd_watch_streams_ratio"].append(
                            f"watchdog_etcd_watch_streams_ratio{{{lp}}} {_num(ws.ratio)}")
                out["watchdog_etcd_watch_tripwire"].append(
                    f"watchdog_etcd_watch_tripwire{{{lp}}} {_bool(ws.tripped)}")
            cs = p.wires.get("client_connections")
            if cs is not None:
                if cs.steady is not None:
                    out["watchdog_etcd_client_connections_steady_state"].append(
                        f"watchdog_etcd_client_connections_steady_state{{{lp}}} "
                        f"{_num(cs.steady)}")
                out["watchdog_etcd_client_connections_tripwire"].append(
                    f"watchdog_etcd_client_connections_tripwire{{{lp}}} {_bool(cs.tripped)}")
            if p.exposed is not None:
                out["watchdog_etcd_stream_limit_exposed"].append(
                    f"watchdog_etcd_stream_limit_exposed{{{lp}}} {_bool(p.exposed)}")
                room = headroom_of(m.watch_streams if m else None, p.exposed, p.stream_limit)
                if room is not None:
                    out["watchdog_etcd_stream_limit_headroom"].append(
                        f"watchdog_etcd_stream_limit_headroom{{{lp}}} {_num(room)}")
            success = out["watchdog_etcd_probe_success"]
            for (api, op), result in sorted(p.probes.items()):
                if op == HISTOGRAM_OP:
                    success.append(f'watchdog_etcd_probe_success{{{lp},api="{api}",op="{op}"}} '
                                   f"{_bool(result.ok)}")
            hist = out["watchdog_etcd_probe_duration_seconds"]
            fails = out["watchdog_etcd_probe_failures"]
            for (api, op), calls in sorted(p.calls.items()):
                labels = f'{lp},api="{api}",op="{op}"'
                if op == HISTOGRAM_OP:
                    _histogram(hist, "watchdog_etcd_probe_duration_seconds", labels + ",",
                               calls.latency)
                for reason, n in calls.failures.items():
                    if n or (reason == ALERTED_REASON and op == HISTOGRAM_OP):
                        fails.append(f'watchdog_etcd_probe_failures_total{{{labels},'
                                     f'reason="{_lv(reason)}"}} {n}')
            for reason, n in p.poll_failures.items():
                if n:
                    out["watchdog_etcd_poll_failures"].append(
                        f'watchdog_etcd_poll_failures_total{{{lp},reason="{_lv(reason)}"}} {n}')
        for name, (kind, doc) in PEER_FAMILIES.items():
            page.family(name, kind, doc, out[name])
        if mirror:
            for (name, (kind, doc)), lines in zip(MIRRORED_FAMILIES.items(), (fsync, commit),
                                                  strict=True):
                page.family(name, kind, doc, lines)

    def _gateways(self, page: Page, gateways: list[GatewayState]) -> None:
        out: dict[str, list[str]] = {name: [] for name in GATEWAY_FAMILIES}
        for g in gateways:
            lg = f'gateway="{_lv(g.name)}"'
            for call, result in sorted(g.admin.items()):
                out["watchdog_gateway_admin_success"].append(
                    f'watchdog_gateway_admin_success{{{lg},call="{_lv(call)}"}} '
                    f"{_bool(result.ok)}")
            for call, calls in sorted(g.admin_calls.items()):
                labels = f'{lg},call="{_lv(call)}"'
                _histogram(out["watchdog_gateway_admin_duration_seconds"],
                           "watchdog_gateway_admin_duration_seconds", labels + ",", calls.latency)
                for reason, n in calls.failures.items():
                    if n or reason == ALERTED_REASON:
                        out["watchdog_gateway_admin_failures"].append(
                            f'watchdog_gateway_admin_failures_total{{{labels},'
                            f'reason="{_lv(reason)}"}} {n}')
            if g.smoke is not None:
                out["watchdog_gateway_smoke_success"].append(
                    f"watchdog_gateway_smoke_success{{{lg}}} {_bool(g.smoke.ok)}")
                if g.smoke.sync_seconds is not None:
                    out["watchdog_gateway_sync_seconds"].append(
                        f"watchdog_gateway_sync_seconds{{{lg}}} {_num(g.smoke.sync_seconds)}")
                out["watchdog_gateway_last_smoke_timestamp_seconds"].append(
                    f"watchdog_gateway_last_smoke_timestamp_seconds{{{lg}}} {_num(g.last_smoke)}")
            for reason, n in g.smoke_failures.items():
                if n:
                    out["watchdog_gateway_smoke_failures"].append(
                        f'watchdog_gateway_smoke_failures_total{{{lg},reason="{_lv(reason)}"}} {n}')
            if g.config_lag is not None:
                out["watchdog_gateway_config_lag_revisions"].append(
                    f"watchdog_gateway_config_lag_revisions{{{lg}}} {_num(g.config_lag)}")
            if g.etcd_reachable is not None:
                out["watchdog_gateway_etcd_reachable"].append(
                    f"watchdog_gateway_etcd_reachable{{{lg}}} {_num(g.etcd_reachable)}")
            if g.ready is not None:
                out["watchdog_gateway_ready"].append(
                    f"watchdog_gateway_ready{{{lg}}} {_bool(g.ready)}")
        for name, (kind, doc) in GATEWAY_FAMILIES.items():
            page.family(name, kind, doc, out[name])


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
