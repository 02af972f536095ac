"""The fault matrix, on real processes: a real `watchdog run` against real etcd members that
are killed, SIGSTOPped, restarted, served with bad certificates or expiring tokens, and
against small loopback servers that pretend to be etcd or an APISIX admin API for the
malformed-input cases. For every fault the agent keeps serving /metrics and /healthz,
reports a classified failure, loses no learned state and leaves no canary behind.

docs/reliability.md lists the matrix with the test that covers each row.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from tests.conftest import REPO, WatchdogProcess, gateway_sim_process
from tests.helpers import all_samples, sample, wait_until
from watchdog.lab.cluster import EtcdCluster, free_port

pytestmark = pytest.mark.integration

FAST = {"interval": "1s", "timeout": "500ms"}


# -- helpers ------------------------------------------------------------------------------


def total(text: str, name: str, **labels: str) -> float:
    """Sum of every sample of `name` whose labels include `labels`."""
    return sum(v for _, v in all_samples(text, name, **labels))


def peer_up(proc: WatchdogProcess) -> dict[str, float]:
    return {labels["peer"]: v for labels, v in all_samples(proc.metrics(), "watchdog_etcd_peer_up")}


def leaders(proc: WatchdogProcess) -> list[str]:
    return [labels["peer"] for labels, v in
            all_samples(proc.metrics(), "watchdog_etcd_peer_is_leader") if v == 1]


def assert_serving(proc: WatchdogProcess, max_seconds: float = 1.0) -> str:
    """/healthz answers and /metrics renders quickly, whatever the targets do."""
    started = time.monotonic()
    assert proc.get("/healthz") == (200, "ok\n")
    text = proc.metrics()
    elapsed = time.monotonic() - started
    assert elapsed < max_seconds, f"/healthz + /metrics took {elapsed:.2f}s"
    return text


def scrapes_never_wait(proc: WatchdogProcess, probe_timeout: float = 0.5) -> str:
    """A scrape that waited on a hung target would take the probe timeout every time; the
    fastest of five must be well under it (the slowest only bounded: the machine is shared)."""
    times = []
    for _ in range(5):
        started = time.monotonic()
        text = assert_serving(proc, max_seconds=2.0)
        times.append(time.monotonic() - started)
    assert min(times) < probe_timeout / 2, times
    return text


def assert_clean_exit(proc: WatchdogProcess, within: float = 10.0) -> float:
    started = time.monotonic()
    assert proc.stop(signal.SIGTERM, timeout=within) == 0, proc.output()[-3000:]
    took = time.monotonic() - started
    out = proc.output()
    assert "stopped cleanly" in out and "Traceback" not in out, out[-3000:]
    return took


def job_errors(text: str) -> float:
    return total(text, "watchdog_job_runs_total", outcome="error")


def secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


class Fakes:
    """Small loopback servers on an event loop in a background thread (the tests are
    synchronous: they drive real processes and wait with bounded polls)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sent: dict[str, int] = {}
        self._cleanups: list[Callable[[], Awaitable[None]]] = []
        self._writers: list[asyncio.StreamWriter] = []

    def run(self, coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def app(self, app: web.Application) -> str:
        async def start() -> str:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(runner, sock).start()
            self._cleanups.append(runner.cleanup)
            return f"http://127.0.0.1:{sock.getsockname()[1]}"

        return str(self.run(start()))

    def raw(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                    Awaitable[None]]) -> str:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.append(writer)
            with contextlib.suppress(Exception):
                await handler(reader, writer)
            writer.close()

        async def start() -> str:
            server = await asyncio.start_server(wrapped, "127.0.0.1", 0)

            async def close() -> None:
                server.close()

            self._cleanups.append(close)
            return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

        return str(self.run(start()))

    def close(self) -> None:
        async def stop() -> None:
            for writer in self._writers:
                writer.close()
            for cleanup in reversed(self._cleanups):
                with contextlib.suppress(Exception):
                    await cleanup()

        with contextlib.suppress(Exception):
            self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    servers = Fakes()
    yield servers
    servers.close()


