"""End to end with a real Prometheus: the lab, watchdog, the shipped alert rules and every
dashboard expression; then a watch storm on a TLS etcd 3.5.1 peer fires the alerts."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, WatchdogProcess
from tests.fleet import series_per_target
from tests.helpers import http_get, require_tool
from tests.unit.test_dashboards import all_expressions, empty_when_healthy, substitute
from watchdog.lab.cluster import EtcdCluster, free_port
from watchdog.lab.gateway_sim import GatewaySim, SimConfig
from watchdog.lab.storm import Storm

pytestmark = pytest.mark.integration
ADMIN_KEY = "e2e-admin-key-0f3c"


def shortened_rules(target: Path, window: str | None = None) -> list[Path]:
    """Copies of alerts/*.rules.yml with every `for:` cut to 1s and, given `window`, every
    range selector (`[5m]`, `[15m]`, ...) cut to it: a test override, the shipped files stay
    as they are (promtool's unit tests in alerts/tests/ prove the real windows)."""
    target.mkdir()
    out = []
    for path in sorted((REPO / "alerts").glob("*.rules.yml")):
        data = yaml.safe_load(path.read_text())
        for group in data["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"
                if window:
                    rule["expr"] = re.sub(r"\[\d+[smh]\]", f"[{window}]", rule["expr"])
        copy = target / path.name
        copy.write_text(yaml.safe_dump(data, sort_keys=False))
        out.append(copy)
    return out


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}",
                                timeout=10)
        assert status == 200, body
        data = json.loads(body)
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def alert_states(self) -> dict[str, set[str]]:
        states: dict[str, set[str]] = {}
        for alert in self.api("alerts")["alerts"]:
            states.setdefault(alert["labels"]["alertname"], set()).add(alert["state"])
        return states


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    binary = require_tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str, alertmanager: str | None = None, window: str | None = None,
              etcd: tuple[str, str] | None = None) -> Prometheus:
        """Scrape watchdog at `target` (host:port); send alerts to `alertmanager` (host:port);
        also scrape etcd itself at `etcd` (client URL, CA file), as Prometheus usually does."""
        rules = shortened_rules(tmp_path / "rules", window)
        config = tmp_path / "prometheus.yml"
        settings: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(r) for r in rules],
            "scrape_configs": [{"job_name": "watchdog",
                                "static_configs": [{"targets": [target]}]}],
        }
        if etcd:
            url, ca_file = etcd
            settings["scrape_configs"].append({
                "job_name": "etcd", "scheme": url.split("://")[0],
                "tls_config": {"ca_file": ca_file},
                "static_configs": [{"targets": [url.split("://")[1].rstrip("/")]}]})
        if alertmanager:
            settings["alerting"] = {"alertmanagers": [
                {"api_version": "v2", "timeout": "2s",
                 "static_configs": [{"targets": [alertmanager]}]}]}
        config.write_text(yaml.safe_dump(settings))
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # closed with the process
        procs.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
             # resend firing alerts every second, not every minute, so a notification
             # lost to a restarting Alertmanager is not waited for
             "--rules.alert.resend-delay=1s"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        ))
        prom = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_get(prom.url + "/-/ready", timeout=1)[0] == 200:
                    return prom
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError((tmp_path / "prometheus.log").read_text())

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture
async def sims(etcd_tls_fresh: EtcdCluster) -> AsyncIterator[list[GatewaySim]]:
    assert etcd_tls_fresh.tls_files is not None
    made = []
    for name in ("gw-a", "gw-b"):
        sim = GatewaySim(SimConfig(
            name=name, etcd_endpoints=[etcd_tls_fresh.endpoints[0]],
            ca_file=str(etcd_tls_fresh.tls_files.ca_file), admin_key=ADMIN_KEY, workers=2,
            sync_mode="modern",
        ))
        await sim.start()
        made.append(sim)
    yield made
    for sim in made:
        await sim.stop()


@pytest.fixture
def etcd_tls_fresh(make_cluster: Callable[..., EtcdCluster]) -> EtcdCluster:
    return make_cluster(size=1, tls=True, name_prefix="e2e")


async def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


async def test_dashboards_and_alerts_in_a_real_prometheus(
    etcd_tls_fresh: EtcdCluster, sims: list[GatewaySim], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], prometheus: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    cluster = etcd_tls_fresh
    assert cluster.tls_files is not None
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY)
    key_file.chmod(0o600)
    endpoint = cluster.endpoints[0]
    proc = run_watchdog(write_config({
        "etcd": {"endpoints": [endpoint], "interval": "1s", "timeout": "800ms",
                 "tls": {"ca_file": str(cluster.tls_files.ca_file)}},
        "gateways": [{"name": s.config.name, "admin_url": s.admin_url,
                      "admin_key_file": str(key_file), "data_url": s.data_url,
                      "status_url": s.status_url, "metrics_url": s.metrics_url, "workers": 2,
                      "etcd_endpoint": endpoint} for s in sims],
        "tripwire": {"warmup": "3s", "hold": "30s"},
        "smoke": {"interval": "2s", "timeout": "5s"},
    }))
    prom = prometheus(proc.url.removeprefix("http://"),
                      etcd=(endpoint, str(cluster.tls_files.ca_file)))
    await wait_for(lambda: prom.query('watchdog_etcd_watch_streams_steady_state'), 30,
                   "steady state scraped")
    await wait_for(lambda: prom.query('watchdog_gateway_smoke_success == 1'), 30,
                   "smoke results scraped")
    await asyncio.sleep(3)  # a few more scrapes so rate() windows hold two samples

    # The series budget (docs/metrics.md) on the live page: warmed up, smoke results in, the
    # peer on this host (its socket-table series counted too); and promtool accepts the page.
    page = await asyncio.to_thread(proc.metrics)
    per_peer, per_gateway = series_per_target(page)
    print(f"\nseries per peer {dict(per_peer)}, per gateway {dict(per_gateway)}")
    assert len(per_peer) == 1 and max(per_peer.values()) <= 40, per_peer
    assert set(per_gateway) == {"gw-a", "gw-b"} and max(per_gateway.values()) <= 15, per_gateway
    lint = await asyncio.to_thread(
        subprocess.run, [require_tool("promtool"), "check", "metrics"], input=page, text=True,
        capture_output=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    empty = []
    checked = 0
    for board, where, expr in all_expressions():
        if where.startswith("annotation"):
            continue  # annotation queries only return data while something is wrong
        checked += 1
        data = await asyncio.to_thread(prom.query, substitute(expr))
        # only what a healthy lab lacks may be empty (open findings: none; the count of
        # them answers 0 through `or vector(0)` and must have data)
        if not data and not empty_when_healthy(expr):
            empty.append(f"{board} {where}: {expr}")
    assert checked > 40
    assert not empty, "panels without data:\n" + "\n".join(empty)

    rules = await asyncio.to_thread(prom.api, "rules")
    unhealthy = [r["name"] for g in rules["groups"] for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    quiet = await asyncio.to_thread(prom.alert_states)
    assert "EtcdJsonGatewayStalled" not in quiet and "EtcdWatchConnectionsTripWire" not in quiet

    storm = Storm(endpoint, ca_file=str(cluster.tls_files.ca_file))
    try:
        await storm.start(263)
        wanted = {"EtcdJsonGatewayStalled", "EtcdWatchConnectionsTripWire"}

        def alerting() -> bool:
            states = prom.alert_states()
            return all(states.get(name, set()) & {"pending", "firing"} for name in wanted)
        await wait_for(alerting, 40, f"{wanted} pending or firing")
        states = await asyncio.to_thread(prom.alert_states)
        assert "EtcdPeerProbesFailing" not in states, "gRPC stays healthy: not a peer problem"
        streams = await asyncio.to_thread(prom.query, "watchdog_etcd_watch_streams")
        assert float(streams[0]["value"][1]) == 250
    finally:
        await storm.stop()
