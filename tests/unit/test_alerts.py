"""Checks of the Prometheus rules in alerts/.

- `promtool check rules` is clean and `promtool test rules alerts/tests/*.yml` passes (without
  promtool on PATH: skipped on a developer machine, a failure in CI, see require_tool);
- every alert has summary, description and a runbook_url whose anchor is a section of
  docs/runbook.md; severity and `for` are set;
- the alerts the contract requires exist;
- watchdog's rules only use metrics (and labels) documented in docs/metrics.md;
- every alert has a promtool test case where it fires and one where it stays silent.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import require_tool
from tests.promql import documented_metrics, metric_names, selector_labels

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
WATCHDOG_RULES = ALERTS / "watchdog.rules.yml"
DIRECT_RULES = ALERTS / "etcd-direct.rules.yml"
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"
METRICS_DOC = REPO / "docs" / "metrics.md"
CONTRACT = REPO.parent / "shared" / "CONTRACT.md"
RUNBOOK_URL = "https://github.com/watchdog-project/watchdog/blob/main/docs/runbook.md#"

# The contract (shared/CONTRACT.md, "Alert rules") requires at least these.
CONTRACT_ALERTS = {
    "EtcdWatchConnectionsTripWire",
    "EtcdJsonGatewayStalled",
    "EtcdWatchStreamsNearLimit",
    "EtcdPeerDown",
    "GatewayAdminSlow",
    "GatewayInitSyncFailed",
    "GatewayConfigLag",
}
SEVERITIES = {"critical", "warning", "info"}
# Labels every scraped series carries besides its own: the target labels.
TARGET_LABELS = {"job", "instance"}


# --- helpers --------------------------------------------------------------------------------


@functools.cache
def load_rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.load(path.read_text(), _Loader)["groups"] for rule in group["rules"]]


def all_alerts() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, rule) for path in RULE_FILES for rule in load_rules(path) if "alert" in rule]


@functools.cache
def runbook_anchors() -> set[str]:
    """GitHub-style anchors of the runbook's headings."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def template_queries(text: str) -> list[str]:
    """PromQL strings passed to `query` in an annotation template (printf format strings)."""
    out = []
    for m in re.finditer(r'query\s*\(\s*printf\s+"((?:\\.|[^"\\])*)"', text):
        out.append(m.group(1).replace('\\"', '"').replace("%q", '"x"'))
    return out


def test_helpers_parse_what_they_should() -> None:
    metrics = documented_metrics()
    assert metrics["watchdog_etcd_probe_duration_seconds_bucket"] == {"peer", "api", "op", "le"}
    assert "watchdog_etcd_max_fds" in metrics and "watchdog_etcd_open_fds" in metrics
    assert metrics["watchdog_job_runs_total"] == {"task", "outcome"}
    assert metric_names(
        'sum without (op) (rate(a_bucket{api="json"}[5m])) > bool 1 and on (x) b:c:d offset 1h'
    ) == {"a_bucket", "b:c:d"}
    assert selector_labels('x{peer=~"$peer",api="a=b"}') == [("x", {"peer", "api"})]
    assert template_queries('{{ with query (printf "m{peer=%q}" $labels.peer) }}') == ['m{peer="x"}']
    assert "etcdpeerdown" in runbook_anchors()


# --- promtool -------------------------------------------------------------------------------


def test_rule_files_present() -> None:
    assert WATCHDOG_RULES in RULE_FILES and DIRECT_RULES in RULE_FILES
    assert TEST_FILES, "no promtool unit tests in alerts/tests/"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_files_are_plain_yaml(path: Path) -> None:
    text = path.read_text()
    assert "\t" not in text
    rules = load_rules(path)
    assert rules
    # Prometheus 2.x before 2.42 rejects keep_firing_for; these files must load everywhere.
    assert not [r for r in rules if "keep_firing_for" in r]