def etcd_page(streams: float | str = 7, extra: str = "") -> bytes:
    return (
        "# HELP etcd_debugging_mvcc_watch_stream_total Total number of watch streams.\n"
        "# TYPE etcd_debugging_mvcc_watch_stream_total gauge\n"
        f"etcd_debugging_mvcc_watch_stream_total {streams}\n"
        "# TYPE etcd_debugging_mvcc_watcher_total gauge\n"
        "etcd_debugging_mvcc_watcher_total 9\n"
        "etcd_server_has_leader 1\n"
        "etcd_server_is_leader 1\n"
        'etcd_server_version{server_version="3.5.1"} 1\n'
        "process_open_fds 42\n" + extra
    ).encode()


def fake_etcd(fakes: Fakes, metrics: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> str:
    """An etcd JSON gateway that answers like a healthy v3.5 member, with its own /metrics."""
    header = {"cluster_id": "1", "member_id": "1", "revision": "5", "raft_term": "2"}

    async def members(_: web.Request) -> web.Response:
        return web.json_response({"header": header, "members": []})

    async def range_(_: web.Request) -> web.Response:
        return web.json_response({"header": header, "count": "0"})

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"header": header, "version": "3.5.1", "dbSize": "20480",
                                  "leader": "1", "raftIndex": "9", "raftTerm": "2"})

    app = web.Application()
    app.router.add_post("/v3/cluster/member/list", members)
    app.router.add_post("/v3/kv/range", range_)
    app.router.add_post("/v3/maintenance/status", status)
    app.router.add_get("/metrics", metrics)
    return fakes.app(app)


