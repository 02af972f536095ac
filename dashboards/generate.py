#!/usr/bin/env python3
"""Generate watchdog's Grafana dashboards with Grafana's own SDK (grafana-foundation-sdk).

    pip install -e '.[dashboards]'         # the pinned SDK (types for Grafana 11.6)
    python dashboards/generate.py          # rewrite the JSON files next to this script
    python dashboards/generate.py --check  # exit 1 if a committed JSON file is out of date

Edit this file, not the JSON; tests/unit/test_dashboards.py fails when they disagree.

Query rules (the e2e test evaluates every expression against a real Prometheus after
replacing `$__rate_interval` with `1m` and `$instance` / `$peer` / `$gateway` with `.*`):
- select series only through the P, G and W selectors below (`instance=~"$instance"` plus
  `peer=~"$peer"` or `gateway=~"$gateway"`); etcd's own series (Prometheus' scrape of etcd)
  only joined with ETCD_SCRAPE, which picks them by the peers' endpoints;
- no other Grafana variables inside expressions;
- only metric names from docs/metrics.md (plus the histograms' _bucket/_sum/_count);
- replicas (an HA pair of one shard) must not double-count: take one value per peer or
  gateway (`max without (instance, pod)`, `max by (peer)`), never a sum over instances;
  latency quantiles pool the replicas' buckets (docs/scaling.md).

Every panel has a unit and a description that ends with what to do, linking the runbook
section (docs/runbook.md) that covers it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import stat as sb
from grafana_foundation_sdk.builders import table as tb
from grafana_foundation_sdk.builders import timeseries as tsb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

HERE = Path(__file__).resolve().parent
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
W = 'instance=~"$instance"'  # the watchdog instance: one per etcd cluster it watches
P = f'{W},peer=~"$peer"'
G = f'{W},gateway=~"$gateway"'
RI = "$__rate_interval"
ONE = "max without (instance, pod)"  # one value per peer or gateway, however many replicas
# etcd's own scrape, narrowed to the members of the cluster (and peers) picked above: its
# `instance` is the host:port of a peer's client URL (`endpoint` on watchdog_etcd_peer_info).
# Replicas first folded into one series per peer: label_replace would give two replicas'
# series the same labels, which Prometheus refuses.
ETCD_SCRAPE = (f'max by (instance) (label_replace({ONE} (watchdog_etcd_peer_info{{{P}}}), '
               '"instance", "$1", "endpoint", "https?://([^/]+)/?"))')
RUNBOOK = "https://github.com/watchdog-project/watchdog/blob/main/docs/runbook.md"
Panel = tsb.Panel | sb.Panel | tb.Panel


def runbook(anchor: str, text: str = "runbook") -> str:
    """A markdown link to a section of docs/runbook.md (panel descriptions render markdown)."""
    return f"[{text}]({RUNBOOK}#{anchor})"


# --- building blocks ------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False
           ) -> pb.Dataquery:
    """A Prometheus query; instant ones (tables, stats of the current value) read one point."""
    q = pb.Dataquery().datasource(DS).expr(expr).legend_format(legend or "__auto")
    q = q.instant() if instant else q.range()
    if table:
        q = q.format(pm.PromQueryFormat.TABLE)
    return q


def thresholds(*steps: tuple[str, float | None]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=v, color=c) for c, v in steps])


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dm.ValueMap]:
    return [dm.ValueMap(options={
        k: dm.ValueMappingResult(text=text, color=color, index=i)
        for i, (k, (text, color)) in enumerate(mapping.items())
    })]


def _with_targets(panel: Panel, targets: Sequence[pb.Dataquery]) -> Panel:
    for ref, t in zip("ABCDEFGHIJ", targets, strict=False):
        panel.with_target(t.ref_id(ref))
    return panel


def style(regex: str, *, dash: bool = True, color: str | None = None
          ) -> tuple[str, list[dm.DynamicConfigValue]]:
    """Series matching `regex` drawn as a reference line: dashed, unfilled, maybe coloured."""
    props = []
    if dash:
        props.append(dm.DynamicConfigValue(id_val="custom.lineStyle",
                                           value={"fill": "dash", "dash": [10, 10]}))
    if color:
        props.append(dm.DynamicConfigValue(id_val="color",
                                           value={"mode": "fixed", "fixedColor": color}))
    props.append(dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0))
    return regex, props


def timeseries(
    title: str,
    description: str,
    targets: Sequence[pb.Dataquery],
    *,
    unit: str,
    min_: float | None = None,
    steps: db.ThresholdsConfig | None = None,
    overrides: Sequence[tuple[str, list[dm.DynamicConfigValue]]] = (),
    stack: bool = False,
    draw: cm.GraphDrawStyle = cm.GraphDrawStyle.LINE,
) -> tsb.Panel:
    line = draw == cm.GraphDrawStyle.LINE
    panel = (
        tsb.Panel().title(title).description(description).datasource(DS).unit(unit)
        .draw_style(draw)
        .line_interpolation(cm.LineInterpolation.STEP_AFTER if line else cm.LineInterpolation.LINEAR)
        .line_width(1)
        .fill_opacity(60 if stack else 10)
        .show_points(cm.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE)
                  .group("A"))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(
            cm.GraphThresholdsStyleMode.DASHED if steps else cm.GraphThresholdsStyleMode.OFF))
        .thresholds(steps or thresholds(("green", None)))
        .legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.TABLE)
                .placement(cm.LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"]))
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if min_ is not None:
        panel = panel.min(min_)
        if min_ == 0:
            panel = panel.axis_soft_min(0)
    for regex, props in overrides:
        panel = panel.override_by_regexp(regex, props)
    return _with_targets(panel, targets)  # type: ignore[return-value]


def stat(
    title: str,
    description: str,
    targets: Sequence[pb.Dataquery],
    *,
    unit: str,
    steps: db.ThresholdsConfig | None = None,
    mappings: list[dm.ValueMap] | None = None,
    text_mode: cm.BigValueTextMode = cm.BigValueTextMode.VALUE_AND_NAME,
) -> sb.Panel:
    coloured = bool(steps or mappings)
    panel = (
        sb.Panel().title(title).description(description).datasource(DS).unit(unit)
        .mappings(list(mappings or []))
        .thresholds(steps or thresholds(("text", None)))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(cm.BigValueColorMode.BACKGROUND if coloured else cm.BigValueColorMode.NONE)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .orientation(cm.VizOrientation.AUTO)
        .justify_mode(cm.BigValueJustifyMode.AUTO)
    )
    return _with_targets(panel, targets)  # type: ignore[return-value]


def table(title: str, description: str, targets: Sequence[pb.Dataquery], *, unit: str,
          hide: Sequence[str] = ("Time", "Value", "__name__")) -> tb.Panel:
    panel = (
        tb.Panel().title(title).description(description).datasource(DS).unit(unit)
        .show_header(True).cell_height(cm.TableCellHeight.SM)
        .with_transformation(dm.DataTransformerConfig(
            id_val="organize", options={"excludeByName": dict.fromkeys(hide, True)}))
    )
    return _with_targets(panel, targets)  # type: ignore[return-value]


class Board:
    """A dashboard under construction: numbers panels and lays them out in lines of 24
    columns through the SDK's own grid placement (a line must be filled exactly)."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.dashboard = (
            db.Dashboard(title).uid(uid).description(description)
            .tags(["watchdog", "etcd", "apisix"]).editable()
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .refresh("30s").time("now-6h", "now").timezone("browser").version(1)
            .link(db.DashboardLink("watchdog").type(dm.DashboardLinkType.DASHBOARDS)
                  .tags(["watchdog"]).as_dropdown(False).include_vars(True).keep_time(True)
                  .icon("external link").target_blank(False))
            .annotation(db.AnnotationQuery().name("Annotations & Alerts").built_in(1)
                        .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                        .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
                        .type("dashboard"))
            .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
            .with_variable(label_var("instance", "watchdog (cluster)", "watchdog_etcd_peer_up", ""))
            .with_variable(label_var("peer", "etcd peer", "watchdog_etcd_peer_up", W))
            .with_variable(label_var("gateway", "gateway", "watchdog_gateway_smoke_success", W))
        )
        self._id = 0
        self._x = 0

    def row(self, title: str) -> None:
        assert self._x == 0, f"row {title!r}: the line above is not full"
        self._id += 1
        self.dashboard.with_row(db.Row(title).id(self._id).collapsed(False))

    def add(self, panel: Panel, w: int, h: int = 8) -> None:
        assert self._x + w <= 24, f"panel {panel.build().title!r} overflows its line"
        self._id += 1
        self.dashboard.with_panel(panel.id(self._id).span(w).height(h))
        self._x = (self._x + w) % 24

    def annotate(self, name: str, expr: str) -> None:
        self.dashboard.annotation(
            db.AnnotationQuery().name(name).datasource(DS).enable(True).hide(False)
            .icon_color("red").expr(expr))

    def build(self) -> dm.Dashboard:
        assert self._x == 0, "the last line is not full"
        return self.dashboard.build()


