"""The 250-stream stall as watchdog reports it, on etcd 3.5.1 over TLS and over plain HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import WatchdogProcess
from tests.helpers import sample
from watchdog.lab.cluster import EtcdCluster
from watchdog.lab.storm import Storm

pytestmark = pytest.mark.integration
WATCHES = 263


async def wait_metrics(proc: WatchdogProcess, check: Callable[[str], bool], timeout: float,
                       what: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(proc.metrics)
        if check(text):
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def json_timeouts(text: str) -> float:
    return sample(text, "watchdog_etcd_probe_failures_total", api="json", op="range",
                  reason="timeout") or 0.0


@pytest.mark.fault(
    "263 HTTP watches on TLS etcd 3.5.1 (the JSON gateway's 250-stream limit)",
    reports="`watchdog_etcd_watch_streams` 250, `stream_limit_exposed` 1, headroom 0, JSON "
            "`probe_success` 0 with timeouts poll after poll, gRPC probes pass; the unserved "
            "watches visible as client connections beyond the streams",
    within=">= 3 JSON timeouts in 4 polls at 1 s (asserted)")
@pytest.mark.fault(
    "263 HTTP watches on plain-HTTP etcd 3.5.1 (no shared HTTP/2 connection)",
    reports="no stall: 263 streams, `stream_limit_exposed` 0, JSON probes pass, no timeout",
    within="4 polls at 1 s (asserted)")
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_263_watches(tls: bool, make_cluster: Callable[..., EtcdCluster],
                           write_config: Callable[..., Path],
                           run_watchdog: Callable[..., WatchdogProcess]) -> None:
    cluster = make_cluster(size=1, tls=tls, name_prefix="stall")
    ca = str(cluster.tls_files.ca_file) if cluster.tls_files else None
    etcd: dict[str, object] = {"endpoints": cluster.endpoints, "interval": "1s",
                               "timeout": "800ms", "discover_members": False}
    if ca:
        etcd["tls"] = {"ca_file": ca}
    proc = run_watchdog(write_config({"etcd": etcd}))
    proc.wait_ready()
    storm = Storm(cluster.endpoints[0], ca_file=ca)
    try:
        await storm.start(WATCHES)
        text = await wait_metrics(
            proc, lambda t: (sample(t, "watchdog_etcd_client_connections") or 0) >= WATCHES
            and (sample(t, "watchdog_etcd_watch_streams") or 0) >= 250, 20,
            f"{WATCHES} connections and at least 250 streams")
        before = json_timeouts(text)
        await asyncio.sleep(4)  # four more polls under the storm
        text = await asyncio.to_thread(proc.metrics)
        streams = sample(text, "watchdog_etcd_watch_streams")
        connections = sample(text, "watchdog_etcd_client_connections")
        assert connections is not None and connections >= WATCHES
        grpc_ok = sample(text, "watchdog_etcd_probe_success", api="grpc", op="range")
        grpc_count = sample(text, "watchdog_etcd_probe_duration_seconds_count", api="grpc",
                            op="range")
        grpc_sum = sample(text, "watchdog_etcd_probe_duration_seconds_sum", api="grpc",
                          op="range")
        assert grpc_ok == 1.0 and grpc_count and grpc_sum is not None
        if tls:
            assert streams == 250, "the JSON gateway's HTTP/2 connection caps at 250 streams"
            assert sample(text, "watchdog_etcd_stream_limit_exposed") == 1.0
            assert sample(text, "watchdog_etcd_stream_limit_headroom") == 0.0
            assert proc.output().count("stream headroom low peer=") == 1  # once, not per poll
            assert sample(text, "watchdog_etcd_probe_success", api="json", op="range") == 0.0
            assert json_timeouts(text) - before >= 3, "JSON probes time out poll after poll"
            conns = sample(text, "watchdog_etcd_client_connections")
            assert conns is not None and conns - streams >= WATCHES - 250
        else:
            assert streams == WATCHES
            assert sample(text, "watchdog_etcd_stream_limit_exposed") == 0.0
            assert sample(text, "watchdog_etcd_probe_success", api="json", op="range") == 1.0
            assert json_timeouts(text) == 0
    finally:
        await storm.stop()
    if tls:
        await wait_metrics(
            proc, lambda t: sample(t, "watchdog_etcd_probe_success", api="json", op="range")
            == 1.0, 10, "JSON probes recover after the watches close")
