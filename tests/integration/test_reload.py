"""Config reload on a real daemon: SIGHUP and POST /-/reload, a bad config kept out (and
seen by a real Prometheus), learned state kept; with the flags of the process edge (two
listen addresses, a telemetry path, JSON logs, --config.file)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import http_get, require_tool, sample, wait_until
from tests.integration.test_prometheus_e2e import Prometheus
from watchdog.lab.cluster import EtcdCluster, free_port

pytestmark = pytest.mark.integration
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def post(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str, str], Prometheus]]:
    """A real Prometheus scraping one target at a path, every second."""
    binary = require_tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str, path: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "watchdog", "metrics_path": path,
                                "static_configs": [{"targets": [target]}]}]}))
        port = free_port()
        with open(tmp_path / "prometheus.log", "wb") as out:
            procs.append(subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        prom = Prometheus(f"http://127.0.0.1:{port}")

        def up() -> bool:
            assert procs[-1].poll() is None, (tmp_path / "prometheus.log").read_text()
            return bool(prom.query('up{job="watchdog"} == 1'))

        wait_until(up, timeout=30, what="Prometheus scraping watchdog")
        return prom

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.fault(
    "a bad config reloaded by SIGHUP and by `POST /-/reload`",
    reports="the process lives on with the running config; `watchdog_config_last_reload_successful` "
            "0; the endpoint answers 500 naming `etcd.interval`; an error log line; a later good "
            "reload keeps the learned state",
    within="at once")
def test_reload_by_sighup_and_endpoint(etcd_single: EtcdCluster, tmp_path: Path,
                                       prometheus: Callable[[str, str], Prometheus]) -> None:
    config_file = tmp_path / "watchdog.yml"
    base: dict[str, Any] = {
        "etcd": {"endpoints": etcd_single.endpoints, "discover_members": False,
                 "interval": "500ms", "timeout": "400ms"},
        "tripwire": {"warmup": "1s", "min_streams": 0},
        "state_dir": str(tmp_path / "state")}
    config_file.write_text(yaml.safe_dump(base))
    port, other = free_port(), free_port("127.0.0.2")
    log = tmp_path / "watchdog.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "run", "--config.file", str(config_file),
             "--web.listen-address", f"127.0.0.1:{port}",
             "--web.listen-address", f"127.0.0.2:{other}",
             "--web.telemetry-path", "/scrape", "--log.format", "json"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        def metric(name: str, **labels: str) -> float | None:
            status, body = http_get(url + "/scrape")
            assert status == 200, body
            return sample(body, name, **labels)

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return http_get(url + "/-/ready", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=20, what="/-/ready")
        # Every address serves; the metrics are at the telemetry path only.
        assert http_get(f"http://127.0.0.2:{other}/-/healthy")[0] == 200
        assert http_get(url + "/metrics")[0] == 404
        peer = "single-0"
        wait_until(lambda: metric("watchdog_etcd_watch_streams_steady_state", peer=peer)
                   is not None, timeout=15, what="steady state learned")
        assert metric("watchdog_config_last_reload_successful") == 1
        first_ok = metric("watchdog_config_last_reload_success_timestamp_seconds")
        prom = prometheus(f"127.0.0.1:{port}", "/scrape")

        # A bad config on SIGHUP: the process lives on, the running config stays.
        config_file.write_text(yaml.safe_dump({**base, "etcd": {**base["etcd"],
                                                                "interval": "oops"}}))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: metric("watchdog_config_last_reload_successful") == 0,
                   timeout=10, what="failed reload exported")
        assert proc.poll() is None
        assert http_get(url + "/readyz")[0] == 200

        # The same bad file through the endpoint: 500 naming the key.
        status, text = post(url + "/-/reload")
        assert status == 500 and "etcd.interval" in text, text
        wait_until(lambda: prom.query("watchdog_config_last_reload_successful == 0"),
                   timeout=10, what="Prometheus saw the failed reload")

        # A good config (one gateway more, a warm-up that would take an hour to redo):
        # applied, and what was learned is kept.
        config_file.write_text(yaml.safe_dump({
            **base, "tripwire": {"warmup": "1h", "min_streams": 0},
            "smoke": {"interval": 0},
            "gateways": [{"name": "gw-new", "admin_url": f"http://127.0.0.1:{free_port()}"}]}))
        status, text = post(url + "/-/reload")
        assert status == 200, text
        assert metric("watchdog_config_last_reload_successful") == 1
        assert metric("watchdog_config_last_reload_success_timestamp_seconds") > first_ok  # type: ignore[operator]
        runs = metric("watchdog_job_runs_total", task="etcd", outcome="success") or 0
        wait_until(lambda: (metric("watchdog_job_runs_total", task="etcd", outcome="success")
                            or 0) >= runs + 2, timeout=10, what="polls under the new config")
        # With a one-hour warm-up, only the state flushed and re-read can explain this.
        assert metric("watchdog_etcd_watch_streams_steady_state", peer=peer) is not None
        wait_until(lambda: metric("watchdog_gateway_admin_success", gateway="gw-new")
                   is not None, timeout=10, what="the new gateway probed")
        proc.send_signal(signal.SIGHUP)  # a good reload by signal too
        wait_until(lambda: log.read_text().count('"msg": "config reloaded"') >= 2,
                   timeout=10, what="the reload by SIGHUP")
        assert proc.poll() is None
        wait_until(lambda: prom.query("watchdog_config_last_reload_successful == 1"),
                   timeout=10, what="Prometheus saw the good reload")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(TS.match(line["ts"]) for line in lines)
    start = next(line for line in lines if line["msg"] == "starting watchdog")
    assert start["config"] == str(config_file) and start["endpoints"] == "1"
    assert start["listen"] == f"127.0.0.1:{port},127.0.0.2:{other}"
    assert start["gateways"] == "0" and start["version"]
    failed = next(line for line in lines if line["msg"].startswith("config reload failed"))
    assert failed["level"] == "error" and "etcd.interval" in failed["msg"]
    assert not any("Traceback" in line.get("exc", "") for line in lines)