@pytest.mark.needs_promtool
def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    proc = subprocess.run(
        [promtool, "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert out.count("SUCCESS") == len(RULE_FILES), out
    assert "FAILED" not in out and "WARNING" not in out, out


@pytest.mark.needs_promtool
def test_promtool_test_rules() -> None:
    promtool = require_tool("promtool")
    # one promtool per file, in parallel: the wall time is that of the slowest file
    procs = [
        (path, subprocess.Popen(
            [promtool, "test", "rules", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
        for path in TEST_FILES
    ]  # fmt: skip
    failed = []
    for path, proc in procs:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failed.append(f"{path.name}:\n{out}")
    assert not failed, "\n".join(failed)


# --- annotations, labels, runbook -----------------------------------------------------------


@pytest.mark.parametrize(("file", "rule"), all_alerts(), ids=[f"{f}:{r['alert']}" for f, r in all_alerts()])
def test_alert_is_documented_and_labelled(file: str, rule: dict[str, Any]) -> None:
    name = rule["alert"]
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name}: missing {key}"
    assert "{{" in annotations["description"], f"{name}: the description shows no numbers"
    url = annotations["runbook_url"]
    assert url == RUNBOOK_URL + name.lower(), f"{name}: runbook_url {url}"
    assert name.lower() in runbook_anchors(), f"{name}: no '## {name}' in docs/runbook.md"
    assert rule.get("labels", {}).get("severity") in SEVERITIES, name
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for`"


def test_contract_alerts_exist() -> None:
    names = {rule["alert"] for _, rule in all_alerts()}
    assert CONTRACT_ALERTS <= names, CONTRACT_ALERTS - names
    if CONTRACT.exists():  # a checkout beside ../shared: read the list from the contract too
        section = CONTRACT.read_text().split("## Alert rules", 1)[1].split("\n## ", 1)[0]
        required = set(re.findall(r"`([A-Z][A-Za-z]+)`", section))
        assert required <= names, required - names


def test_critical_alerts_are_few() -> None:
    """critical pages someone at 3 a.m.: only cluster- or fleet-wide outages qualify."""
    critical = {r["alert"] for _, r in all_alerts() if r["labels"]["severity"] == "critical"}
    assert critical == {
        "EtcdJsonGatewayStalledAllPeers",
        "EtcdInsufficientMembers",
        "EtcdNoLeader",
        "EtcdDatabaseQuotaLowSpace",
        "EtcdAlarmActive",  # etcd raises alarms cluster-wide: NOSPACE refuses every write
        "GatewayFleetSyncFailed",
    }
    peer_down = [r for _, r in all_alerts() if r["alert"] == "EtcdPeerDown"]
    assert [r["labels"]["severity"] for r in peer_down] == ["warning"]


def test_runbook_covers_exactly_the_alerts() -> None:
    names = {rule["alert"] for _, rule in all_alerts()}
    sections = set(re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), re.M)) - {"Toolbox"}
    assert names == sections, {"no section": names - sections, "no alert": sections - names}


def test_runbook_table_matches_the_rules() -> None:
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| \[(\w+)\]\(#\w+\) \|(.*)\|\s*$", RUNBOOK.read_text(), re.M)
    }
    for _, rule in all_alerts():
        row = rows.get(rule["alert"], "")
        assert rule["labels"]["severity"] in row, f"{rule['alert']}: severity in the table"
        assert re.search(rf"\b{rule['for']}\b", row), f"{rule['alert']}: `for` in the table"


def test_runbook_internal_links_resolve() -> None:
    anchors = runbook_anchors()
    links = set(re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()))
    assert links <= anchors, links - anchors


# --- metric and label names -----------------------------------------------------------------


def _watchdog_rule_texts() -> list[tuple[str, str]]:
    """(rule name, PromQL) for every expression and template query of watchdog.rules.yml."""
    out = []
    for rule in load_rules(WATCHDOG_RULES):
        name = rule.get("alert") or rule["record"]
        out.append((name, rule["expr"]))
        for text in rule.get("annotations", {}).values():
            out.extend((name, q) for q in template_queries(str(text)))
    return out


def test_watchdog_rules_use_documented_metrics() -> None:
    documented = documented_metrics()
    recorded = {r["record"] for r in load_rules(WATCHDOG_RULES) if "record" in r}
    allowed = set(documented) | recorded | {"up"}
    used = {m for _, expr in _watchdog_rule_texts() for m in metric_names(expr)}
    assert used - allowed == set(), f"not in docs/metrics.md: {sorted(used - allowed)}"
    # and the names really are watchdog's (a typo would otherwise pass as "recorded")
    assert all(":" in r and "watchdog_" in r for r in recorded)
    assert {m for m in used if m.startswith("watchdog_")} <= set(documented)


def test_watchdog_rules_use_documented_labels() -> None:
    documented = documented_metrics()
    problems = []
    for name, expr in _watchdog_rule_texts():
        for metric, labels in selector_labels(expr):
            if metric in documented:
                extra = labels - documented[metric] - TARGET_LABELS
                if extra:
                    problems.append(f"{name}: {metric} has no label {sorted(extra)}")
    assert not problems, problems


def test_direct_rules_use_only_etcd_metrics() -> None:
    used = {m for r in load_rules(DIRECT_RULES) for m in metric_names(r["expr"])}
    recorded = {r["record"] for r in load_rules(DIRECT_RULES) if "record" in r}
    assert used - recorded == {
        "etcd_debugging_mvcc_watch_stream_total",
        "etcd_debugging_mvcc_slow_watcher_total",
        "etcd_server_version",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_disk_backend_commit_duration_seconds_bucket",
    }


# --- unit-test coverage ---------------------------------------------------------------------


@functools.cache
def _alert_tests() -> tuple[set[str], set[str]]:
    """Alert names with a test case where they fire, and with one where they stay silent."""
    fires, silent = set(), set()
    for path in TEST_FILES:
        for case in yaml.load(path.read_text(), _Loader)["tests"]:
            for t in case.get("alert_rule_test", []):
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    return fires, silent


def test_every_alert_fires_in_a_unit_test() -> None:
    names = {rule["alert"] for _, rule in all_alerts()}
    fires, _ = _alert_tests()
    assert names - fires == set(), f"never shown to fire: {sorted(names - fires)}"


def test_every_alert_stays_silent_in_a_unit_test() -> None:
    names = {rule["alert"] for _, rule in all_alerts()}
    _, silent = _alert_tests()
    assert names - silent == set(), f"never shown to stay silent: {sorted(names - silent)}"


def test_unit_tests_only_name_existing_alerts() -> None:
    names = {rule["alert"] for _, rule in all_alerts()}
    fires, silent = _alert_tests()
    assert (fires | silent) <= names, (fires | silent) - names


def test_unit_tests_check_annotations() -> None:
    """Every expected alert spells out its annotations: promtool compares them exactly."""
    for path in TEST_FILES:
        for case in yaml.load(path.read_text(), _Loader)["tests"]:
            for t in case.get("alert_rule_test", []):
                for exp in t.get("exp_alerts") or []:
                    assert set(exp.get("exp_annotations", {})) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }, f"{path.name}: {t['alertname']} at {t['eval_time']}"


# --- the example Alertmanager config (deploy/alertmanager/) ---------------------------------

ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def _alertmanager_config() -> dict[str, Any]:
    return yaml.load(ALERTMANAGER_CONFIG.read_text(), _Loader)  # type: ignore[no-any-return]


def _matcher_names(matchers: list[str]) -> set[str]:
    """Alert names an `alertname="X"` or `alertname=~"A|B"` matcher list selects."""
    names: set[str] = set()
    for m in matchers:
        found = re.fullmatch(r'alertname=~?"([\w|]+)"', m.strip())
        if found:
            names |= set(found.group(1).split("|"))
    return names


def test_alertmanager_config_passes_amtool() -> None:
    amtool = require_tool("amtool")
    proc = subprocess.run([amtool, "check-config", str(ALERTMANAGER_CONFIG)],
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "SUCCESS" in out, out


def test_alertmanager_config_matches_the_rules() -> None:
    """Grouped per peer and gateway; every alert name an inhibit rule names exists; a peer
    that is down silences that same peer's probe alerts."""
    config = _alertmanager_config()
    assert {"peer", "gateway"} <= set(config["route"]["group_by"])
    names = {rule["alert"] for _, rule in all_alerts()}
    rules = config["inhibit_rules"]
    for rule in rules:
        for key in ("source_matchers", "target_matchers"):
            assert _matcher_names(rule[key]) <= names, _matcher_names(rule[key]) - names
    peer_down = [r for r in rules if _matcher_names(r["source_matchers"]) == {"EtcdPeerDown"}]
    assert len(peer_down) == 1
    assert {"EtcdPeerProbesFailing", "EtcdJsonGatewayStalled"} <= _matcher_names(
        peer_down[0]["target_matchers"])
    assert "peer" in peer_down[0]["equal"], "a down peer must silence only its own alerts"
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"].startswith("http://alert-receiver.example:"), "placeholders only"
