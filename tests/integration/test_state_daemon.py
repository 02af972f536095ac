"""The learned state on a real `watchdog run` process (issues #14.7, #14.8): a hostile state
file never crashes a start, and a hostile etcd page never ends persistence or a clean exit."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.conftest import FIXTURES, WatchdogProcess
from tests.helpers import libfaketime, sample, serve_on_loopback, wait_until
from watchdog.lab.cluster import EtcdCluster
from watchdog.state import StateStore

pytestmark = pytest.mark.integration

ENVELOPE = b'{"format": "watchdog-state", "version": 1, "saved_at": 1700000000, "data": '


def wire_with(value: bytes) -> bytes:
    """A saved trip-wire section whose steady state is `value`, as raw JSON."""
    return (b'{"tripwire": {"version": 2, "bucket": 60.0, "saved_at": 1700000000, '
            b'"saved_monotonic": 1, "boot_id": null, "cluster_id": null, "members": {}, '
            b'"wires": {"single-0": {"watch_streams": {"first_seen": -60, "last_seen": 0, '
            b'"last_value": 1, "steady": ' + value + b', "tripped_since": null, "ring": [], '
            b'"bucket": null}}}}}')


HOSTILE_FILES = {
    "400-digit-integer": ENVELOPE + wire_with(b"9" * 400) + b"}",
    "100000-deep": ENVELOPE + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "saved-at-a-string": b'{"format": "watchdog-state", "version": 1, "saved_at": "noon", '
                         b'"data": {}}',
}


@pytest.mark.fault(
    "state file holding a 400-digit integer",
    reports="set aside as `state.json.corrupt-<time>` (`is unusable ... set aside as`); the daemon "
            "serves, exits 0 and writes a fresh state; no traceback",
    within="at start; serving within 10 s (asserted)")
@pytest.mark.fault(
    "state file nested 100,000 deep",
    reports="set aside with a warning; the daemon serves, exits 0, saves a fresh state",
    within="at start; serving within 10 s (asserted)")
@pytest.mark.fault(
    "state file whose `saved_at` is a string",
    reports="set aside with a warning; the daemon serves, exits 0, saves a fresh state",
    within="at start; serving within 10 s (asserted)")
def test_hostile_state_files_are_set_aside_and_each_daemon_serves(
    etcd_single: EtcdCluster, write_config: Callable[..., Path], tmp_path: Path,
) -> None:
    # One daemon per file, all started at once: the cases cost one start, not five.
    procs: dict[str, WatchdogProcess] = {}
    for case, content in HOSTILE_FILES.items():
        state_dir = tmp_path / case
        state_dir.mkdir()
        (state_dir / "state.json").write_bytes(content)
        config = write_config({"etcd": {"endpoints": etcd_single.endpoints, "interval": "1s",
                                        "timeout": "500ms", "grpc_probes": False},
                               "state_dir": str(state_dir)}, name=f"{case}.yml")
        procs[case] = WatchdogProcess(config, tmp_path / f"{case}.log")
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(WatchdogProcess.start, procs.values()))
        for case, proc in procs.items():
            wait_until(lambda: sample(proc.metrics(), "watchdog_etcd_peer_up") == 1.0,  # noqa: B023
                       timeout=10, what=f"{case}: a polled peer on /metrics")
        for proc in procs.values():
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)  # all at once; each is then waited for
        codes = {case: proc.proc.wait(timeout=15) for case, proc in procs.items()
                 if proc.proc is not None}
    finally:
        for proc in procs.values():
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.kill()
                proc.proc.wait(timeout=5)
    assert codes == dict.fromkeys(HOSTILE_FILES, 0)
    for case, proc in procs.items():
        state_dir = tmp_path / case
        aside = sorted(state_dir.glob("state.json.corrupt-*"))
        assert len(aside) == 1, (case, sorted(p.name for p in state_dir.iterdir()))
        assert aside[0].read_bytes() == HOSTILE_FILES[case]
        log = proc.output()
        assert "is unusable" in log and "set aside as" in log, (case, log)
        assert "Traceback" not in log, (case, log)
        saved = StateStore(state_dir).load()  # the clean shutdown wrote a fresh, usable state
        assert saved is not None and "single-0" in saved["tripwire"]["wires"], case


class HostileEtcd(BaseHTTPRequestHandler):
    """An etcd 3.5.1 whose /metrics page (captured from a real one) claims 1e308 watch
    streams. Its JSON gateway answers reads and Status with real captured answers, so the
    peer is up (it answers its API) and the absurd sample reaches the trip wire."""

    page = (FIXTURES / "etcd" / "etcd-3.5.1-tls-idle.metrics").read_bytes().replace(
        b"etcd_debugging_mvcc_watch_stream_total 0", b"etcd_debugging_mvcc_watch_stream_total 1e308")
    answers: ClassVar[dict[str, bytes]] = {
        "/version": (FIXTURES / "etcd" / "etcd-3.5.1-tls-idle_version.json").read_bytes(),
        "/v3/kv/range": (FIXTURES / "etcd" / "etcd-3.5.1-tls-idle_v3_kv_range.json").read_bytes(),
        "/v3/maintenance/status": (
            FIXTURES / "etcd" / "etcd-3.5.1-tls-idle_v3_maintenance_status.json").read_bytes(),
    }

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self.answer(self.page, "text/plain; version=0.0.4")
        elif self.path in self.answers:
            self.answer(self.answers[self.path], "application/json")
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile_etcd() -> Iterator[str]:
    assert b"watch_stream_total 1e308" in HostileEtcd.page
    with serve_on_loopback(HostileEtcd) as url:
        yield url


def all_finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return True


@pytest.mark.fault(
    "etcd page claiming 1e308 watch streams",
    reports="exported as the peer says; the trip wire clamps at 2^53 so the state stays finite and "
            "saves; SIGTERM exits 0 with it flushed, no `cannot save state`",
    within="4 polls, 15 s (asserted)")
def test_a_page_claiming_1e308_watch_streams_never_stops_persistence(
    hostile_etcd: str, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    config = write_config({
        "etcd": {"endpoints": [hostile_etcd], "discover_members": False, "interval": "1s",
                 "timeout": "500ms", "grpc_probes": False},
        "tripwire": {"warmup": 0},
    })
    proc = run_watchdog(config)
    # A few polls: each lands in the same one-minute bucket, whose sum would overflow.
    wait_until(lambda: (sample(proc.metrics(), "watchdog_job_runs_total", task="etcd",
                               outcome="success") or 0) >= 4, timeout=15, what="four polls")
    text = proc.metrics()
    assert sample(text, "watchdog_etcd_watch_streams") == 1e308  # exported as the peer says
    assert proc.stop(signal.SIGTERM) == 0
    log = proc.output()
    assert "cannot save state" not in log and "Traceback" not in log, log

    raw = (tmp_path / "state" / "state.json").read_text()
    saved = json.loads(raw)  # no NaN or Infinity in it: it is plain JSON
    assert all_finite(saved)
    [wire] = saved["data"]["tripwire"]["wires"].values()
    assert wire["watch_streams"]["last_value"] == 2.0**53  # clamped
    assert not list((tmp_path / "state").glob("state.json.corrupt-*"))


@pytest.mark.fault(
    "wall clock 2 days ahead (libfaketime), corrected before the next start",
    reports="`learned state loaded`, no `relearning`; the steady state is there at once despite a 1 "
            "h warm-up",
    within="first poll, 10 s (asserted)")
def test_a_clock_that_ran_ahead_and_was_corrected_keeps_the_learned_state(
    etcd_single: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    """The first run's wall clock is two days ahead (libfaketime; the monotonic clock is
    left alone, as NTP leaves it), the second run's is right again: the state it saved
    lies two days "in the future" by the wall clock, yet it is the same boot."""
    preload = libfaketime()
    etcd = {"endpoints": etcd_single.endpoints, "interval": "1s", "timeout": "500ms",
            "grpc_probes": False}
    ahead = run_watchdog(write_config({"etcd": etcd, "tripwire": {"warmup": 0}}, name="a.yml"),
                         env={"LD_PRELOAD": preload, "FAKETIME": "+2d",
                              "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    wait_until(lambda: sample(ahead.metrics(), "watchdog_etcd_watch_streams_steady_state")
               is not None, timeout=10, what="a learned steady state")
    assert ahead.stop() == 0

    # A fresh wire could not arm within the hour of warm-up: a steady state is the saved one.
    corrected = run_watchdog(write_config({"etcd": etcd, "tripwire": {"warmup": "1h"}},
                                          name="b.yml"))
    wait_until(lambda: sample(corrected.metrics(), "watchdog_etcd_peer_up") == 1.0,
               timeout=10, what="a polled peer")
    assert sample(corrected.metrics(), "watchdog_etcd_watch_streams_steady_state") is not None
    assert corrected.stop() == 0
    log = corrected.output()
    assert "learned state loaded" in log and "relearning" not in log, log