def streaming(fakes: Fakes, key: str, chunk: bytes, total_bytes: int,
              content_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler streaming total_bytes (chunked); fakes.sent[key] counts what got out."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        sent = 0
        try:
            while sent < total_bytes:
                await resp.write(chunk)
                sent += len(chunk)
                fakes.sent[key] = max(fakes.sent.get(key, 0), sent)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    return handler


# -- etcd members: killed, restarted, leader killed, hung -----------------------------------


@pytest.mark.fault(
    "etcd member killed (SIGKILL) in a 3-member cluster",
    reports="`watchdog_etcd_peer_up{peer}` 0; "
            "`watchdog_etcd_poll_failures_total{reason=\"refused\"}`; "
            "`watchdog_etcd_probe_failures_total{api=\"json\"|\"grpc\",reason=\"refused\"}`; the "
            "other members stay up; no job error",
    within="4 s at a 1 s interval (asserted)")
@pytest.mark.fault(
    "the raft leader killed mid-poll",
    reports="the old leader down; exactly one new `watchdog_etcd_peer_is_leader` 1 among the "
            "others; the dead peer's `is_leader` series gone (no stale 1)",
    within="down in 4 s, new leader in 10 s (asserted)")
@pytest.mark.fault(
    "a killed member restarted from its data directory",
    reports="`peer_up` back to 1",
    within="10 s (asserted)")
@pytest.mark.fault(
    "etcd member hung (SIGSTOP: TCP accepted, nothing answered)",
    reports="`peer_up` 0; `poll_failures_total{reason=\"timeout\"}`; "
            "`probe_failures_total{api=\"grpc\",reason=\"timeout\"}`; scrapes never wait on it "
            "(fastest of 5 under the 0.5 s probe timeout); the healthy members stay up",
    within="4 s at a 1 s interval, 0.5 s timeout (asserted)")
@pytest.mark.fault(
    "a hung member resumed (SIGCONT)",
    reports="`peer_up` back to 1; no job error",
    within="10 s (asserted)")
def test_member_killed_leader_changed_hung_and_back(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster = make_cluster(size=3, name_prefix="fault")
    names = [m.name for m in cluster.members]
    proc = run_watchdog(write_config({"etcd": {"endpoints": cluster.endpoints, **FAST}}))
    proc.wait_ready()
    wait_until(lambda: peer_up(proc) == dict.fromkeys(names, 1.0), timeout=10, what="3 up")
    wait_until(lambda: len(leaders(proc)) == 1, timeout=10, what="one leader")

    # Leader change mid-poll: SIGKILL the leader while the agent polls every second.
    old_leader = leaders(proc)[0]
    victim = names.index(old_leader)
    cluster.kill_member(victim)
    wait_until(lambda: peer_up(proc).get(old_leader) == 0.0, timeout=4, interval=0.05,
               what="killed leader reported down")
    wait_until(lambda: (lambda ls: len(ls) == 1 and ls[0] != old_leader)(leaders(proc)),
               timeout=10, what="a new leader reported")
    text = assert_serving(proc)
    assert total(text, "watchdog_etcd_poll_failures_total", peer=old_leader,
                 reason="refused") >= 1
    for api in ("json", "grpc"):
        assert total(text, "watchdog_etcd_probe_failures_total", peer=old_leader, api=api,
                     reason="refused") >= 1, api
    assert sample(text, "watchdog_etcd_peer_is_leader", peer=old_leader) is None
    assert job_errors(text) == 0

    cluster.restart_member(victim)
    wait_until(lambda: peer_up(proc).get(old_leader) == 1.0, timeout=10, what="back up")

    # Hung member: SIGSTOP keeps its sockets open and answers nothing.
    hung = next(i for i, n in enumerate(names) if n != leaders(proc)[0])
    cluster.pause_member(hung)
    try:
        wait_until(lambda: peer_up(proc).get(names[hung]) == 0.0, timeout=4, interval=0.05,
                   what="hung member reported down")
        text = scrapes_never_wait(proc)
        assert total(text, "watchdog_etcd_poll_failures_total", peer=names[hung],
                     reason="timeout") >= 1
        wait_until(lambda: total(proc.metrics(), "watchdog_etcd_probe_failures_total",
                                 peer=names[hung], api="grpc", reason="timeout") >= 1,
                   timeout=5, what="gRPC probe timeouts on the hung member")
        others = [n for i, n in enumerate(names) if i != hung]
        assert all(peer_up(proc)[n] == 1.0 for n in others)
    finally:
        cluster.resume_member(hung)
    wait_until(lambda: peer_up(proc).get(names[hung]) == 1.0, timeout=10, what="resumed")
    assert job_errors(proc.metrics()) == 0
    assert_clean_exit(proc)


@pytest.mark.fault(
    "SIGTERM while the first poll of a hung peer is in flight",
    reports="`/readyz` 503 during the poll; exit 0, `stopped cleanly`, state file written",
    within="exit < 5 s with a 3 s poll deadline (asserted)")
def test_sigterm_during_a_poll_of_a_hung_peer(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    cluster = make_cluster(size=1, name_prefix="hang")
    cluster.pause_member(0)
    # The first poll starts at once and hangs for the whole 3 s timeout (discovery first).
    proc = run_watchdog(write_config({"etcd": {"endpoints": cluster.endpoints,
                                               "interval": "10s", "timeout": "3s"}}))
    time.sleep(0.5)
    assert proc.get("/readyz")[0] == 503  # the first poll is still in flight
    took = assert_clean_exit(proc, within=8)
    assert took < 5.0, f"shutdown took {took:.1f}s with a poll in flight"
    assert json.loads((tmp_path / "state" / "state.json").read_text())["format"] == \
        "watchdog-state"


# -- TLS ----------------------------------------------------------------------------------


@pytest.mark.fault(
    "agent given a CA that did not sign etcd's certificate",
    reports="`probe_failures_total{reason=\"tls\"}` on both APIs; `peer_up` 0; every poll failure "
            "is `tls`",
    within="10 s (asserted)")
@pytest.mark.fault(
    "etcd's certificate swapped for one issued to another host name",
    reports="`probe_failures_total{api=\"json\",reason=\"tls\"}` grows; never `refused`, `timeout` "
            "or `protocol`; `peer_up` 1 again once the right certificate is back",
    within="5 s; healed in 5 s (asserted)")
@pytest.mark.fault(
    "etcd's certificate swapped for an expired one",
    reports="the same `tls` failures; healed once a valid certificate is back",
    within="5 s; healed in 5 s (asserted)")
def test_tls_wrong_ca_hostname_mismatch_expired_certificate(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    cluster = make_cluster(size=1, tls=True, name_prefix="tlsfault")
    files = cluster.tls_files
    assert files is not None
    # Our own CA, so that certificates with a wrong name or an expired one can be issued;
    # etcd reads its certificate files again on every handshake.
    ca = trustme.CA(organization_name="watchdog fault tests")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def serve(cert: trustme.LeafCert) -> None:
        cert.private_key_pem.write_to_path(str(files.server_key))
        cert.cert_chain_pems[0].write_to_path(str(files.server_cert))

    serve(ca.issue_cert("127.0.0.1", "localhost"))
    wrong_ca = tmp_path / "wrong-ca.pem"
    trustme.CA(organization_name="not etcd's CA").cert_pem.write_to_path(str(wrong_ca))
    base = {"endpoints": cluster.endpoints, "discover_members": False, **FAST}
    good = run_watchdog(write_config({"etcd": {**base, "tls": {"ca_file": str(ca_file)}}},
                                     name="good.yml"))
    wrong = run_watchdog(write_config({"etcd": {**base, "tls": {"ca_file": str(wrong_ca)}},
                                       "state_dir": str(tmp_path / "state-wrong")},
                                      name="wrong.yml"))
    wait_until(lambda: list(peer_up(good).values()) == [1.0], timeout=10, what="up")
    [peer] = peer_up(good)  # the member name, from the member list
    wait_until(lambda: all(total(wrong.metrics(), "watchdog_etcd_probe_failures_total",
                                 api=api, reason="tls") >= 1 for api in ("json", "grpc")),
               timeout=10, what="wrong CA: tls failures through both APIs")
    text = assert_serving(wrong)
    assert list(peer_up(wrong).values()) == [0.0]
    assert total(text, "watchdog_etcd_poll_failures_total", reason="tls") >= 1
    assert total(text, "watchdog_etcd_poll_failures_total") == \
        total(text, "watchdog_etcd_poll_failures_total", reason="tls")

    def tls_failures() -> float:
        # JSON calls open a new connection each time, so they meet every new certificate;
        # the peer itself may stay up through gRPC's already verified connection.
        return total(good.metrics(), "watchdog_etcd_probe_failures_total", api="json",
                     reason="tls")

    for fault, cert in (
        ("hostname mismatch", ca.issue_cert("etcd.example.internal")),
        ("expired", ca.issue_cert("127.0.0.1", "localhost",
                                  not_before=datetime.datetime(2020, 1, 1),
                                  not_after=datetime.datetime(2021, 1, 1))),
    ):
        before = tls_failures()
        serve(cert)
        wait_until(lambda before=before: tls_failures() > before, timeout=5,
                   what=f"{fault}: tls failure")
        assert_serving(good)
        serve(ca.issue_cert("127.0.0.1", "localhost"))
        wait_until(lambda: peer_up(good) == {peer: 1.0}, timeout=5, what=f"{fault}: healed")
    text = good.metrics()
    # Nothing of it was misread as a refused connection or a timeout.
    for reason in ("refused", "timeout", "protocol"):
        assert total(text, "watchdog_etcd_poll_failures_total", reason=reason) == 0, reason
    assert job_errors(text) == 0


@pytest.mark.fault(
    "etcd requires a client certificate, the agent has none",
    reports="`tls` on both APIs and as the poll failure, never `refused`; `peer_up` 0; an agent "
            "with the certificate is up",
    within="10 s (asserted)")
def test_client_certificate_missing(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    cluster = make_cluster(size=1, tls=True, client_cert_auth=True, name_prefix="mtls")
    files = cluster.tls_files
    assert files is not None
    base = {"endpoints": cluster.endpoints, "discover_members": False, **FAST}
    without = run_watchdog(write_config(
        {"etcd": {**base, "tls": {"ca_file": str(files.ca_file)}}}, name="nocert.yml"))
    with_cert = run_watchdog(write_config(
        {"etcd": {**base, "tls": {"ca_file": str(files.ca_file),
                                  "cert_file": str(files.client_cert),
                                  "key_file": str(files.client_key)}},
         "state_dir": str(tmp_path / "state-mtls")}, name="cert.yml"))
    wait_until(lambda: list(peer_up(with_cert).values()) == [1.0], timeout=10,
               what="with a client certificate: up")
    wait_until(lambda: all(total(without.metrics(), "watchdog_etcd_probe_failures_total",
                                 api=api, reason="tls") >= 1 for api in ("json", "grpc")),
               timeout=10, what="without a client certificate: tls failures")
    text = assert_serving(without)
    assert sample(text, "watchdog_etcd_peer_up") == 0.0
    assert total(text, "watchdog_etcd_poll_failures_total", reason="tls") >= 1
    assert total(text, "watchdog_etcd_poll_failures_total", reason="refused") == 0


# -- etcd auth ----------------------------------------------------------------------------


@pytest.mark.fault(
    "etcd auth token expired at every poll (`--auth-token-ttl 1`, 2 s interval)",
    reports="no failure: re-authentication inside the call (`etcd token rejected, authenticating "
            "again`, `etcd token rejected over gRPC` at info); `probe_failures_total` stays 0; the "
            "password in no log line",
    within="within the call; 2 renewals seen in 12 s (asserted)")
def test_auth_token_expiry_is_renewed_silently(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    cluster = make_cluster(size=1, auth=True, name_prefix="ttl",
                           extra_args=("--auth-token-ttl", "1"))
    password = secret_file(tmp_path / "etcd-password", cluster.root_password)
    proc = run_watchdog(write_config({"etcd": {
        "endpoints": cluster.endpoints, "interval": "2s", "timeout": "1s",
        "auth": {"username": "root", "password_file": str(password)}}}))
    proc.wait_ready()
    # Tokens live 1 s and polls come every 2 s: each poll finds its token expired.
    wait_until(lambda: proc.output().count("etcd token rejected, authenticating") >= 2
               and "etcd token rejected over gRPC" in proc.output(), timeout=12,
               what="expired tokens renewed twice on the JSON gateway and once over gRPC")
    text = assert_serving(proc)
    assert sample(text, "watchdog_etcd_peer_up") == 1.0
    assert total(text, "watchdog_etcd_probe_failures_total") == 0
    for api in ("json", "grpc"):
        assert sample(text, "watchdog_etcd_probe_success", api=api, op="range") == 1.0, api
    assert cluster.root_password not in proc.output()


# -- malformed /metrics pages and admin APIs (small fakes) -----------------------------------


@pytest.mark.fault(
    "peer /metrics cut mid-body (Content-Length 100,000, connection aborted)",
    reports="the peer stays up (its API answers); the page yields no samples "
            "(`watchdog_etcd_watch_streams` absent); no poll failure; no job error",
    within="first polls, 10 s (asserted)")
@pytest.mark.fault(
    "peer /metrics of 256 KiB random bytes",
    reports="peer up, no samples, no poll failure, no job error",
    within="first polls, 10 s (asserted)")
@pytest.mark.fault(
    "peer /metrics of 50 MB, chunked, with `max_metrics_bytes: 1MiB`",
    reports="peer up, no samples; reading stops at the cap (the fake sent less than 50 MB); RSS < "
            "300 MiB",
    within="first polls, 10 s (asserted)")
@pytest.mark.fault(
    "peer /metrics with every sample, HELP and TYPE twice",
    reports="one series per peer; the page's last value wins",
    within="first polls, 10 s (asserted)")
@pytest.mark.fault(
    "NaN and +Inf samples on a peer page",
    reports="peer up; the value is never learned (no steady state, wire not tripped); the peers "
            "polled after it are recorded and the good one learns",
    within="first polls, 10 s (asserted)")
@pytest.mark.fault(
    "admin API refusing connections",
    reports="`watchdog_gateway_admin_failures_total{reason=\"refused\"}`; "
            "`watchdog_gateway_admin_success` 0",
    within="first poll, 10 s (asserted)")
@pytest.mark.fault(
    "admin API that reads the request and never answers",
    reports="`admin_failures_total{reason=\"timeout\"}`; `admin_success` 0",
    within="the gateway's 500 ms timeout; 10 s (asserted)")
@pytest.mark.fault(
    "admin API answering random bytes",
    reports="`admin_failures_total{reason=\"protocol\"}`",
    within="first poll, 10 s (asserted)")
@pytest.mark.fault(
    "admin API answering an HTML page with 200",
    reports="`admin_failures_total{reason=\"protocol\"}`",
    within="first poll, 10 s (asserted)")
@pytest.mark.fault(
    "admin API answering a 50 MB JSON-looking body",
    reports="`admin_failures_total{reason=\"protocol\"}`; reading stops at 1 MiB",
    within="first poll, 10 s (asserted)")
def test_malformed_peer_pages_and_admin_answers(
    fakes: Fakes, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    async def good(_: web.Request) -> web.Response:
        return web.Response(body=etcd_page(7), content_type="text/plain")

    async def nan(_: web.Request) -> web.Response:
        return web.Response(body=etcd_page("NaN", "etcd_server_quota_backend_bytes +Inf\n"),
                            content_type="text/plain")

    async def duplicate(_: web.Request) -> web.Response:
        page = etcd_page(7) + etcd_page(9)  # every sample, HELP and TYPE twice
        return web.Response(body=page, content_type="text/plain")

    async def binary(_: web.Request) -> web.Response:
        return web.Response(body=random.Random(7).randbytes(256 * 1024),
                            content_type="application/octet-stream")

    async def truncated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.content_length = 100_000
        await resp.prepare(request)
        await resp.write(etcd_page(7) + b"etcd_debugging_mvcc_watcher_tot")
        assert request.transport is not None
        request.transport.abort()  # the connection dies mid-body
        return resp

    line = b"etcd_debugging_mvcc_watch_stream_total 1\n"
    huge = streaming(fakes, "peer-huge", line * (64 * 1024 // len(line)), 50 << 20,
                     "text/plain")
    # The NaN page comes first: one bad peer must not stop the others being recorded.
    peers = {
        "nan": fake_etcd(fakes, nan), "truncated": fake_etcd(fakes, truncated),
        "binary": fake_etcd(fakes, binary), "huge": fake_etcd(fakes, huge),
        "duplicate": fake_etcd(fakes, duplicate), "good": fake_etcd(fakes, good),
    }

    # Gateways whose admin API refuses, hangs, answers garbage, HTML, or a 50 MB body.
    async def hang(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # read the request, answer nothing, until the client leaves

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(random.Random(3).randbytes(4096))
        await writer.drain()

    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>502 Bad Gateway</body></html>",
                            content_type="text/html")

    html_app = web.Application()
    html_app.router.add_get("/{tail:.*}", html)
    huge_app = web.Application()
    huge_app.router.add_get("/{tail:.*}", streaming(
        fakes, "admin-huge", b'{"x": "' + b"y" * 65536, 50 << 20, "application/json"))
    gateways = {
        "gw-refused": f"http://127.0.0.1:{free_port()}",
        "gw-hang": fakes.raw(hang),
        "gw-garbage": fakes.raw(garbage),
        "gw-html": fakes.app(html_app),
        "gw-huge": fakes.app(huge_app),
    }
    key = secret_file(tmp_path / "admin-key", "fault-test-admin-key")
    proc = run_watchdog(write_config({
        "etcd": {"endpoints": list(peers.values()), "discover_members": False,
                 "grpc_probes": False, "max_metrics_bytes": 1 << 20, **FAST},
        "gateways": [{"name": name, "admin_url": url, "admin_key_file": str(key),
                      "timeout": "500ms", "interval": "1s"} for name, url in gateways.items()],
        "tripwire": {"warmup": "1s", "min_streams": 0},
    }))

    def polled_all() -> bool:
        text = proc.metrics()
        return all(sample(text, "watchdog_etcd_peer_up", peer=url) is not None
                   for url in peers.values()) and \
            all(total(text, "watchdog_gateway_admin_failures_total", gateway=gw) >= 1
                for gw in gateways)

    wait_until(polled_all, timeout=10, what="every fake polled and every gateway failed")
    wait_until(lambda: sample(proc.metrics(), "watchdog_etcd_watch_streams_steady_state",
                              peer=peers["good"]) is not None, timeout=10,
               what="the good peer learns its steady state beside the bad ones")
    text = scrapes_never_wait(proc)

    # Every fake answers its JSON API, so every one is up; a bad page only yields no data.
    up = {name: sample(text, "watchdog_etcd_peer_up", peer=url) for name, url in peers.items()}
    assert up == {"nan": 1.0, "truncated": 1.0, "binary": 1.0, "huge": 1.0, "duplicate": 1.0,
                  "good": 1.0}
    for name in ("truncated", "binary", "huge"):
        assert sample(text, "watchdog_etcd_watch_streams", peer=peers[name]) is None, name
        assert not [v for _, v in all_samples(
            text, "watchdog_etcd_poll_failures_total", peer=peers[name]) if v], name
    assert sample(text, "watchdog_etcd_watch_streams", peer=peers["good"]) == 7.0
    # 50 MB offered, at most max_metrics_bytes read: the rest was never downloaded.
    assert 0 < fakes.sent["peer-huge"] < 50 << 20
    assert 0 < fakes.sent["admin-huge"] < 50 << 20
    rss = sample(text, "process_resident_memory_bytes")
    assert rss is not None and rss < 300 << 20, f"RSS {rss / 2**20:.0f} MiB"
    # Duplicates: one series each on our side, the page's last value wins.
    assert sample(text, "watchdog_etcd_watch_streams", peer=peers["duplicate"]) == 9.0
    # NaN/Inf samples are not learned from and break nothing.
    assert sample(text, "watchdog_etcd_watch_streams_steady_state", peer=peers["nan"]) is None
    assert sample(text, "watchdog_etcd_watch_tripwire", peer=peers["nan"]) in (None, 0.0)
    assert job_errors(text) == 0, proc.output()[-3000:]

    reasons = {gw: {labels["reason"] for labels, v in all_samples(
        text, "watchdog_gateway_admin_failures_total", gateway=gw) if v} for gw in gateways}
    assert reasons == {"gw-refused": {"refused"}, "gw-hang": {"timeout"},
                       "gw-garbage": {"protocol"}, "gw-html": {"protocol"},
                       "gw-huge": {"protocol"}}
    for gw in gateways:
        assert sample(text, "watchdog_gateway_admin_success", gateway=gw) == 0.0
    status, page = proc.get("/")
    assert status == 200 and all(gw in page for gw in gateways)
    assert_clean_exit(proc)


# -- the state directory ----------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "256k", readonly: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "watchdog-test", str(path)],
                          capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def fill(directory: Path) -> None:
    """Write until the filesystem is full (ENOSPC), down to the last byte."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


@pytest.mark.fault(
    "state directory read-only (EROFS tmpfs, or ENOTDIR)",
    reports="`watchdog_state_save_failures_total` counts each failed save; `cannot save state` "
            "logged; the steady state is still learned in memory; exit 0",
    within="first save, 10 s (asserted)")
def test_state_dir_read_only(
    etcd_single: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    # root ignores file modes, so the directory is a read-only tmpfs (EROFS); where no
    # tmpfs can be mounted, a path under a regular file (ENOTDIR) stands in.
    try:
        with tmpfs(tmp_path / "ro", readonly=True) as state_dir:
            _read_only_run(etcd_single, write_config, run_watchdog, state_dir)
    except pytest.skip.Exception:
        (tmp_path / "plain-file").write_text("")
        _read_only_run(etcd_single, write_config, run_watchdog, tmp_path / "plain-file" / "s")


def _read_only_run(cluster: EtcdCluster, write_config: Callable[..., Path],
                   run_watchdog: Callable[..., WatchdogProcess], state_dir: Path) -> None:
    proc = run_watchdog(write_config({
        "etcd": {"endpoints": cluster.endpoints, "discover_members": False, **FAST},
        "tripwire": {"warmup": "1s"}, "state_dir": str(state_dir)}))
    wait_until(lambda: sample(proc.metrics(), "watchdog_state_save_failures_total") >= 1,
               timeout=10, what="state save failure counted")
    # Learning goes on in memory.
    wait_until(lambda: sample(proc.metrics(), "watchdog_etcd_watch_streams_steady_state")
               is not None, timeout=10, what="steady state learned in memory")
    assert_serving(proc)
    assert_clean_exit(proc)
    assert "cannot save state" in proc.output()


@pytest.mark.fault(
    "state directory full (ENOSPC) after a state was saved",
    reports="the saved steady state is loaded (at once, despite a 1 h warm-up); each failed save "
            "counted; `state.json` byte-for-byte unchanged; no temporary file left",
    within="10 s (asserted)")
def test_state_dir_full_keeps_the_saved_state(
    etcd_single: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "full") as state_dir:
        etcd = {"endpoints": etcd_single.endpoints, "discover_members": False, **FAST}
        first = run_watchdog(write_config({"etcd": etcd, "tripwire": {"warmup": "1s"},
                                           "state_dir": str(state_dir)}, name="first.yml"))
        wait_until(lambda: sample(first.metrics(), "watchdog_etcd_watch_streams_steady_state")
                   is not None, timeout=10, what="steady state learned")
        assert_clean_exit(first)
        saved = (state_dir / "state.json").read_bytes()
        assert json.loads(saved)["data"]["tripwire"]

        fill(state_dir)
        # A warm-up of an hour: a steady state now can only come from the saved file.
        second = run_watchdog(write_config({"etcd": etcd, "tripwire": {"warmup": "1h"},
                                            "state_dir": str(state_dir)}, name="second.yml"))
        wait_until(lambda: sample(second.metrics(), "watchdog_state_save_failures_total") >= 1,
                   timeout=10, what="save on a full disk fails and is counted")
        wait_until(lambda: sample(second.metrics(), "watchdog_etcd_watch_streams_steady_state")
                   is not None, timeout=10, what="saved steady state loaded")
        assert_serving(second)
        assert_clean_exit(second)
        assert "No space left on device" in second.output()
        # The file on disk is untouched (atomic writes) and no temporary file is left over.
        assert (state_dir / "state.json").read_bytes() == saved
        assert sorted(p.name for p in state_dir.iterdir()) == ["filler", "state.json"]


# -- SIGTERM during a smoke probe: the canary is deleted ----------------------------------


@pytest.fixture
def stale_gateway(make_cluster: Callable[..., EtcdCluster], tmp_path: Path
                  ) -> Iterator[tuple[EtcdCluster, dict[str, Any], Path]]:
    """A simulated gateway that accepts admin writes but never applies them (stale)."""
    cluster = make_cluster(size=1, name_prefix="stale")
    key = secret_file(tmp_path / "admin-key", "stale-gateway-admin-key")
    with gateway_sim_process(
        tmp_path, "--etcd", cluster.endpoints[0], "--name", "gw-stale",
        "--admin-key", "stale-gateway-admin-key", "--workers", "1", "--fault", "stale",
    ) as info:
        yield cluster, info, key


def canaries(cluster: EtcdCluster) -> list[str]:
    return [k for k, _ in cluster.get("/apisix/routes/", prefix=True) if "watchdog-canary" in k]


@pytest.mark.fault(
    "SIGTERM to the daemon during a smoke probe (a gateway that never serves the canary)",
    reports="exit 0; no `watchdog-canary-*` key left in etcd",
    within="exit within 10 s (asserted)")
@pytest.mark.fault(
    "SIGTERM to `watchdog smoke` mid-propagation",
    reports="exit 1; JSON `interrupted: true`, `canary_deleted: true`, `interrupted by a signal`; "
            "no canary left",
    within="exit within 10 s (asserted)")
def test_sigterm_during_smoke_deletes_the_canary(
    stale_gateway: tuple[EtcdCluster, dict[str, Any], Path], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess],
) -> None:
    cluster, sim, key = stale_gateway
    config = write_config({
        "etcd": {"endpoints": cluster.endpoints, **FAST},
        "gateways": [{"name": "gw-stale", "admin_url": sim["admin_url"],
                      "admin_key_file": str(key), "data_url": sim["data_url"]}],
        "smoke": {"interval": "5m", "timeout": "30s"},
    })
    # The daemon's periodic smoke probe.
    proc = run_watchdog(config)
    wait_until(lambda: canaries(cluster), timeout=10, what="canary written by the daemon")
    assert_serving(proc)
    assert_clean_exit(proc, within=10)
    assert canaries(cluster) == [], "the daemon left its canary behind"
    assert "canary not deleted" not in proc.output()

    # The deploy gate, `watchdog smoke`.
    gate = subprocess.Popen(
        [sys.executable, "-m", "watchdog", "smoke", "--config", str(config), "--timeout", "30",
         "--output", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, cwd=REPO, text=True)
    try:
        wait_until(lambda: canaries(cluster), timeout=10, what="canary written by the gate")
        gate.send_signal(signal.SIGTERM)
        out, err = gate.communicate(timeout=10)
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait(timeout=5)
    assert gate.returncode == 1, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["ok"] is False
    [result] = report["gateways"]
    assert result["canary_deleted"] is True, result
    assert "interrupted by a signal" in result["message"]
    assert canaries(cluster) == []
