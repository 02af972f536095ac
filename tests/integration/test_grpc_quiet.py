"""gRPC's C core never writes raw lines on watchdog's stderr unless the user asks for them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
import yaml

from tests.conftest import REPO
from tests.helpers import http_get, samples, wait_until
from watchdog.lab.cluster import free_port

pytestmark = pytest.mark.integration

# absl's line format (I/W/E/F, date, time, thread, file:line]) and its start-up banner.
RAW_GRPC = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]|absl::InitializeLog",
                      re.MULTILINE)


@contextmanager
def tls_listener_without_grpc(tmp: Path) -> Iterator[int]:
    """A TLS server whose certificate no configured CA trusts and that speaks no gRPC:
    every gRPC probe fails in the handshake, the case gRPC logs about."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    port = free_port()
    code = ("import http.server, ssl, sys\n"
            "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
            f"ctx.load_cert_chain({str(tmp / 'server.pem')!r})\n"
            f"srv = http.server.HTTPServer(('127.0.0.1', {port}),"
            " http.server.BaseHTTPRequestHandler)\n"
            "srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n"
            "srv.serve_forever()\n")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def grpc_env(verbosity: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    if verbosity is not None:
        env["GRPC_VERBOSITY"] = verbosity
    return env


@pytest.mark.fault(
    "the daemon polling a listener that does not speak gRPC",
    reports="gRPC failures counted; no raw gRPC lines on stderr; exit 0",
    within="a few polls")
@pytest.mark.timeout(120)
def test_run_against_a_non_grpc_listener_prints_no_raw_grpc_lines(tmp_path: Path) -> None:
    web = free_port()
    with tls_listener_without_grpc(tmp_path) as port:
        config = tmp_path / "watchdog.yml"
        config.write_text(yaml.safe_dump({
            "etcd": {"endpoints": [f"https://127.0.0.1:{port}"], "interval": "1s",
                     "timeout": "500ms"},
            "state_dir": str(tmp_path / "state"),
            "web": {"listen_address": f"127.0.0.1:{web}"},
        }))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "watchdog", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
            env=grpc_env(None))
        try:
            wait_until(lambda: http_get(f"http://127.0.0.1:{web}/healthz", 1)[0] == 200,
                       timeout=60, interval=0.3, what="watchdog serving")
            # A few poll cycles, each with failing gRPC handshakes.
            def grpc_failures() -> float:
                text = http_get(f"http://127.0.0.1:{web}/metrics", 2)[1]
                return sum(v for (name, labels), v in samples(text).items()
                           if name == "watchdog_etcd_probe_failures_total"
                           and ("api", "grpc") in labels)

            wait_until(lambda: grpc_failures() >= 4, timeout=30, interval=0.5,
                       what="failed gRPC probes counted")
        finally:
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
    stderr = err.decode(errors="replace")
    assert daemon.returncode == 0, stderr[-2000:]
    assert "level=" in stderr  # watchdog's own log lines are there
    assert not RAW_GRPC.search(stderr), stderr[-2000:]


PROBE = """
import asyncio
from watchdog.etcd.probes import GrpcProber
import os, sys
async def main():
    prober = GrpcProber()
    result = await prober.range_count("https://127.0.0.1:{port}", "/k", timeout=1)
    prober.close()
    print(result.reason, os.environ.get("GRPC_VERBOSITY"))
asyncio.run(main())
"""


@pytest.mark.parametrize(("verbosity", "raw"), [(None, False), ("INFO", True)])
def test_users_verbosity_wins(tmp_path: Path, verbosity: str | None, raw: bool) -> None:
    """Left unset, watchdog silences gRPC; set by the user, gRPC logs as asked (which
    also shows the listener above makes gRPC log: the quiet is watchdog's doing)."""
    with tls_listener_without_grpc(tmp_path) as port:
        done = subprocess.run([sys.executable, "-c", PROBE.format(port=port)], cwd=REPO,
                              capture_output=True, text=True, timeout=60,
                              env=grpc_env(verbosity))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["tls", verbosity or "NONE"]
    assert bool(RAW_GRPC.search(done.stderr)) is raw, done.stderr[-2000:]
