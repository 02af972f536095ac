"""Checks of the Grafana dashboards in dashboards/.

The dashboards are built with Grafana's SDK (grafana-foundation-sdk) by dashboards/generate.py;
the committed JSON must be exactly what it generates.

Substitution rule for evaluating panel expressions outside Grafana (this test's promtool
parse check, and the end-to-end test that runs every expression against a real Prometheus):

    $__rate_interval -> 1m    $instance -> .*    $peer -> .*    $gateway -> .*

Expressions select watchdog instances, peers and gateways only as `instance=~"$instance"`,
`peer=~"$peer"` / `gateway=~"$gateway"` (the substituted `.*` is a regex, so `=~` is
required) and use no other Grafana variable; this test enforces both. `substitute()` and
`SUBSTITUTIONS` below are the rule in code.

Some series legitimately do not exist on a healthy system, so a panel target that reads only
them can come back empty: see `MAY_BE_EMPTY` and `target_may_be_empty()`. The end-to-end test
runs on a healthy lab and lets only `EMPTY_WHEN_HEALTHY` targets come back empty.

Grafana's dashboard best practices, checked here: a datasource variable, instance and peer
variables chained to it, a unit on every panel, a description on every panel that says what
to do and links the runbook section (an existing anchor of docs/runbook.md).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import require_tool
from tests.promql import _STRING, documented_metrics, metric_names, selector_labels

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
DASHBOARD_FILES = ("watchdog-fleet.json", "watchdog-gateways.json")
METRICS_DOC = REPO / "docs" / "metrics.md"

SUBSTITUTIONS = {"$__rate_interval": "1m", "$instance": ".*", "$peer": ".*", "$gateway": ".*"}
VARIABLE_FORMS = {
    "$instance": 'instance=~"$instance"',
    "$peer": 'peer=~"$peer"',
    "$gateway": 'gateway=~"$gateway"',
}
RUNBOOK_URL = "https://github.com/watchdog-project/watchdog/blob/main/docs/runbook.md#"
# In the contract (shared CONTRACT.md, "Metrics") and read by the findings panels, but added to
# watchdog and docs/metrics.md by separate work: accepted here until docs/metrics.md lists it.
PENDING_METRICS = {"watchdog_finding": frozenset({"finding", "subject", "severity"})}

# Series that are absent on a healthy system, by design (docs/metrics.md):
MAY_BE_EMPTY = {
    "watchdog_etcd_watch_streams_steady_state",  # until warm-up ends
    "watchdog_etcd_client_connections_steady_state",  # until warm-up ends
    "watchdog_etcd_stream_limit_headroom",  # only on exposed peers
    "watchdog_etcd_client_connections_by_remote",  # agent not beside the peer
    "watchdog_etcd_probe_failures_total",  # no failure yet
    "watchdog_gateway_admin_failures_total",  # no failure yet
    "watchdog_gateway_smoke_failures_total",  # no failure yet
    "watchdog_gateway_ready",  # no status_url configured
    "watchdog_gateway_etcd_reachable",  # no metrics_url configured
    "watchdog_finding",  # no open finding
    "watchdog_etcd_wal_fsync_duration_seconds",  # only with etcd.mirror_histograms: true
    "watchdog_etcd_backend_commit_duration_seconds",  # only with etcd.mirror_histograms: true
}
# Of those, the ones that stay absent on the healthy lab of the end-to-end test.
# (The mirrored etcd histograms are off by default; smoke failures appear on the first one.)
EMPTY_WHEN_HEALTHY = {"watchdog_finding", "watchdog_etcd_wal_fsync_duration_seconds_bucket",
                      "watchdog_etcd_backend_commit_duration_seconds_bucket",
                      "watchdog_gateway_smoke_failures_total"}
# Annotation queries only return data while something is wrong.
TARGET_LABELS = {"job", "instance"}


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    return expr


def target_may_be_empty(expr: str) -> bool:
    """True if an expression reads a series from MAY_BE_EMPTY (and may return nothing)."""
    return bool(metric_names(expr) & {m + s for m in MAY_BE_EMPTY for s in ("", "_bucket")})


def empty_when_healthy(expr: str) -> bool:
    """True if an expression reads only series that a healthy system does not have."""
    return metric_names(expr) <= EMPTY_WHEN_HEALTHY


def known_metrics() -> dict[str, frozenset[str]]:
    """docs/metrics.md plus the contract metrics not documented there yet."""
    return {**PENDING_METRICS, **documented_metrics()}


# --- helpers ---------------------------------------------------------------------------------


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _STRING.sub('""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


@functools.cache
def load(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / name).read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def expressions(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target and annotation query of a dashboard."""
    out = []
    for p in panels(board):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p['title']!r} {t.get('refId')}", t.get("expr", "")))
    for a in board["annotations"]["list"]:
        if "expr" in a:
            out.append((f"annotation {a['name']!r}", a["expr"]))
    return out


