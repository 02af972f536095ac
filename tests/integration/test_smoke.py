"""`watchdog smoke`, the init-sync gate, as a deploy pipeline runs it: the real process
against simulated APISIX gateways on real etcd."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

from tests.helpers import libfaketime, serve_on_loopback, wait_until
from watchdog.lab.cluster import EtcdCluster, b64, free_port
from watchdog.lab.gateway_sim import GatewaySim, SimConfig

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CANARY_KEYS = "/apisix/routes/watchdog-canary-"
T = TypeVar("T")


# -- simulated gateways on their own event loop -----------------------------------


class SimHost:
    """Simulated gateways on an event loop in a background thread, so that blocking test
    code (subprocess waits, urllib, the run_watchdog fixture) never stalls them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sims", daemon=True)
        self.thread.start()
        self.sims: list[GatewaySim] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, cluster: EtcdCluster, name: str, admin_key: str, **kwargs: Any) -> GatewaySim:
        config = SimConfig(name=name, etcd_endpoints=cluster.endpoints, admin_key=admin_key,
                           workers=kwargs.pop("workers", 2), **kwargs)
        sim = GatewaySim(config)
        self.call(sim.start())
        self.sims.append(sim)
        return sim

    def set_faults(self, sim: GatewaySim, faults: set[str], admin_delay: float | None = None) -> None:
        async def switch() -> None:
            sim.set_faults(faults, admin_delay)

        self.call(switch())

    def close(self) -> None:
        for sim in self.sims:
            self.call(sim.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def sims() -> Iterator[SimHost]:
    host = SimHost()
    try:
        yield host
    finally:
        host.close()


def key_file(tmp_path: Path, key: str, name: str = "admin.key") -> Path:
    path = tmp_path / name
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def gateway_entry(sim: GatewaySim, admin_key_file: Path, **overrides: Any) -> dict[str, Any]:
    """The config entry for a simulated gateway (every URL, as `lab up` writes them)."""
    entry = {
        "name": sim.config.name, "admin_url": sim.admin_url, "admin_key_file": str(admin_key_file),
        "data_url": sim.data_url, "status_url": sim.status_url, "metrics_url": sim.metrics_url,
    }
    entry.update(overrides)
    return {k: v for k, v in entry.items() if v is not None}


def smoke_config(cluster: EtcdCluster, gateways: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"etcd": {"endpoints": cluster.endpoints, "interval": "1s", "timeout": "500ms"},
            "gateways": gateways, **extra}


def smoke_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "watchdog", "smoke", "--config", str(config), *args]