def label_var(name: str, label: str, metric: str, selector: str) -> db.QueryVariable:
    """A multi-value variable over a label's values, chained to `selector`'s variables."""
    query = f"label_values({metric}{{{selector}}}, {name})" if selector else \
        f"label_values({metric}, {name})"
    return (
        db.QueryVariable(name).label(label).datasource(DS).query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True).include_all(True).all_value(".*")
    )


# --- the fleet dashboard --------------------------------------------------------------------


def fleet() -> dm.Dashboard:
    b = Board(
        "watchdog-fleet", "watchdog / etcd fleet",
        "etcd as seen by watchdog: open findings, members, watch load against the learned "
        "steady state, the 250-stream limit, JSON-gateway vs gRPC probes, storage.",
    )
    b.row("Findings and cluster")
    b.add(stat(
        "Open findings",
        "Problems watchdog has diagnosed and not yet seen cleared, by severity (0 when there "
        "are none). What to do: open watchdog's status page or `GET /api/v1/findings` for the "
        "cause and fix of each, and start with the critical ones. "
        + runbook("toolbox", "Runbook: toolbox"),
        [target(f"count by (severity) ({ONE} (watchdog_finding{{{W}}})) or vector(0)", "{{severity}}",
                instant=True)],
        unit="short",
        steps=thresholds(("green", None), ("orange", 1)),
    ), 4, 5)
    b.add(stat(
        "Peers up",
        "Peers that answered their API on the last poll, of all peers it knows, and those "
        "whose own /metrics page answered (none on backends without one). What to do when "
        "up < known: find the member that is down and restore it before another one fails. "
        + runbook("etcdpeerdown"),
        [target(f"sum({ONE} (watchdog_etcd_peer_up{{{P}}}))", "up"),
         target(f"count({ONE} (watchdog_etcd_peer_up{{{P}}}))", "known"),
         target(f"sum({ONE} (watchdog_etcd_metrics_up{{{P}}}))", "metrics page up")],
        unit="short",
    ), 4, 5)
    b.add(stat(
        "Leader",
        "1 on the member that is the raft leader. What to do when no member shows leader: "
        "the cluster is unavailable, follow the " + runbook("etcdnoleader"),
        [target(f"max by (peer) (watchdog_etcd_peer_is_leader{{{P}}})", "{{peer}}")],
        unit="short",
        mappings=value_map({"0": ("follower", "transparent"), "1": ("leader", "green")}),
    ), 6, 5)
    b.add(stat(
        "Peers without a leader",
        "Members that see no raft leader: they fail every request. What to do above 0: check "
        "the network between that member and the others. " + runbook("etcdmembernoleader"),
        [target(f"count({ONE} (watchdog_etcd_peer_has_leader{{{P}}}) == 0) or vector(0)", "no leader")],
        unit="short",
        steps=thresholds(("green", None), ("red", 1)),
    ), 3, 5)
    b.add(stat(
        "Leader changes (1h)",
        "Leader elections seen in the last hour (max over members). "
        "EtcdHighNumberOfLeaderChanges fires at 4 in 15 minutes. What to do when it climbs: "
        "look for slow disks or a flapping network. " + runbook("etcdhighnumberofleaderchanges"),
        [target(f"max(increase(watchdog_etcd_leader_changes_seen_total{{{P}}}[1h]))", "changes")],
        unit="short",
        steps=thresholds(("green", None), ("yellow", 1), ("red", 4)),
        text_mode=cm.BigValueTextMode.VALUE,
    ), 3, 5)
    b.add(stat(
        "Gateways synced",
        "Gateways whose last smoke probe (canary route) passed, of all gateways. What to do "
        "when synced < gateways: see the gateways dashboard and "
        + runbook("gatewayinitsyncfailed"),
        [target(f"sum({ONE} (watchdog_gateway_smoke_success{{{G}}}))", "synced"),
         target(f"count({ONE} (watchdog_gateway_smoke_success{{{G}}}))", "gateways")],
        unit="short",
    ), 4, 5)
    b.add(table(
        "Open findings (list)",
        "One row per open finding: its id, subject and severity (empty when all is well). "
        "What to do: `GET /api/v1/findings` on watchdog gives the evidence, cause and fix of "
        "each. " + runbook("toolbox", "Runbook: toolbox"),
        [target(f"max by (finding, subject, severity) (watchdog_finding{{{W}}})", instant=True,
                table=True)],
        unit="none",
    ), 12, 6)
    b.add(table(
        "Peers",
        "Identity of each peer. tls + version decide whether the JSON gateway shares one "
        "250-stream HTTP/2 connection (etcd < 3.4.20 / 3.5.5 with TLS). What to do with an "
        "exposed peer: plan the upgrade. "
        + runbook("the-250-stream-limit-and-the-fixes-by-version", "Runbook: the fixes by version"),
        [target(f"{ONE} (watchdog_etcd_peer_info{{{P}}})", instant=True, table=True)],
        unit="none",
    ), 12, 6)

    b.row("Watch load and the trip wire")
    b.add(timeseries(
        "Watch streams vs steady state",
        "Watch streams open on each peer, the steady state watchdog learned (absent during "
        "warm-up), the 2x trip line, and what the gateway inventory predicts. What to do when "
        "streams cross the trip line: find the client that leaks watches. "
        + runbook("etcdwatchconnectionstripwire"),
        [
            target(f"{ONE} (watchdog_etcd_watch_streams{{{P}}})", "{{peer}} streams"),
            target(f"{ONE} (watchdog_etcd_watch_streams_steady_state{{{P}}})", "{{peer}} steady state"),
            target(f"2 * {ONE} (watchdog_etcd_watch_streams_steady_state{{{P}}})", "{{peer}} trip at 2x"),
            target(f"{ONE} (watchdog_etcd_expected_watch_streams{{{P}}})", "{{peer}} expected"),
        ],
        unit="short",
        min_=0,
        overrides=[style(".* trip at 2x", color="red"), style(".* steady state"),
                   style(".* expected")],
    ), 12, 9)
    b.add(timeseries(
        "Streams / steady state",
        "Current watch streams divided by the learned steady state. The wire trips above "
        "the factor (2 by default) and clears below 1.5 after the hold time. What to do "
        "above 2: " + runbook("etcdwatchconnectionstripwire", "runbook"),
        [target(f"{ONE} (watchdog_etcd_watch_streams_ratio{{{P}}})", "{{peer}}")],
        unit="suffix:×",
        min_=0,
        steps=thresholds(("green", None), ("yellow", 1.5), ("red", 2)),
    ), 6, 9)
    b.add(timeseries(
        "Trip wires",
        "1 while a wire is tripped: watch streams or client connections above the factor "
        "times their steady state. What to do while one is tripped: "
        + runbook("etcdwatchconnectionstripwire"),
        [
            target(f"max by (peer) (watchdog_etcd_watch_tripwire{{{P}}})", "{{peer}} streams"),
            target(f"max by (peer) (watchdog_etcd_client_connections_tripwire{{{P}}})",
                   "{{peer}} connections"),
        ],
        unit="bool_yes_no",
        min_=0,
    ), 6, 9)
    b.add(stat(
        "Exposed to the 250-stream limit",
        "1 when the peer's JSON gateway shares one HTTP/2 connection capped at 250 streams "
        "(TLS, etcd < 3.4.20 / 3.5.5). What to do with an exposed peer: upgrade etcd or split "
        "its HTTP listener. "
        + runbook("the-250-stream-limit-and-the-fixes-by-version", "Runbook: the fixes by version"),
        [target(f"max by (peer) (watchdog_etcd_stream_limit_exposed{{{P}}})", "{{peer}}")],
        unit="short",
        mappings=value_map({"0": ("not exposed", "green"), "1": ("exposed", "orange")}),
    ), 6, 8)
    b.add(timeseries(
        "Stream headroom against the 250 limit",
        "250 minus the watch streams, only on exposed peers (empty when no peer is exposed). "
        "At 0 JSON-gateway calls through the peer hang while gRPC stays fast; "
        "EtcdWatchStreamsNearLimit fires at 50. What to do below 50: restart the gateway node "
        "that holds the most connections, then fix the version. "
        + runbook("etcdwatchstreamsnearlimit"),
        [target(f"{ONE} (watchdog_etcd_stream_limit_headroom{{{P}}})", "{{peer}}")],
        unit="short",
        min_=0,
        steps=thresholds(("red", None), ("yellow", 50), ("green", 100)),
    ), 9, 8)
    b.add(timeseries(
        "Client connections vs watch streams",
        "Established client TCP connections (only when watchdog runs beside the peer), "
        "their steady state, and watch streams. Connections without a stream going up "
        "means clients open connections they do not use. What to do then: find the remote "
        "that holds them. " + runbook("etcdwatchconnectionstripwire"),
        [
            target(f"{ONE} (watchdog_etcd_client_connections{{{P}}})", "{{peer}} connections"),
            target(f"{ONE} (watchdog_etcd_client_connections_steady_state{{{P}}})",
                   "{{peer}} connections steady state"),
            target(f"{ONE} (watchdog_etcd_watch_streams{{{P}}})", "{{peer}} streams"),
            target(f"{ONE} (watchdog_etcd_client_connections{{{P}}}) - "
                   f"{ONE} (watchdog_etcd_watch_streams{{{P}}})",
                   "{{peer}} connections without a stream"),
        ],
        unit="short",
        overrides=[style(".* steady state")],
    ), 9, 8)
    b.add(timeseries(
        "Client connections by remote (top 10)",
        "Who holds the connections: the biggest remote is the first suspect of a leak. What "
        "to do: restart that gateway node once the others are healthy. "
        + runbook("etcdwatchconnectionstripwire"),
        [target(f"topk(10, {ONE} (watchdog_etcd_client_connections_by_remote{{{P}}}))",
                "{{peer}} <- {{remote}}")],
        unit="short",
        min_=0,
    ), 12, 8)
    b.add(timeseries(
        "Watchers and slow watchers",
        "Watchers registered and unsynced (slow) watchers. Slow "
        "watchers that never drop to 0 mean the watch system is overloaded. What to do: "
        + runbook("etcdslowwatchers"),
        [
            target(f"{ONE} (watchdog_etcd_watchers{{{P}}})", "{{peer}} watchers"),
            target(f"{ONE} (watchdog_etcd_slow_watchers{{{P}}})", "{{peer}} slow watchers"),
        ],
        unit="short",
        min_=0,
    ), 12, 8)

    b.row("Read probes: JSON gateway vs gRPC")
    for q in ("0.5", "0.99"):
        b.add(timeseries(
            f"Probe latency p{int(float(q) * 100)} by API",
            "Latency of read probes through the JSON gateway (the path APISIX uses) and "
            "through gRPC. JSON slow while gRPC is fast on the same peer is the 250-stream "
            "stall; both slow means the peer itself is in trouble. What to do: "
            + runbook("etcdjsongatewaystalled", "JSON stalled") + " or "
            + runbook("etcdpeerprobesfailing", "peer failing"),
            [target(
                f"histogram_quantile({q}, sum by (peer, api, le) "
                f"(rate(watchdog_etcd_probe_duration_seconds_bucket{{{P}}}[{RI}])))",
                "{{peer}} {{api}}",
            )],
            unit="s",
            min_=0,
            steps=thresholds(("green", None), ("red", 1)),
        ), 12)
    b.add(timeseries(
        "Probe failures by reason",
        "Failed probes per second (timeout, refused, tls, auth, http, protocol). What to do: "
        "timeouts on json only point at the stream limit, refused at a member that is down, "
        "tls/auth at certificates or credentials. " + runbook("etcdpeerprobesfailing"),
        [target(
            "max by (peer, api, reason) (sum without (op) "
            f"(rate(watchdog_etcd_probe_failures_total{{{P}}}[{RI}])))",
            "{{peer}} {{api}} {{reason}}",
        )],
        unit="ops",
        min_=0,
    ), 12)
    b.add(timeseries(
        "Last probe succeeded",
        "1 if the last probe through each API succeeded. What to do when json stays at 0 and "
        "grpc at 1: " + runbook("etcdjsongatewaystalled"),
        [target(f"min by (peer, api) (watchdog_etcd_probe_success{{{P}}})", "{{peer}} {{api}}")],
        unit="bool_yes_no",
        min_=0,
    ), 12)

    b.row("Storage and disk")
    b.add(timeseries(
        "DB size vs quota",
        "Physically allocated and logically used DB size, and the backend quota. At the "
        "quota etcd raises NOSPACE and refuses writes. What to do near it: compact and "
        "defragment. " + runbook("etcddatabasequotalowspace"),
        [
            target(f"{ONE} (watchdog_etcd_db_size_bytes{{{P}}})", "{{peer}} allocated"),
            target(f"{ONE} (watchdog_etcd_db_size_in_use_bytes{{{P}}})", "{{peer}} in use"),
            target(f"max(watchdog_etcd_db_quota_bytes{{{P}}})", "quota"),
        ],
        unit="bytes",
        min_=0,
        overrides=[style("quota", color="red")],
    ), 8)
    for name, own, mirrored, rec, anchor in (
        ("WAL fsync p99", "etcd_disk_wal_fsync_duration_seconds",
         "watchdog_etcd_wal_fsync_duration_seconds", 0.01, "etcdhighfsyncdurations"),
        ("Backend commit p99", "etcd_disk_backend_commit_duration_seconds",
         "watchdog_etcd_backend_commit_duration_seconds", 0.025, "etcdhighcommitdurations"),
    ):
        b.add(timeseries(
            name,
            f"p99 of etcd's own histogram, from Prometheus' scrape of etcd (every etcd member "
            "it scrapes, by instance), and of watchdog's copy where etcd.mirror_histograms is "
            f"on (by peer). etcd recommends < {rec * 1000:g} ms. What to do above it: move "
            "etcd to a faster, unshared disk. " + runbook(anchor),
            [
                target(f"histogram_quantile(0.99, sum by (instance, le) (rate({own}_bucket[{RI}]) "
                       f"and on (instance) {ETCD_SCRAPE}))", "{{instance}}"),
                target(f"histogram_quantile(0.99, sum by (peer, le) "
                       f"(rate({mirrored}_bucket{{{P}}}[{RI}])))", "{{peer}} (mirrored)"),
            ],
            unit="s",
            min_=0,
            steps=thresholds(("green", None), ("red", rec)),
        ), 8)
    b.add(timeseries(
        "File descriptors",
        "etcd's open file descriptors and its limit. Every client connection takes one. What "
        "to do near the limit: find the leaking client, raise the limit. "
        + runbook("etcdfiledescriptorshigh"),
        [
            target(f"{ONE} (watchdog_etcd_open_fds{{{P}}})", "{{peer}} open"),
            target(f"{ONE} (watchdog_etcd_max_fds{{{P}}})", "{{peer}} limit"),
        ],
        unit="short",
        min_=0,
        overrides=[style(".* limit", color="red")],
    ), 24)

    b.row("watchdog itself")
    b.add(timeseries(
        "Job runs by outcome",
        "Runs per second of each polling task (the task label names it). What to do when "
        "error or timeout runs dominate: read watchdog's log for that task. "
        + runbook("watchdogjobfailing"),
        [target(f"sum without (instance) (rate(watchdog_job_runs_total{{{W}}}[{RI}]))",
                "{{task}} {{outcome}}")],
        unit="ops",
        min_=0,
    ), 8)
    b.add(timeseries(
        "Job duration (last run)",
        "Wall time of each job's last run. What to do when one nears its interval: raise the "
        "interval or the timeout in the config. " + runbook("watchdogjobfailing"),
        [target(f"max without (instance) (watchdog_job_duration_seconds{{{W}}})", "{{task}}")],
        unit="s",
        min_=0,
    ), 8)
    b.add(timeseries(
        "Peer poll duration (last poll)",
        "Wall time of the last poll of each peer's /metrics. What to do when it nears the "
        "timeout: check the peer's load and the network to it. " + runbook("etcdpeerdown"),
        [target(f"{ONE} (watchdog_etcd_poll_duration_seconds{{{P}}})", "{{peer}}")],
        unit="s",
        min_=0,
    ), 8)
    b.annotate("Trip wire", f"max by (peer) (watchdog_etcd_watch_tripwire{{{P}}}) == 1")
    return b.build()


