#!/usr/bin/env python3
"""Generate watchdog's Grafana dashboards (standard library only).

    python dashboards/generate.py          # rewrite the JSON files next to this script
    python dashboards/generate.py --check  # exit 1 if a committed JSON file is out of date

Edit this file, not the JSON; tests/unit/test_dashboards.py fails when they disagree.

Query rules (the e2e test evaluates every expression against a real Prometheus after
replacing `$__rate_interval` with `1m` and `$peer` / `$gateway` with `.*`):
- select peers and gateways only as `peer=~"$peer"` / `gateway=~"$gateway"`;
- no other Grafana variables inside expressions;
- only metric names from docs/metrics.md (plus the histograms' _bucket/_sum/_count).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
P = 'peer=~"$peer"'
G = 'gateway=~"$gateway"'
RI = "$__rate_interval"


# --- building blocks ------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series"):
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t.update({"instant": True, "range": False, "format": fmt})
    else:
        t.update({"instant": False, "range": True})
    return t


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                k: {"text": text, "color": color, "index": i}
                for i, (k, (text, color)) in enumerate(mapping.items())
            },
        }
    ]


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    min_: float | None = None,
    steps: dict[str, Any] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    stack: bool = False,
    draw: str = "line",
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": draw,
        "lineInterpolation": "stepAfter" if draw == "line" else "linear",
        "lineWidth": 1,
        "fillOpacity": 10 if not stack else 60,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if steps else "off"},
    }
    if min_ == 0:
        custom["axisSoftMin"] = 0
    defaults: dict[str, Any] = {"unit": unit, "custom": custom}
    if min_ is not None:
        defaults["min"] = min_
    defaults["thresholds"] = steps or thresholds(("green", None))
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {
                "showLegend": True,
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    steps: dict[str, Any] | None = None,
    mappings: list[dict[str, Any]] | None = None,
    text_mode: str = "value_and_name",
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "mappings": mappings or [],
                "thresholds": steps or thresholds(("text", None)),
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background" if (steps or mappings) else "none",
            "graphMode": "none",
            "textMode": text_mode,
            "orientation": "auto",
            "justifyMode": "auto",
        },
        "targets": targets,
    }


def table(title: str, description: str, targets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}},
            }
        ],
        "targets": targets,
    }


def style_override(regex: str, *, dash: bool = True, color: str | None = None):
    props: list[dict[str, Any]] = []
    if dash:
        props.append({"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}})
    if color:
        props.append({"id": "color", "value": {"mode": "fixed", "fixedColor": color}})
    props.append({"id": "custom.fillOpacity", "value": 0})
    return {"matcher": {"id": "byRegexp", "options": regex}, "properties": props}


class Board:
    """Lays panels out left to right in 24 columns and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._id = 0
        self._x = 0
        self._y = 0
        self._line_h = 0

    def _newline(self) -> None:
        if self._x:
            self._y += self._line_h
            self._x = 0
            self._line_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self._id += 1
        self.panels.append(
            {
                "type": "row",
                "id": self._id,
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def add(self, panel: dict[str, Any], w: int, h: int = 8) -> None:
        if self._x + w > 24:
            self._newline()
        self._id += 1
        for ref, t in zip("ABCDEFGHIJ", panel["targets"], strict=False):
            t["refId"] = ref
        placed = {"id": self._id, "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y}}
        self.panels.append({**placed, **panel})
        self._x += w
        self._line_h = max(self._line_h, h)


def datasource_var() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def label_var(name: str, label: str, metric: str) -> dict[str, Any]:
    query = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": query,
        "current": {},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


def dashboard(uid: str, title: str, description: str, board: Board, annotations=None):
    return {
        "__inputs": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *(annotations or []),
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["watchdog"],
                "targetBlank": False,
                "title": "watchdog",
                "type": "dashboards",
            }
        ],
        "panels": board.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["watchdog", "etcd", "apisix"],
        "templating": {
            "list": [
                datasource_var(),
                label_var("peer", "etcd peer", "watchdog_etcd_peer_up"),
                label_var("gateway", "gateway", "watchdog_gateway_smoke_success"),
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# --- the fleet dashboard --------------------------------------------------------------------


def fleet() -> dict[str, Any]:
    b = Board()
    b.row("Cluster")
    b.add(
        stat(
            "Peers up",
            "Peers whose /metrics watchdog read on the last poll, of all peers it knows.",
            [
                target(f"sum(watchdog_etcd_peer_up{{{P}}})", "up"),
                target(f"count(watchdog_etcd_peer_up{{{P}}})", "known"),
            ],
        ),
        4,
        5,
    )
    b.add(
        stat(
            "Leader",
            "1 on the member that is the raft leader.",
            [target(f"max by (peer) (watchdog_etcd_peer_is_leader{{{P}}})", "{{peer}}")],
            mappings=value_map({"0": ("follower", "transparent"), "1": ("leader", "green")}),
        ),
        8,
        5,
    )
    b.add(
        stat(
            "Peers without a leader",
            "Members that see no raft leader: they fail every request.",
            [target(f"count(watchdog_etcd_peer_has_leader{{{P}}} == 0) or vector(0)", "no leader")],
            steps=thresholds(("green", None), ("red", 1)),
        ),
        4,
        5,
    )
    b.add(
        stat(
            "Leader changes (1h)",
            "Leader elections seen in the last hour (max over members). "
            "EtcdHighNumberOfLeaderChanges fires at 4 in 15 minutes.",
            [
                target(
                    f"max(increase(watchdog_etcd_leader_changes_seen_total{{{P}}}[1h]))",
                    "changes",
                )
            ],
            steps=thresholds(("green", None), ("yellow", 1), ("red", 4)),
            text_mode="value",
        ),
        4,
        5,
    )
    b.add(
        stat(
            "Gateways synced",
            "Gateways whose last smoke probe (canary route) passed, of all gateways.",
            [
                target(f"sum(watchdog_gateway_smoke_success{{{G}}})", "synced"),
                target(f"count(watchdog_gateway_smoke_success{{{G}}})", "gateways"),
            ],
        ),
        4,
        5,
    )
    b.add(
        table(
            "Peers",
            "Identity of each peer. tls + version decide whether the JSON gateway shares one "
            "250-stream HTTP/2 connection (etcd < 3.4.20 / 3.5.5 with TLS).",
            [target(f"watchdog_etcd_peer_info{{{P}}}", instant=True, fmt="table")],
        ),
        24,
        6,
    )

    b.row("Watch load and the trip wire")
    b.add(
        timeseries(
            "Watch streams vs steady state",
            "Watch streams open on each peer, the steady state watchdog learned (absent during "
            "warm-up), the 2x trip line, and what the gateway inventory predicts.",
            [
                target(f"watchdog_etcd_watch_streams{{{P}}}", "{{peer}} streams"),
                target(f"watchdog_etcd_watch_streams_steady_state{{{P}}}", "{{peer}} steady state"),
                target(f"2 * watchdog_etcd_watch_streams_steady_state{{{P}}}", "{{peer}} trip at 2x"),
                target(f"watchdog_etcd_expected_watch_streams{{{P}}}", "{{peer}} expected"),
            ],
            min_=0,
            overrides=[
                style_override(".* trip at 2x", color="red"),
                style_override(".* steady state"),
                style_override(".* expected"),
            ],
        ),
        12,
        9,
    )
    b.add(
        timeseries(
            "Streams / steady state",
            "Current watch streams divided by the learned steady state. The wire trips above "
            "the factor (2 by default) and clears below 1.5 after the hold time.",
            [target(f"watchdog_etcd_watch_streams_ratio{{{P}}}", "{{peer}}")],
            min_=0,
            steps=thresholds(("green", None), ("yellow", 1.5), ("red", 2)),
        ),
        6,
        9,
    )
    b.add(
        timeseries(
            "Trip wires",
            "1 while a wire is tripped: watch streams or client connections above the factor "
            "times their steady state.",
            [
                target(f"max by (peer) (watchdog_etcd_watch_tripwire{{{P}}})", "{{peer}} streams"),
                target(
                    f"max by (peer) (watchdog_etcd_client_connections_tripwire{{{P}}})",
                    "{{peer}} connections",
                ),
            ],
            min_=0,
        ),
        6,
        9,
    )
    b.add(
        stat(
            "Exposed to the 250-stream limit",
            "1 when the peer's JSON gateway shares one HTTP/2 connection capped at 250 streams "
            "(TLS, etcd < 3.4.20 / 3.5.5).",
            [target(f"max by (peer) (watchdog_etcd_stream_limit_exposed{{{P}}})", "{{peer}}")],
            mappings=value_map({"0": ("not exposed", "green"), "1": ("exposed", "orange")}),
        ),
        6,
        8,
    )
    b.add(
        timeseries(
            "Stream-limit headroom (exposed peers)",
            "250 minus watch streams, only on exposed peers (empty when no peer is exposed). "
            "EtcdWatchStreamsNearLimit fires at 50.",
            [target(f"watchdog_etcd_stream_limit_headroom{{{P}}}", "{{peer}}")],
            steps=thresholds(("red", None), ("yellow", 50), ("green", 100)),
        ),
        9,
        8,
    )
    b.add(
        timeseries(
            "Client connections vs watch streams",
            "Established client TCP connections (only when watchdog runs beside the peer), "
            "their steady state, and watch streams. Connections without a stream going up "
            "means clients open connections they do not use.",
            [
                target(f"watchdog_etcd_client_connections{{{P}}}", "{{peer}} connections"),
                target(
                    f"watchdog_etcd_client_connections_steady_state{{{P}}}",
                    "{{peer}} connections steady state",
                ),
                target(f"watchdog_etcd_watch_streams{{{P}}}", "{{peer}} streams"),
                target(
                    f"watchdog_etcd_connections_without_stream{{{P}}}",
                    "{{peer}} connections without a stream",
                ),
            ],
            overrides=[style_override(".* steady state")],
        ),
        9,
        8,
    )
    b.add(
        timeseries(
            "Client connections by remote (top 10)",
            "Who holds the connections: the biggest remote is the first suspect of a leak.",
            [
                target(
                    f"topk(10, watchdog_etcd_client_connections_by_remote{{{P}}})",
                    "{{peer}} <- {{remote}}",
                )
            ],
            min_=0,
        ),
        12,
        8,
    )
    b.add(
        timeseries(
            "Watchers and slow watchers",
            "Watchers registered, unsynced (slow) watchers, and gRPC Watch streams open. Slow "
            "watchers that never drop to 0 mean the watch system is overloaded.",
            [
                target(f"watchdog_etcd_watchers{{{P}}}", "{{peer}} watchers"),
                target(f"watchdog_etcd_slow_watchers{{{P}}}", "{{peer}} slow watchers"),
                target(f"watchdog_etcd_grpc_watch_streams_open{{{P}}}", "{{peer}} gRPC watch streams"),
            ],
            min_=0,
        ),
        12,
        8,
    )

    b.row("Read probes: JSON gateway vs gRPC")
    for q in ("0.5", "0.99"):
        b.add(
            timeseries(
                f"Probe latency p{int(float(q) * 100)} by API",
                "Latency of read probes through the JSON gateway (the path APISIX uses) and "
                "through gRPC. JSON slow while gRPC is fast on the same peer is the 250-stream "
                "stall.",
                [
                    target(
                        f"histogram_quantile({q}, sum by (peer, api, le) "
                        f"(rate(watchdog_etcd_probe_duration_seconds_bucket{{{P}}}[{RI}])))",
                        "{{peer}} {{api}}",
                    )
                ],
                unit="s",
                min_=0,
                steps=thresholds(("green", None), ("red", 1)),
            ),
            12,
        )
    b.add(
        timeseries(
            "Probe failures by reason",
            "Failed probes per second (timeout, refused, tls, auth, http, protocol).",
            [
                target(
                    f"sum by (peer, api, reason) (rate(watchdog_etcd_probe_failures_total{{{P}}}[{RI}]))",
                    "{{peer}} {{api}} {{reason}}",
                )
            ],
            unit="ops",
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Last probe succeeded",
            "1 if the last probe through each API succeeded.",
            [target(f"min by (peer, api) (watchdog_etcd_probe_success{{{P}}})", "{{peer}} {{api}}")],
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "JSON probe phases (last probe)",
            "Where the last JSON-gateway probe spent its time. A long processing phase after a "
            "fast connect is the stream-limit queue.",
            [
                target(
                    f"max by (peer, phase) (watchdog_etcd_probe_phase_seconds{{{P}}})",
                    "{{peer}} {{phase}}",
                )
            ],
            unit="s",
            stack=True,
            draw="bars",
        ),
        8,
    )

    b.row("Storage and disk")
    b.add(
        timeseries(
            "DB size vs quota",
            "Physically allocated and logically used DB size, and the backend quota. At the "
            "quota etcd raises NOSPACE and refuses writes.",
            [
                target(f"watchdog_etcd_db_size_bytes{{{P}}}", "{{peer}} allocated"),
                target(f"watchdog_etcd_db_size_in_use_bytes{{{P}}}", "{{peer}} in use"),
                target(f"max(watchdog_etcd_db_quota_bytes{{{P}}})", "quota"),
            ],
            unit="bytes",
            min_=0,
            overrides=[style_override("quota", color="red")],
        ),
        8,
    )
    for name, metric, rec in (
        ("WAL fsync p99", "watchdog_etcd_wal_fsync_duration_seconds", 0.01),
        ("Backend commit p99", "watchdog_etcd_backend_commit_duration_seconds", 0.025),
    ):
        b.add(
            timeseries(
                name,
                f"p99 from the histogram mirrored from etcd. etcd recommends < {rec * 1000:g} ms.",
                [
                    target(
                        f"histogram_quantile(0.99, sum by (peer, le) (rate({metric}_bucket{{{P}}}[{RI}])))",
                        "{{peer}}",
                    )
                ],
                unit="s",
                min_=0,
                steps=thresholds(("green", None), ("red", rec)),
            ),
            8,
        )
    b.add(
        timeseries(
            "File descriptors",
            "etcd's open file descriptors and its limit. Every client connection takes one.",
            [
                target(f"watchdog_etcd_open_fds{{{P}}}", "{{peer}} open"),
                target(f"watchdog_etcd_max_fds{{{P}}}", "{{peer}} limit"),
            ],
            min_=0,
            overrides=[style_override(".* limit", color="red")],
        ),
        12,
    )
    b.add(
        timeseries(
            "Revision",
            "etcd revision seen by the last successful read probe on each peer.",
            [target(f"max by (peer) (watchdog_etcd_revision{{{P}}})", "{{peer}}")],
        ),
        12,
    )

    b.row("watchdog itself")
    b.add(
        timeseries(
            "Job runs by outcome",
            "Runs per second of each polling task (the task label names it).",
            [
                target(
                    f"sum without (instance) (rate(watchdog_job_runs_total[{RI}]))",
                    "{{task}} {{outcome}}",
                )
            ],
            unit="ops",
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Job duration (last run)",
            "Wall time of each job's last run.",
            [target("max without (instance) (watchdog_job_duration_seconds)", "{{task}}")],
            unit="s",
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Peer poll duration (last poll)",
            "Wall time of the last poll of each peer's /metrics.",
            [target(f"watchdog_etcd_poll_duration_seconds{{{P}}}", "{{peer}}")],
            unit="s",
            min_=0,
        ),
        8,
    )
    annotations = [
        {
            "datasource": DS,
            "enable": True,
            "hide": False,
            "iconColor": "red",
            "name": "Trip wire",
            "expr": f"max by (peer) (watchdog_etcd_watch_tripwire{{{P}}}) == 1",
            "step": "1m",
            "titleFormat": "trip wire",
            "textFormat": "watch streams on {{peer}} tripped the wire",
            "tagKeys": "peer",
            "useValueForTime": False,
        }
    ]
    return dashboard(
        "watchdog-fleet",
        "watchdog / etcd fleet",
        "etcd as seen by watchdog: members, watch load against the learned steady state, the "
        "250-stream limit, JSON-gateway vs gRPC probes, storage.",
        b,
        annotations,
    )


# --- the gateways dashboard -----------------------------------------------------------------


def gateways() -> dict[str, Any]:
    b = Board()
    b.row("Admin API")
    b.add(
        timeseries(
            "Admin latency p50 / p90 / p99",
            "Latency of watchdog's admin API calls. Each call reads or writes etcd through the "
            "JSON gateway. GatewayAdminSlow fires at p90 > 1 s.",
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
        ),
        12,
    )
    b.add(
        timeseries(
            "Admin latency p90 by call",
            "Per admin call: reads and writes can behave differently.",
            [
                target(
                    f"histogram_quantile(0.9, sum by (gateway, call, le) "
                    f"(rate(watchdog_gateway_admin_duration_seconds_bucket{{{G}}}[{RI}])))",
                    "{{gateway}} {{call}}",
                )
            ],
            unit="s",
            min_=0,
        ),
        12,
    )
    b.add(
        timeseries(
            "Admin failures by reason",
            "Failed admin calls per second (timeout, refused, auth, http, protocol).",
            [
                target(
                    f"sum by (gateway, reason) (rate(watchdog_gateway_admin_failures_total{{{G}}}[{RI}]))",
                    "{{gateway}} {{reason}}",
                )
            ],
            unit="ops",
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Last admin call succeeded",
            "1 if the last admin call succeeded.",
            [
                target(
                    f"min by (gateway, call) (watchdog_gateway_admin_success{{{G}}})",
                    "{{gateway}} {{call}}",
                )
            ],
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Admin call phases (last call)",
            "Where the last admin call spent its time.",
            [
                target(
                    f"max by (gateway, phase) (watchdog_gateway_admin_phase_seconds{{{G}}})",
                    "{{gateway}} {{phase}}",
                )
            ],
            unit="s",
            stack=True,
            draw="bars",
        ),
        8,
    )

    b.row("Config sync")
    b.add(
        stat(
            "Smoke result",
            "Last smoke probe per gateway: a canary route written through the admin API and "
            "served by the data plane.",
            [target(f"max by (gateway) (watchdog_gateway_smoke_success{{{G}}})", "{{gateway}}")],
            mappings=value_map({"0": ("failed", "red"), "1": ("synced", "green")}),
        ),
        8,
    )
    b.add(
        timeseries(
            "Canary sync time",
            "Last canary propagation time, from the admin write to the first served request.",
            [target(f"watchdog_gateway_sync_seconds{{{G}}}", "{{gateway}}")],
            unit="s",
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Config lag (revisions)",
            "etcd revision minus the newest revision the gateway reports. Writes to keys APISIX "
            "does not load also count, so a constant small lag is normal; GatewayConfigLag "
            "fires above 100 for 15 minutes.",
            [target(f"watchdog_gateway_config_lag_revisions{{{G}}}", "{{gateway}}")],
            min_=0,
            steps=thresholds(("green", None), ("red", 100)),
        ),
        8,
    )
    b.add(
        timeseries(
            "Smoke passing",
            "1 while the last smoke probe passed.",
            [target(f"min by (gateway) (watchdog_gateway_smoke_success{{{G}}})", "{{gateway}}")],
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Smoke failures by reason (1h)",
            "Failed smoke probes in the last hour.",
            [
                target(
                    f"sum by (gateway, reason) (increase(watchdog_gateway_smoke_failures_total{{{G}}}[1h]))",
                    "{{gateway}} {{reason}}",
                )
            ],
            min_=0,
        ),
        8,
    )
    b.add(
        timeseries(
            "Time since last smoke probe",
            "Seconds since the last smoke probe finished (gateways that never ran one are left out).",
            [
                target(
                    f"time() - max by (gateway) (watchdog_gateway_last_smoke_timestamp_seconds{{{G}}} > 0)",
                    "{{gateway}}",
                )
            ],
            unit="s",
            min_=0,
        ),
        8,
    )

    b.row("Gateway health")
    b.add(
        timeseries(
            "Ready (/status/ready)",
            "1 when /status/ready answers 200 (APISIX >= 3.13 with the status API): every "
            "worker has loaded its config at least once.",
            [target(f"watchdog_gateway_ready{{{G}}}", "{{gateway}}")],
            min_=0,
        ),
        12,
    )
    b.add(
        timeseries(
            "etcd reachable (as the gateway reports it)",
            "apisix_etcd_reachable from the gateway's Prometheus endpoint.",
            [target(f"watchdog_gateway_etcd_reachable{{{G}}}", "{{gateway}}")],
            min_=0,
        ),
        12,
    )

    b.row("etcd behind the gateways")
    b.add(
        timeseries(
            "JSON vs gRPC probe p99",
            "The etcd side of admin latency: JSON-gateway probes slow while gRPC is fast is the "
            "250-stream stall.",
            [
                target(
                    "histogram_quantile(0.99, sum by (api, le) "
                    f"(rate(watchdog_etcd_probe_duration_seconds_bucket{{{P}}}[{RI}])))",
                    "{{api}}",
                )
            ],
            unit="s",
            min_=0,
        ),
        12,
    )
    b.add(
        timeseries(
            "Watch streams per peer",
            "Watch streams open on each peer (each APISIX worker holds one on APISIX >= 3.4).",
            [target(f"watchdog_etcd_watch_streams{{{P}}}", "{{peer}}")],
            min_=0,
        ),
        12,
    )
    return dashboard(
        "watchdog-gateways",
        "watchdog / gateways",
        "APISIX gateways as seen by watchdog: admin API latency and failures, smoke probes "
        "(canary sync), config lag, readiness.",
        b,
    )


DASHBOARDS = {"watchdog-fleet.json": fleet, "watchdog-gateways.json": gateways}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