def all_expressions() -> list[tuple[str, str, str]]:
    return [(name, where, expr) for name in DASHBOARD_FILES for where, expr in expressions(load(name))]


def _generator():
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- tests ----------------------------------------------------------------------------------


def test_helpers() -> None:
    expr = 'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x=~"$peer"}[$__rate_interval])))'
    assert metric_names(expr) == {"a_bucket"}
    assert metric_names("time() - max by (g) (b > 0)") == {"b"}
    assert balanced('sum(rate(x{a="(("}[1m]))') and not balanced("sum(rate(x[1m])")
    assert substitute('rate(x{peer=~"$peer"}[$__rate_interval])') == 'rate(x{peer=~".*"}[1m])'
    assert target_may_be_empty("watchdog_etcd_stream_limit_headroom")
    assert not target_may_be_empty("watchdog_etcd_watch_streams")
    assert empty_when_healthy("max by (severity) (watchdog_finding)")
    assert not empty_when_healthy("count(watchdog_finding) or watchdog_etcd_peer_up")


def test_generated_json_is_up_to_date() -> None:
    """The committed JSON is byte for byte what the SDK-based generator writes."""
    gen = _generator()
    assert set(gen.DASHBOARDS) == set(DASHBOARD_FILES)
    for name, build in gen.DASHBOARDS.items():
        assert (DASHBOARDS / name).read_text() == gen.render(build), (
            f"{name} is out of date: run python dashboards/generate.py"
        )


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_structure(name: str) -> None:
    board = load(name)
    assert board["uid"] and board["title"]
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "instance", "peer", "gateway"]
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for var, chained in (("instance", ""), ("peer", 'instance=~"$instance"'),
                         ("gateway", 'instance=~"$instance"')):
        v = variables[var]
        assert v["type"] == "query"
        assert v["datasource"]["uid"] == "${datasource}"
        m = re.fullmatch(r"label_values\((\w+)(?:\{(.*)\})?,\s*(\w+)\)", v["query"])
        assert m, v["query"]
        assert m.group(1) in documented_metrics() and m.group(3) == var
        assert var in documented_metrics()[m.group(1)] or var in TARGET_LABELS
        assert (m.group(2) or "") == chained, f"{var} is not chained to the instance"
        assert v["includeAll"] and v["allValue"] == ".*"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert all(isinstance(i, int) and i > 0 for i in ids)


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panels(name: str) -> None:
    for p in panels(load(name)):
        where = f"{name} panel {p.get('id')} {p.get('title')!r}"
        assert p.get("title"), where
        grid = p.get("gridPos", {})
        assert {"x", "y", "w", "h"} <= set(grid), where
        assert 0 <= grid["x"] and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, where
        if p["type"] == "row":  # rows group panels; they have no query
            assert not p.get("targets"), where
            continue
        assert p["datasource"]["uid"] == "${datasource}", where
        targets = p.get("targets") or []
        assert targets, f"{where}: no targets"
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{where}: refIds {refs}"
        for t in targets:
            assert t.get("expr", "").strip(), where
            assert t["datasource"]["uid"] == "${datasource}", where


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panels_do_not_overlap(name: str) -> None:
    cells: dict[tuple[int, int], int] = {}
    for p in load(name)["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['id']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_variable_is_used(name: str) -> None:
    text = " ".join(expr for _, expr in expressions(load(name)))
    assert 'peer=~"$peer"' in text and 'gateway=~"$gateway"' in text
    # every expression follows the instance (cluster) variable
    for where, expr in expressions(load(name)):
        assert 'instance=~"$instance"' in expr, f"{where}: {expr}"


@functools.cache
def runbook_anchors() -> set[str]:
    """GitHub-style anchors of docs/runbook.md's headings."""
    anchors = set()
    for line in (REPO / "docs" / "runbook.md").read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_panel_has_a_unit_and_says_what_to_do(name: str) -> None:
    for p in panels(load(name)):
        if p["type"] == "row":
            continue
        where = f"{name} panel {p['id']} {p['title']!r}"
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        description = p.get("description", "")
        assert "What to do" in description, f"{where}: the description says nothing to do"
        links = re.findall(r"\]\(([^)]+)\)", description)
        assert links, f"{where}: no runbook link"
        for link in links:
            assert link.startswith(RUNBOOK_URL), f"{where}: {link}"
            anchor = link.removeprefix(RUNBOOK_URL)
            assert anchor in runbook_anchors(), f"{where}: docs/runbook.md has no #{anchor}"


def _targets_of(name: str, title: str) -> list[str]:
    found = [p for p in panels(load(name)) if p["title"] == title]
    assert len(found) == 1, f"{name}: {len(found)} panels titled {title!r}"
    return [t["expr"] for t in found[0]["targets"]]


def test_findings_and_headroom_panels() -> None:
    """The findings count has data even with no finding open; headroom against the limit."""
    [count] = _targets_of("watchdog-fleet.json", "Open findings")
    assert "watchdog_finding" in count and count.endswith("or vector(0)")
    assert "by (severity)" in count
    [headroom] = _targets_of("watchdog-fleet.json", "Stream headroom against the 250 limit")
    assert metric_names(headroom) == {"watchdog_etcd_stream_limit_headroom"}


@pytest.mark.parametrize(
    ("name", "where", "expr"), all_expressions(), ids=[f"{n}:{w}" for n, w, _ in all_expressions()]
)
def test_expression(name: str, where: str, expr: str) -> None:
    assert balanced(expr), "unbalanced brackets"
    # only the variables the substitution rule knows, and only in their =~ form
    variables = set(re.findall(r"\$\{?[A-Za-z_]\w*\}?", expr))  # not label_replace's $1
    assert variables <= set(SUBSTITUTIONS), variables - set(SUBSTITUTIONS)
    for var, form in VARIABLE_FORMS.items():
        assert expr.count(var) == expr.count(form), f"use {form}"
    assert "[$__rate_interval]" in expr or "$__rate_interval" not in expr
    # metric and label names from docs/metrics.md
    documented = known_metrics()
    names = metric_names(expr)
    assert names, "selects no metric"
    assert names <= set(documented), f"not in docs/metrics.md: {sorted(names - set(documented))}"
    for metric, labels in selector_labels(expr):
        extra = labels - documented[metric] - TARGET_LABELS
        assert not extra, f"{metric} has no label {sorted(extra)}"


@pytest.mark.needs_promtool
def test_expressions_parse_with_promtool(tmp_path: Path) -> None:
    """promtool 2.42 has no query-parse command: wrap every expression in a recording rule and
    let `promtool check rules` run Prometheus's own parser over it."""
    promtool = require_tool("promtool")
    found = all_expressions()
    rules = [{"record": f"dashboard:expr_{i}", "expr": substitute(e)} for i, (_, _, e) in enumerate(found)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    for i, (name, where, _) in enumerate(found):  # name the panel behind a failing rule
        out = out.replace(f'dashboard:expr_{i}"', f'dashboard:expr_{i}" ({name} {where})')
    assert proc.returncode == 0, out
    assert f"SUCCESS: {len(rules)} rules found" in out, out
