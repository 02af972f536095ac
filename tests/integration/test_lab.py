"""`watchdog demo`, `lab up` and `lab storm` as a person runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import http_get, sample, wait_until
from watchdog.lab.cluster import EtcdCluster, free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def start(args: list[str], tmp: Path, log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    tmp.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "watchdog", *args], stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "TMPDIR": str(tmp), **(env or {})},
        )


def processes_under(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 30) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_demo_serves_status_page_and_cleans_up(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    port = free_port()
    log = tmp_path / "demo.log"
    started = time.monotonic()
    proc = start(["demo", "--web.listen-address", f"127.0.0.1:{port}"], tmp, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.poll() is None and http_get(url + "/readyz", 2)[0] == 200,
                   timeout=60, what=f"demo ready ({log})")
        assert time.monotonic() - started < 60
        status, page = http_get(url + "/")
        assert status == 200
        for name in ("etcd-0", "etcd-1", "etcd-2", "gw-1", "gw-2"):
            assert name in page
        text = http_get(url + "/metrics")[1]
        assert sample(text, "watchdog_etcd_peer_up", peer="etcd-0") == 1.0
        assert sample(text, "watchdog_etcd_stream_limit_exposed", peer="etcd-0") == 1.0
        output = log.read_text()
        assert f"{url}/" in output and f"{url}/metrics" in output
        assert processes_under(tmp), "the lab's etcd members run under TMPDIR"
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    wait_until(lambda: not processes_under(tmp), timeout=10, what="no lab process left")
    assert list(tmp.iterdir()) == [], "the lab directory was removed"
    assert "Traceback" not in log.read_text()


def test_lab_up_writes_a_valid_config(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    log = tmp_path / "lab.log"
    proc = start(["lab", "up", "--members", "1", "--no-tls", "--gateways", "1",
                  "--sync-mode", "modern", "--fault", "gw-1=stale",
                  "--web.listen-address", f"127.0.0.1:{free_port()}"], tmp, log)
    try:
        wait_until(lambda: "watchdog config:" in log.read_text(), timeout=30, what="lab up")
        config = next(tmp.glob("watchdog-lab-*/watchdog.yml"))
        checked = subprocess.run([sys.executable, "-m", "watchdog", "check-config", str(config)],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        assert "gw-1" in checked.stdout and "expects 3 watch streams (modern sync)" in checked.stdout
        assert "faults=stale" in log.read_text()
    finally:
        assert stop(proc, signal.SIGTERM) == 0
    assert list(tmp.iterdir()) == []


def test_lab_up_without_etcd_exits_2(tmp_path: Path) -> None:
    log = tmp_path / "lab.log"
    proc = start(["lab", "up"], tmp_path / "tmp", log, env={"ETCD_BIN": "/nonexistent/etcd"})
    assert proc.wait(timeout=30) == 2
    assert "ETCD_BIN" in log.read_text() and "Traceback" not in log.read_text()


def test_storm_reports_streams_and_json_latency(etcd_single: EtcdCluster, tmp_path: Path) -> None:
    log = tmp_path / "storm.log"
    proc = start(["lab", "storm", "--endpoint", etcd_single.endpoints[0], "--watches", "20",
                  "--duration", "2"], tmp_path / "tmp", log)
    assert proc.wait(timeout=30) == 0, log.read_text()
    output = log.read_text()
    assert "JSON read" in output and "etcd watch streams" in output
    assert '"created": 20' in output and '"json_reads_failed": 0' in output