# --- the gateways dashboard -----------------------------------------------------------------


def gateways() -> dm.Dashboard:
    b = Board(
        "watchdog-gateways", "watchdog / gateways",
        "APISIX gateways as seen by watchdog: admin API latency and failures, smoke probes "
        "(canary sync), config lag, readiness.",
    )
    b.row("Admin API")
    b.add(timeseries(
        "Admin latency p50 / p90 / p99",
        "Latency of watchdog's admin API calls. Each call reads or writes etcd through the "
        "JSON gateway. GatewayAdminSlow fires at p90 > 1 s. What to do: check the JSON-gateway "
        "probes of the etcd peer behind it. " + runbook("gatewayadminslow"),
        [
            target(
                f"histogram_quantile({q}, sum by (gateway, le) "
                f"(rate(watchdog_gateway_admin_duration_seconds_bucket{{{G}}}[{RI}])))",
                f"{{{{gateway}}}} p{name}",
            )
            for q, name in (("0.5", "50"), ("0.9", "90"), ("0.99", "99"))
        ],
        unit="s",
        min_=0,
        steps=thresholds(("green", None), ("red", 1)),
    ), 12)
    b.add(timeseries(
        "Admin latency p90 by call",
        "Per admin call: reads and writes can behave differently. What to do when only writes "
        "are slow: check etcd's disk (commit and fsync latency). " + runbook("gatewayadminslow"),
        [target(
            f"histogram_quantile(0.9, sum by (gateway, call, le) "
            f"(rate(watchdog_gateway_admin_duration_seconds_bucket{{{G}}}[{RI}])))",
            "{{gateway}} {{call}}",
        )],
        unit="s",
        min_=0,
    ), 12)
    b.add(timeseries(
        "Admin failures by reason",
        "Failed admin calls per second (timeout, refused, auth, http, protocol). What to do: "
        "auth means the admin key changed, timeouts point at etcd behind the gateway. "
        + runbook("gatewayadminfailing"),
        [target(
            "max by (gateway, reason) (sum without (call) "
            f"(rate(watchdog_gateway_admin_failures_total{{{G}}}[{RI}])))",
            "{{gateway}} {{reason}}",
        )],
        unit="ops",
        min_=0,
    ), 12)
    b.add(timeseries(
        "Last admin call succeeded",
        "1 if the last admin call succeeded. What to do at 0: " + runbook("gatewayadminfailing"),
        [target(f"min by (gateway, call) (watchdog_gateway_admin_success{{{G}}})",
                "{{gateway}} {{call}}")],
        unit="bool_yes_no",
        min_=0,
    ), 12)

    b.row("Config sync")
    b.add(stat(
        "Smoke result",
        "Last smoke probe per gateway: a canary route written through the admin API and "
        "served by the data plane. What to do when one failed: "
        + runbook("gatewayinitsyncfailed"),
        [target(f"max by (gateway) (watchdog_gateway_smoke_success{{{G}}})", "{{gateway}}")],
        unit="short",
        mappings=value_map({"0": ("failed", "red"), "1": ("synced", "green")}),
    ), 8)
    b.add(timeseries(
        "Canary sync time",
        "Last canary propagation time, from the admin write to the first served request. "
        "What to do when it grows: the gateway's watch on etcd lags, see "
        + runbook("gatewayconfiglag"),
        [target(f"{ONE} (watchdog_gateway_sync_seconds{{{G}}})", "{{gateway}}")],
        unit="s",
        min_=0,
    ), 8)
    b.add(timeseries(
        "Config lag (revisions)",
        "etcd revision minus the newest revision the gateway reports. Writes to keys APISIX "
        "does not load also count, so a constant small lag is normal; GatewayConfigLag "
        "fires above 100 for 15 minutes. What to do then: " + runbook("gatewayconfiglag"),
        [target(f"{ONE} (watchdog_gateway_config_lag_revisions{{{G}}})", "{{gateway}}")],
        unit="short",
        min_=0,
        steps=thresholds(("green", None), ("red", 100)),
    ), 8)
    b.add(timeseries(
        "Smoke passing",
        "1 while the last smoke probe passed. What to do at 0: "
        + runbook("gatewayinitsyncfailed"),
        [target(f"min by (gateway) (watchdog_gateway_smoke_success{{{G}}})", "{{gateway}}")],
        unit="bool_yes_no",
        min_=0,
    ), 8)
    b.add(timeseries(
        "Smoke failures by reason (1h)",
        "Failed smoke probes in the last hour. What to do: the reason says where the canary "
        "got stuck (write, propagation, delete). " + runbook("gatewayinitsyncfailed"),
        [target(
            f"max by (gateway, reason) (increase(watchdog_gateway_smoke_failures_total{{{G}}}[1h]))",
            "{{gateway}} {{reason}}",
        )],
        unit="short",
        min_=0,
    ), 8)
    b.add(timeseries(
        "Time since last smoke probe",
        "Seconds since the last smoke probe finished (gateways that never ran one are left "
        "out). What to do when it keeps growing: watchdog's smoke task is stuck. "
        + runbook("watchdogjobfailing"),
        [target(
            f"time() - max by (gateway) (watchdog_gateway_last_smoke_timestamp_seconds{{{G}}} > 0)",
            "{{gateway}}",
        )],
        unit="s",
        min_=0,
    ), 8)

    b.row("Gateway health")
    b.add(timeseries(
        "Ready (/status/ready)",
        "1 when /status/ready answers 200 (APISIX >= 3.13 with the status API): every "
        "worker has loaded its config at least once. What to do at 0: "
        + runbook("gatewaynotready"),
        [target(f"{ONE} (watchdog_gateway_ready{{{G}}})", "{{gateway}}")],
        unit="bool_yes_no",
        min_=0,
    ), 12)
    b.add(timeseries(
        "etcd reachable (as the gateway reports it)",
        "apisix_etcd_reachable from the gateway's Prometheus endpoint. What to do at 0: "
        + runbook("gatewayetcdunreachable"),
        [target(f"{ONE} (watchdog_gateway_etcd_reachable{{{G}}})", "{{gateway}}")],
        unit="bool_yes_no",
        min_=0,
    ), 12)

    b.row("etcd behind the gateways")
    b.add(timeseries(
        "JSON vs gRPC probe p99",
        "The etcd side of admin latency: JSON-gateway probes slow while gRPC is fast is the "
        "250-stream stall. What to do then: " + runbook("etcdjsongatewaystalled"),
        [target(
            "histogram_quantile(0.99, sum by (api, le) "
            f"(rate(watchdog_etcd_probe_duration_seconds_bucket{{{P}}}[{RI}])))",
            "{{api}}",
        )],
        unit="s",
        min_=0,
    ), 12)
    b.add(timeseries(
        "Watch streams per peer",
        "Watch streams open on each peer (each APISIX worker holds one on APISIX >= 3.4). "
        "What to do near 250 on an exposed peer: " + runbook("etcdwatchstreamsnearlimit"),
        [target(f"{ONE} (watchdog_etcd_watch_streams{{{P}}})", "{{peer}}")],
        unit="short",
        min_=0,
    ), 12)
    return b.build()


DASHBOARDS: dict[str, Callable[[], dm.Dashboard]] = {
    "watchdog-fleet.json": fleet,
    "watchdog-gateways.json": gateways,
}


def render(build: Callable[[], dm.Dashboard]) -> str:
    """The dashboard as committed: the SDK's JSON, indented, one trailing newline."""
    data: Any = json.loads(json.dumps(build(), cls=JSONEncoder))
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("out of date (run python dashboards/generate.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