def run_smoke(config: Path, *args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess[str],
                                                                      float, float]:
    """Run `watchdog smoke`; returns the process, its launch and its exit (Unix time)."""
    launched = time.time()
    done = subprocess.run(smoke_cmd(config, *args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO)
    return done, launched, time.time()



def canaries(cluster: EtcdCluster) -> list[tuple[str, str]]:
    return cluster.get(CANARY_KEYS, prefix=True)


def etcd_revision(cluster: EtcdCluster) -> int:
    answer = cluster.request("/v3/kv/range", {"key": b64("/watchdog-test/none")})
    return int(answer["header"]["revision"])  # type: ignore[index]


def admin_put_route(sim: GatewaySim, key: str, route_id: str, uri: str) -> int:
    body = json.dumps({"uri": uri, "plugins": {"redirect": {"uri": "/elsewhere"}}}).encode()
    req = urllib.request.Request(f"{sim.admin_url}/apisix/admin/routes/{route_id}", data=body,
                                 method="PUT", headers={"X-API-KEY": key})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def delete_keys(cluster: EtcdCluster, prefix: str) -> None:
    cluster.request("/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(prefix + "\xff")})


def report_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report: {done.stdout!r} {done.stderr!r}") from None


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["gateway"]: g for g in report["gateways"]}


# -- the gate passes ---------------------------------------------------------------


def test_healthy_gateways_exit_0_right_after_the_canary_is_served(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "healthy-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    gws = [sims.start(etcd_single, f"ok-{i}", key) for i in range(2)]
    config = write_config(smoke_config(etcd_single, [gateway_entry(g, keys) for g in gws]))

    done, launched, exited = run_smoke(config, "--output", "json", "--timeout", "10")

    assert done.returncode == 0, done.stdout + done.stderr
    report = report_of(done)
    assert report["ok"] is True and report["interrupted"] is False
    for gw in report["gateways"]:
        assert gw["ok"] is True and gw["phase"] == "done", gw
        assert 0 < gw["sync_seconds"] < 1.0, gw
        assert gw["canary_route"].startswith("watchdog-canary-") and gw["canary_deleted"] is True
    # Exit latency: Unix time the last canary was first served (in the report) until this
    # process saw the gate exit; covers the delete, the report and interpreter shutdown.
    served = max(gw["served_at"] for gw in report["gateways"])
    after_serve = exited - served
    wall = exited - launched
    print(f"\nhealthy: sync_seconds={[round(g['sync_seconds'], 4) for g in report['gateways']]} "
          f"report elapsed={report['elapsed']:.3f}s wall={wall:.3f}s "
          f"startup+shutdown={wall - report['elapsed']:.3f}s exit {after_serve:.3f}s after serve")
    assert 0 <= after_serve <= 1.0, after_serve
    assert canaries(etcd_single) == []
    assert key not in done.stdout + done.stderr


# -- the gate fails, each with its reason -------------------------------------------


@pytest.mark.fault(
    "gateway stuck in its initial sync, with a status API",
    reports="FAIL `status ready`/`http`: `/status/ready still answers HTTP 503`; no canary written",
    within="the 3 s deadline (2.5-3.5 s, asserted)")
@pytest.mark.fault(
    "gateway stuck in its initial sync, without a status API",
    reports="FAIL `propagate`/`timeout`: `data plane still answers 404 Route Not Found`; canary "
            "deleted",
    within="the 3 s deadline (asserted)")
@pytest.mark.fault(
    "gateway that accepts admin writes and never applies them",
    reports="FAIL `propagate`/`timeout`, naming `applying etcd changes`; canary deleted",
    within="the 3 s deadline (asserted)")
@pytest.mark.fault(
    "an etcd-adapter shim that drops writes",
    reports="FAIL `propagate`/`timeout`: `admin API lists no routes`, `etcd-adapter shim`; canary "
            "deleted",
    within="the 3 s deadline (asserted)")
def test_broken_gateways_fail_by_the_deadline_with_a_reason_each(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "broken-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    ok = sims.start(etcd_single, "ok", key)
    hang = sims.start(etcd_single, "init-hang", key, faults={"init-hang"})
    hang_blind = sims.start(etcd_single, "init-hang-nostatus", key, faults={"init-hang"})
    stale = sims.start(etcd_single, "stale", key, faults={"stale"})
    shim = sims.start(etcd_single, "shim", key, faults={"shim"})
    entries = [gateway_entry(ok, keys), gateway_entry(hang, keys),
               gateway_entry(hang_blind, keys, status_url=None), gateway_entry(stale, keys),
               gateway_entry(shim, keys)]
    config = write_config(smoke_config(etcd_single, entries))

    # What the interpreter and imports cost under this machine's load right now: the bound
    # below is on the gates, not on Python's start-up.
    started = time.time()
    subprocess.run([sys.executable, "-m", "watchdog", "smoke", "--help"], capture_output=True,
                   timeout=30, stdin=subprocess.DEVNULL, cwd=REPO, check=True)
    startup = time.time() - started
    done, launched, exited = run_smoke(config, "--output", "json", "--timeout", "3")

    assert done.returncode == 1, done.stdout + done.stderr
    report = report_of(done)
    gws = by_name(report)
    assert report["ok"] is False and report["interrupted"] is False
    assert gws["ok"]["ok"] is True
    # Verdicts by the deadline: the gates end at 3 s, then deletes and shutdown.
    assert exited - launched < 3.0 + 2.0 + startup, (exited - launched, startup)
    for name in ("init-hang", "init-hang-nostatus", "stale", "shim"):
        assert gws[name]["ok"] is False and 2.5 < gws[name]["elapsed"] < 3.5, gws[name]

    hung = gws["init-hang"]  # with status_url: stops at /status/ready, writes nothing
    assert (hung["phase"], hung["reason"]) == ("status ready", "http")
    assert "/status/ready still answers HTTP 503" in hung["message"]
    assert "has not received configuration" in hung["message"]
    assert hung["canary_route"] is None

    blind = gws["init-hang-nostatus"]  # no status_url: the canary is written, never served
    assert (blind["phase"], blind["reason"]) == ("propagate", "timeout")
    assert "data plane still answers 404 Route Not Found after" in blind["message"]
    assert "not applying etcd changes" in blind["message"]

    stuck = gws["stale"]
    assert (stuck["phase"], stuck["reason"]) == ("propagate", "timeout")
    assert stuck["message"].startswith("canary written, data plane still answers 404 Route Not "
                                       "Found after")
    assert "applying etcd changes" in stuck["message"]

    shimmed = gws["shim"]
    assert (shimmed["phase"], shimmed["reason"]) == ("propagate", "timeout")
    assert "admin API lists no routes" in shimmed["message"]
    assert "etcd-adapter shim" in shimmed["message"]

    for name in ("init-hang-nostatus", "stale", "shim"):
        assert gws[name]["canary_deleted"] is True, gws[name]
    assert canaries(etcd_single) == []
    print("\n" + "\n".join(f"{n}: {g['message']}" for n, g in gws.items()))


@pytest.mark.fault(
    "wrong admin key to the gate",
    reports="FAIL `[write/auth]`: `admin API rejected the admin key (HTTP 401 ...)`; nothing to "
            "delete; key not shown",
    within="the 2 s deadline")
@pytest.mark.fault(
    "admin API unreachable",
    reports="FAIL `[write/refused]`: `unreachable: connection refused`",
    within="the 2 s deadline")
@pytest.mark.fault(
    "data plane unreachable",
    reports="FAIL `[data plane/refused]`: `not answering after ...`",
    within="the 2 s deadline")
@pytest.mark.fault(
    "status API unreachable",
    reports="FAIL `[status ready/refused]`: `not answering after ...`",
    within="the 2 s deadline")
def test_wrong_key_and_unreachable_text_report_without_ansi(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "texty-" + secrets.token_hex(8)
    wrong = "wrong-" + secrets.token_hex(8)
    keys, wrong_keys = key_file(tmp_path, key), key_file(tmp_path, wrong, "wrong.key")
    ok = sims.start(etcd_single, "ok", key)
    other = sims.start(etcd_single, "other", key)
    closed = f"http://127.0.0.1:{free_port()}"
    entries = [
        gateway_entry(ok, keys),
        gateway_entry(other, wrong_keys, name="bad-key"),
        gateway_entry(other, keys, name="no-admin", admin_url=closed),
        gateway_entry(other, keys, name="no-status", status_url=closed),
        {"name": "down", "admin_url": closed, "admin_key_file": str(keys), "data_url": closed},
    ]
    config = write_config(smoke_config(etcd_single, entries))

    done, _, _ = run_smoke(config, "--timeout", "2")

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 6, done.stdout
    verdicts = {line.split()[1].rstrip(":"): line for line in lines[:5]}
    assert verdicts["ok"].startswith("PASS ok: canary served after")
    assert verdicts["bad-key"].startswith("FAIL bad-key [write/auth]")
    assert "admin API rejected the admin key (HTTP 401 (failed to check token))" in \
        verdicts["bad-key"]
    assert "could not be deleted" not in verdicts["bad-key"]  # a 401 stored nothing
    assert verdicts["no-admin"].startswith("FAIL no-admin [write/refused]")
    assert f"admin API at {closed} unreachable: connection refused" in verdicts["no-admin"]
    assert verdicts["down"].startswith("FAIL down [data plane/refused]")
    assert f"data plane at {closed} not answering after" in verdicts["down"]
    assert "connection refused" in verdicts["down"]
    assert verdicts["no-status"].startswith("FAIL no-status [status ready/refused]")
    assert f"status API at {closed} not answering after" in verdicts["no-status"]
    assert lines[5] == "1/5 gateways synced"
    assert "\x1b" not in done.stdout + done.stderr  # stderr is a pipe: no live display
    assert key not in done.stdout + done.stderr and wrong not in done.stdout + done.stderr
    assert canaries(etcd_single) == []


# -- signals ---------------------------------------------------------------------


@pytest.mark.fault(
    "SIGINT or SIGTERM to `watchdog smoke` with one gateway passed and one mid-propagation",
    reports="exit 1, `interrupted: true`; `interrupted by a signal during propagate`, canary "
            "deleted; the passed gateway kept its PASS",
    within="< 2 s after the signal (asserted)")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_gate_deletes_the_canary_and_exits_1(
    sig: signal.Signals, etcd_single: EtcdCluster, sims: SimHost,
    write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "signal-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    stale = sims.start(etcd_single, "stale", key, faults={"stale"})
    ok = sims.start(etcd_single, "ok", key)
    config = write_config(smoke_config(etcd_single, [gateway_entry(stale, keys),
                                                     gateway_entry(ok, keys)]))
    proc = subprocess.Popen(smoke_cmd(config, "--output", "json", "--timeout", "30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        # The stale gateway never serves its canary: once "ok" served its own (a 302 in its
        # metrics) and only one canary is left in etcd, the gate is mid-way for "stale".
        def mid_way() -> bool:
            served = 'code="302"' in urllib.request.urlopen(ok.metrics_url, timeout=2).read().decode()
            return served and len(canaries(etcd_single)) == 1

        wait_until(mid_way, timeout=15, interval=0.05, what="the stale gateway's canary alone")
        signalled = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
        stopped = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    assert proc.returncode == 1, out + err
    report = json.loads(out)
    assert report["interrupted"] is True and report["ok"] is False
    gws = by_name(report)
    assert gws["stale"]["message"] == "interrupted by a signal during propagate"
    assert gws["stale"]["canary_deleted"] is True
    assert gws["ok"]["ok"] is True  # it passed before the signal
    assert canaries(etcd_single) == []
    assert stopped < 2.0, stopped
    assert "Traceback" not in err


# -- leftover canaries ---------------------------------------------------------------


@pytest.mark.fault(
    "a canary left by a `watchdog smoke` killed with SIGKILL two hours ago",
    reports="the next run sweeps it and reports it (`swept`, `swept 1 leftover canary route(s)`)",
    within="the next run")
@pytest.mark.fault(
    "another run's canary, mid-propagation at the same time",
    reports="untouched by the sweep; deleted by its own run",
    within="the next run")
def test_a_canary_left_by_a_killed_run_is_swept_and_a_concurrent_one_is_not(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    preload = libfaketime()
    key = "sweep-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    stale = sims.start(etcd_single, "stale", key, faults={"stale"})
    ok = sims.start(etcd_single, "ok", key)
    stale_config = write_config(smoke_config(etcd_single, [gateway_entry(stale, keys)]),
                                name="stale.yml")
    ok_config = write_config(smoke_config(etcd_single, [gateway_entry(ok, keys)]), name="ok.yml")
    running: list[subprocess.Popen[str]] = []

    def start(*cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, cwd=REPO, env={**os.environ, **(env or {})})
        running.append(proc)
        return proc

    try:
        # A run of another pipeline, mid-propagation right now (started first: every run
        # sweeps, and this one must not see the leftover yet).
        concurrent = start(*smoke_cmd(stale_config, "--timeout", "30", "--output", "json"))
        wait_until(lambda: len(canaries(etcd_single)) == 1, timeout=15, interval=0.05,
                   what="the concurrent run's canary")
        [(fresh_key, _)] = canaries(etcd_single)
        # A run two hours ago by its clock, killed (-9) while its canary propagates. The
        # library is preloaded directly (not through the faketime wrapper, which would be
        # the process killed).
        killed = start(*smoke_cmd(stale_config, "--timeout", "30"),
                       env={"LD_PRELOAD": preload, "FAKETIME": "-2h"})
        wait_until(lambda: len(canaries(etcd_single)) == 2, timeout=15, interval=0.05,
                   what="the killed run's canary")
        killed.kill()
        killed.communicate(timeout=5)
        [left_key] = [k for k, _ in canaries(etcd_single) if k != fresh_key]
        left_id = left_key.rsplit("/", 1)[-1]

        done, _, _ = run_smoke(ok_config, "--output", "json", "--timeout", "10")

        assert done.returncode == 0, done.stdout + done.stderr
        gw = report_of(done)["gateways"][0]
        assert gw["swept"] == [left_id] and gw["sweep_failed"] == []
        assert f"swept 1 leftover canary route(s): {left_id}" in gw["message"]
        assert [k for k, _ in canaries(etcd_single)] == [fresh_key]  # untouched
        concurrent.send_signal(signal.SIGINT)
        out, _ = concurrent.communicate(timeout=15)
        assert report_of(subprocess.CompletedProcess([], 1, out, ""))["gateways"][0][
            "canary_deleted"] is True
        assert canaries(etcd_single) == []
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
        delete_keys(etcd_single, CANARY_KEYS)  # whatever a failure left, for the next tests


# -- read-only ---------------------------------------------------------------------


def test_read_only_on_healthy_gateways_passes_and_writes_nothing(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "readonly-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    gws = [sims.start(etcd_single, f"ro-{i}", key) for i in range(2)]
    config = write_config(smoke_config(etcd_single, [gateway_entry(g, keys) for g in gws]))
    before = etcd_revision(etcd_single)

    done, _, _ = run_smoke(config, "--read-only", "--output", "json", "--timeout", "5")

    assert done.returncode == 0, done.stdout + done.stderr
    assert etcd_revision(etcd_single) == before
    for gw in report_of(done)["gateways"]:
        assert gw["ok"] is True and gw["read_only"] is True, gw
        assert gw["message"] == "config lag 0 revisions, /status/ready answers 200 (read-only)"
        assert gw["config_lag"] == 0 and gw["canary_route"] is None


@pytest.mark.fault(
    "read-only gate on a gateway that stopped applying etcd changes",
    reports="FAIL `config lag`/`timeout`, `config_lag` >= 2, `stopped applying etcd changes`",
    within="the 2 s deadline")
def test_read_only_on_a_stale_gateway_fails_on_config_lag(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "rostale-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    stale = sims.start(etcd_single, "stale", key, faults={"stale"})
    route_ids = [f"ro-stale-{secrets.token_hex(4)}-{i}" for i in range(2)]
    try:
        for route_id in route_ids:  # a deploy changed routes; this gateway never applies them
            assert admin_put_route(stale, key, route_id, f"/{route_id}") in (200, 201)
        config = write_config(smoke_config(etcd_single, [gateway_entry(stale, keys)]))

        done, _, _ = run_smoke(config, "--read-only", "--timeout", "2", "--output", "json")

        assert done.returncode == 1, done.stdout + done.stderr
        gw = report_of(done)["gateways"][0]
        assert (gw["phase"], gw["reason"]) == ("config lag", "timeout")
        assert gw["config_lag"] >= 2
        assert gw["message"].startswith(f"config lag still {gw['config_lag']:.0f} revisions at "
                                        "the deadline")
        assert "stopped applying etcd changes" in gw["message"]
    finally:
        for route_id in route_ids:
            delete_keys(etcd_single, f"/apisix/routes/{route_id}")


class HostileMetrics(BaseHTTPRequestHandler):
    """Gateway Prometheus pages whose loaded revision is nonsense, one per path."""

    values: ClassVar[dict[str, str]] = {"/nan": "NaN", "/inf": "+Inf", "/huge": "1e300", "/negative": "-3",
              "/above": "1000000000000"}

    def do_GET(self) -> None:
        value = self.values.get(self.path)
        if value is None:
            self.send_error(404)
            return
        page = ("# TYPE apisix_etcd_modify_indexes gauge\n"
                f'apisix_etcd_modify_indexes{{key="max_modify_index"}} {value}\n'
                f'apisix_etcd_modify_indexes{{key="routes"}} {value}\n'
                "# TYPE apisix_etcd_reachable gauge\napisix_etcd_reachable 1\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.fault(
    "gateway reporting a loaded revision of NaN, +Inf, 1e300, -3 or above etcd's",
    reports="FAIL `config lag`/`protocol`: `report a loaded config revision that cannot be`; never "
            "`config lag 0`",
    within="at once: < 4 s of a 5 s deadline (asserted)")
def test_read_only_fails_on_a_loaded_revision_that_cannot_be(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "ronan-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    nan = sims.start(etcd_single, "nan-index", key, faults={"nan-index"})  # the simulator
    with serve_on_loopback(HostileMetrics) as hostile:  # and bare pages for the other values
        entries = [gateway_entry(nan, keys, status_url=None)] + [
            {"name": path.strip("/"), "admin_url": hostile, "metrics_url": hostile + path}
            for path in HostileMetrics.values if path != "/nan"]
        config = write_config(smoke_config(etcd_single, entries))
        done, _, _ = run_smoke(config, "--read-only", "--output", "json", "--timeout", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    gws = by_name(report_of(done))
    said = {
        "nan-index": "nan is not a revision", "inf": "inf is not a revision",
        "huge": "1e+300 is beyond any etcd revision", "negative": "-3 is negative",
        "above": "1000000000000 is beyond etcd's current revision",
    }
    for name, problem in said.items():
        gw = gws[name]
        assert (gw["ok"], gw["phase"], gw["reason"]) == (False, "config lag", "protocol"), gw
        assert "report a loaded config revision that cannot be: " + problem in gw["message"], gw
        assert gw["config_lag"] is None and gw["elapsed"] < 4.0, gw  # at once, not at the end
    assert "config lag 0" not in done.stdout


@pytest.mark.fault(
    "read-only gate with etcd endpoints that accept and never answer",
    reports="FAIL `config lag`/`timeout`: `no answer from etcd by the deadline`",
    within="< 3.5 s with a 3 s deadline (asserted)")
def test_read_only_on_a_silent_etcd_ends_by_the_deadline_saying_timeout(
    sims: SimHost, etcd_single: EtcdCluster, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "rosilent-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    gw = sims.start(etcd_single, "ok", key)
    silent = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(2)]  # never read
    try:
        endpoints = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in silent]
        config = write_config({"etcd": {"endpoints": endpoints, "interval": "5s",
                                        "timeout": "2s"},
                               "gateways": [gateway_entry(gw, keys)]})
        done, _, _ = run_smoke(config, "--read-only", "--output", "json", "--timeout", "3")
    finally:
        for s in silent:
            s.close()
    assert done.returncode == 1, done.stdout + done.stderr
    report = report_of(done)
    [result] = report["gateways"]
    assert (result["phase"], result["reason"]) == ("config lag", "timeout"), result
    assert "no answer from etcd by the deadline" in result["message"]
    assert result["elapsed"] < 3.5, result
    assert report["elapsed"] < 3.5, report  # two 2 s etcd calls in a row took 4 s and more


# -- usage errors -------------------------------------------------------------------


@pytest.mark.fault(
    "`watchdog smoke` with broken YAML, an unknown key, or an unknown gateway",
    reports="exit 2 naming the key or the gateway (and the configured ones); no traceback",
    within="at once")
def test_bad_config_and_unknown_gateway_exit_2(
    write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("etcd: {endpoints: [http://127.0.0.1:2379]}\ngateways:\n  - name: [x\n")
    done, _, _ = run_smoke(broken)
    assert done.returncode == 2 and "YAML syntax error" in done.stderr, done.stderr

    typo = write_config({"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                         "gateways": [{"name": "gw", "admin_url": "http://127.0.0.1:1",
                                       "admin_key_env": "HOME", "data_url": "http://127.0.0.1:1",
                                       "dataurl": "x"}]}, name="typo.yml")
    done, _, _ = run_smoke(typo)
    assert done.returncode == 2 and "gateways[0].dataurl: unknown key" in done.stderr

    good = write_config({"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                         "gateways": [{"name": "gw-1", "admin_url": "http://127.0.0.1:1",
                                       "admin_key_env": "HOME",
                                       "data_url": "http://127.0.0.1:1"}]}, name="good.yml")
    done, _, _ = run_smoke(good, "--gateway", "gw-9")
    assert done.returncode == 2
    assert "no gateway named gw-9" in done.stderr and "configured: gw-1" in done.stderr
    assert "Traceback" not in done.stderr


def test_live_progress_only_on_a_terminal(
    etcd_single: EtcdCluster, sims: SimHost, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    key = "tty-" + secrets.token_hex(8)
    keys = key_file(tmp_path, key)
    stale = sims.start(etcd_single, "stale", key, faults={"stale"})
    config = write_config(smoke_config(etcd_single, [gateway_entry(stale, keys)]))
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(smoke_cmd(config, "--timeout", "1"), stdout=subprocess.PIPE,
                              stderr=follower, text=True, timeout=30, stdin=subprocess.DEVNULL,
                              cwd=REPO, env={**os.environ, "TERM": "xterm"})
        os.close(follower)
        follower = -1
        drawn = b""
        while select.select([leader], [], [], 0.2)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 1
    assert b"\x1b[2K" in drawn and b"stale:" in drawn and b"propagate" in drawn  # redrawn
    assert "\x1b" not in done.stdout  # the report itself stays plain
    assert done.stdout.startswith("FAIL stale [propagate/timeout]")
    assert canaries(etcd_single) == []
