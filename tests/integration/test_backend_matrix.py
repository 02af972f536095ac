"""The backend matrix: watchdog's own clients against every real etcd and etcd shim.

Each test records what the server did into the compatibility results (tests/backends.py),
from which scripts/servers/compat_report.py renders docs/compatibility.md. A server that
does not serve something is checked for that (it must refuse it, not hang or answer a
wrong shape). Where watchdog itself misbehaves on a server, the case is an xfail that
names what was observed (strict: the fix turns it into a failure to remove the mark).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import etcd3
import pytest

from tests.alertcheck import Target, alert_names, firing
from tests.backends import (
    APISIX_PREFIX,
    READER,
    READER_PASSWORD,
    RUNNABLE,
    Backend,
    CompatResults,
    Server,
    ServerPool,
)
from tests.conftest import WatchdogProcess
from tests.helpers import all_samples, http_get, require_tool, sample, wait_until
from watchdog.etcd.client import EtcdHttp, EtcdStatus, RangeCount, b64
from watchdog.etcd.probes import GrpcProber
from watchdog.etcd.promtext import parse_peer_metrics
from watchdog.lab.storm import Storm
from watchdog.results import ProbeResult, Reason

pytestmark = pytest.mark.integration

# Small enough to keep each stall test cheap, large enough to be a real limit.
STREAMS = 20
# etcd before 3.5.5 / 3.4.20 has no flag: over TLS the limit is net/http's HTTP/2 default.
DEFAULT_TLS_LIMIT = 250
PROBE_TIMEOUT = 3.0
STALL_TIMEOUT = 1.5
ROUTE_KEY = "/apisix/routes/matrix"
OTHER_KEY = "/other/matrix"


# Where watchdog itself mishandles a server today: (feature, backend kind) -> what was
# observed. These cases are strict xfails; the product fix makes them pass, and then the
# entry goes.
# (feature, backend kind) -> the defect a strict xfail records. Empty: every defect the
# matrix found on antietcd and kine (JSON range and status, gRPC reasons, the daemon's
# peer_up) is fixed in watchdog/etcd/.
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


def matrix(feature: str, backends: list[Backend] = RUNNABLE) -> list[Any]:
    """The backends as parameters, a known defect marked as a strict xfail."""
    out = []
    for backend in backends:
        defect = KNOWN_DEFECTS.get((feature, backend.kind))
        marks = [pytest.mark.xfail(strict=True, reason=defect)] if defect else []
        out.append(pytest.param(backend, id=backend.name, marks=marks))
    return out


def verdict(feature: str, backend: Backend, ok: bool) -> str:
    if ok:
        return "yes"
    return "xfail" if (feature, backend.kind) in KNOWN_DEFECTS else "fail"


def describe(result: ProbeResult) -> str:
    if result.ok:
        return f"ok in {result.duration * 1000:.0f} ms"
    status = f" HTTP {result.status}" if result.status else ""
    return f"{result.reason}{status}: {result.detail}"[:200]


async def json_call(server: Server, call: Callable[[EtcdHttp], Awaitable[ProbeResult]],
                    *, reader: bool = False) -> ProbeResult:
    user, password = (READER, READER_PASSWORD) if reader else (None, None)
    async with EtcdHttp([server.client_url], ca_file=server.ca_file, cert_file=server.cert_file,
                        key_file=server.key_file, username=user, password=password) as client:
        return await call(client)


async def grpc_call(server: Server, call: Callable[[GrpcProber], Awaitable[ProbeResult]],
                    *, reader: bool = False) -> ProbeResult:
    user, password = (READER, READER_PASSWORD) if reader else (None, None)
    prober = GrpcProber(ca_file=server.ca_file, cert_file=server.cert_file,
                        key_file=server.key_file, username=user, password=password)
    try:
        return await call(prober)
    finally:
        prober.close()


def seed(server: Server) -> None:
    """One key under the APISIX prefix and one outside it, written as root."""
    backend = server.backend
    if backend.kind == "etcd":
        assert server.cluster is not None
        server.cluster.put(ROUTE_KEY, "{}")
        server.cluster.put(OTHER_KEY, "x")
    elif backend.kind == "antietcd":
        for key, value in ((ROUTE_KEY, "{}"), (OTHER_KEY, "x")):
            put = {"key": b64(key), "value": b64(value)}
            # A 503 (no quorum) while a loaded machine delays raft heartbeats: retry.
            wait_until(lambda: server.http("POST", "/v3/kv/put", put)[0] == 200,  # noqa: B023
                       timeout=15, interval=0.3, what=f"antietcd accepting a put of {key}")
    else:  # kine: gRPC only, and only its create-if-absent transaction shape
        url = urllib.parse.urlsplit(server.grpc_endpoint)
        client = etcd3.client(url.hostname, url.port, ca_cert=server.ca_file, timeout=5)
        try:
            for key, value in ((ROUTE_KEY, "{}"), (OTHER_KEY, "x")):
                client.transaction(compare=[client.transactions.mod(key) == 0],
                                   success=[client.transactions.put(key, value)], failure=[])
        finally:
            client.close()


def metric_watch_streams(server: Server) -> float | None:
    assert server.metrics_url is not None
    status, body = server.http("GET", "", base=server.metrics_url)
    assert status == 200, body[:200]
    return parse_peer_metrics(body).watch_streams


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(predicate)
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last {last!r})")


async def json_recovers(server: Server, read: Callable[[EtcdHttp], Awaitable[ProbeResult]],
                        timeout: float) -> bool:
    """Whether JSON reads answer again within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await json_call(server, read)).ok:
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.fixture(scope="module", autouse=True)
def _stop_servers_after_this_module(server_pool: ServerPool) -> Iterator[None]:
    """About twenty idle servers would otherwise run beside the rest of the suite."""
    yield
    server_pool.close()


# -- smoke: every server ------------------------------------------------------------


@pytest.fixture(scope="session")
def seeded() -> set[str]:
    """Backends whose plain server has had its keys written (once per run)."""
    return set()


def plain(server_pool: ServerPool, seeded: set[str], backend: Backend) -> Server:
    server = server_pool.get(backend)
    if backend.name not in seeded:
        seed(server)
        seeded.add(backend.name)
    return server


@pytest.mark.parametrize("backend", matrix("starts"))
def test_starts(backend: Backend, server_pool: ServerPool, seeded: set[str],
                compat: CompatResults) -> None:
    try:
        server = plain(server_pool, seeded, backend)
    except Exception as exc:
        compat.record(backend, "starts", "fail", str(exc)[:200])
        raise
    shape = "single node" if server.members == 1 else f"{server.members} members"
    compat.record(backend, "starts", "yes", f"{shape} on loopback")


@pytest.mark.parametrize("backend", matrix("version"))
def test_version(backend: Backend, server_pool: ServerPool, seeded: set[str],
                 compat: CompatResults) -> None:
    server = plain(server_pool, seeded, backend)
    try:
        status, body = server.http("GET", "/version")
        answer = f"HTTP {status} {body[:120].decode(errors='replace')}"
    except OSError as exc:
        status, answer = None, f"no HTTP answer ({type(exc).__name__})"
    if backend.kind == "etcd":
        data = json.loads(body)
        assert status == 200 and data["etcdserver"] == backend.version, answer
        assert ("storage" in data) == (backend.version >= "3.6"), answer
        compat.record(backend, "version", "yes", ", ".join(sorted(data)))
    else:
        assert status != 200, f"{backend.name} was expected to have no /version: {answer}"
        compat.record(backend, "version", "no", answer)


@pytest.mark.parametrize("backend", matrix("json_range"))
async def test_json_range(backend: Backend, server_pool: ServerPool, seeded: set[str],
                          compat: CompatResults) -> None:
    server = plain(server_pool, seeded, backend)
    result = await json_call(server, lambda c: c.range_count(server.client_url, APISIX_PREFIX,
                                                             PROBE_TIMEOUT, prefix=True))
    if not backend.json_gateway:
        compat.record(backend, "json_range", "no", describe(result))
        assert not result.ok
        return
    counted = result.body.count if result.ok and isinstance(result.body, RangeCount) else None
    compat.record(backend, "json_range", verdict("json_range", backend, counted == 1),
                  f"{describe(result)}, count {counted} (1 key)")
    assert result.ok, describe(result)
    assert counted == 1


@pytest.mark.parametrize("backend", matrix("json_status"))
async def test_json_status(backend: Backend, server_pool: ServerPool, seeded: set[str],
                           compat: CompatResults) -> None:
    server = plain(server_pool, seeded, backend)
    result = await json_call(server, lambda c: c.status(server.client_url, PROBE_TIMEOUT))
    if not backend.json_gateway:
        compat.record(backend, "json_status", "no", describe(result))
        assert not result.ok
        return
    compat.record(backend, "json_status", verdict("json_status", backend, result.ok),
                  describe(result))
    assert result.ok, describe(result)
    assert isinstance(result.body, EtcdStatus)
    if backend.kind == "etcd":
        assert result.body.version == backend.version


@pytest.mark.parametrize("backend", matrix("grpc_range"))
async def test_grpc_range(backend: Backend, server_pool: ServerPool, seeded: set[str],
                          compat: CompatResults) -> None:
    server = plain(server_pool, seeded, backend)
    result = await grpc_call(server, lambda p: p.range_count(server.grpc_endpoint, APISIX_PREFIX,
                                                             PROBE_TIMEOUT, prefix=True))
    if not backend.grpc:
        # Not served: said as a protocol mismatch, not as a dead or misconfigured peer.
        honest = not result.ok and result.reason is Reason.PROTOCOL
        compat.record(backend, "grpc_range", "no" if honest else verdict("grpc_range", backend, False),
                      describe(result))
        assert not result.ok
        assert result.reason is Reason.PROTOCOL, describe(result)
        return
    counted = result.body.count if result.ok and isinstance(result.body, RangeCount) else None
    compat.record(backend, "grpc_range", verdict("grpc_range", backend, counted == 1),
                  f"{describe(result)}, count {counted} (1 key)")
    assert result.ok, describe(result)
    assert counted == 1


@pytest.mark.parametrize("backend", matrix("metrics"))
async def test_metrics(backend: Backend, server_pool: ServerPool, seeded: set[str],
                       compat: CompatResults) -> None:
    server = plain(server_pool, seeded, backend)
    base = (server.metrics_url or server.client_url + "/metrics").removesuffix("/metrics")
    async with EtcdHttp([base], ca_file=server.ca_file) as client:
        result, page = await client.metrics_page(base, PROBE_TIMEOUT)
    if server.metrics_url is None:
        compat.record(backend, "metrics", "no", f"{describe(result)} on the client port")
        assert not result.ok
        return
    text = (page or b"").decode(errors="replace")
    family = {"etcd": "etcd_server_has_leader", "kine": "kine_sql_total"}[backend.kind]
    where = "client port" if backend.metrics == "client" else "own port (--metrics-bind-address)"
    ok = result.ok and family in text
    compat.record(backend, "metrics", verdict("metrics", backend, ok),
                  f"{describe(result)} on its {where}")
    assert ok, describe(result)


@pytest.mark.parametrize("backend", matrix("watch_streams"))
async def test_watch_streams_match_long_polls(backend: Backend, server_pool: ServerPool,
                                              seeded: set[str], compat: CompatResults) -> None:
    if not backend.http_watch or backend.kind != "etcd":
        compat.record(backend, "watch_streams", "no",
                      "no HTTP watch and no watch-stream metric" if backend.kind == "antietcd"
                      else "no JSON watch and no watch-stream metric")
        pytest.skip(f"{backend.name} has no HTTP watch long-polls and no stream count")
    server = plain(server_pool, seeded, backend)
    baseline = metric_watch_streams(server)
    assert baseline is not None
    opened = 3
    storm = Storm(server.client_url, ca_file=server.ca_file)
    try:
        await storm.start(opened)
        await wait_for(lambda: storm.created >= opened, 10, f"{opened} watches created")
        seen = await wait_for(lambda: metric_watch_streams(server) == baseline + opened, 10,
                              f"etcd_debugging_mvcc_watch_stream_total = {baseline + opened}")
        compat.record(backend, "watch_streams", "yes",
                      f"{opened} long-polls -> etcd_debugging_mvcc_watch_stream_total "
                      f"{baseline:g} -> {baseline + opened:g}")
        assert seen
    finally:
        await storm.stop()
    await wait_for(lambda: metric_watch_streams(server) == baseline, 10,
                   "streams back to the baseline after the long-polls closed")


# -- TLS -------------------------------------------------------------------------------


def tls_server(server_pool: ServerPool, backend: Backend) -> Server:
    """The backend's TLS server; on etcd the same one the TLS stall test uses."""
    streams = STREAMS if backend.max_streams_flag else None
    return server_pool.get(backend, tls=True, max_streams=streams)


@pytest.mark.parametrize("backend", matrix("tls"))
async def test_tls(backend: Backend, server_pool: ServerPool, compat: CompatResults) -> None:
    server = tls_server(server_pool, backend)
    assert server.client_url.startswith("https://")
    seen = []
    ok = True
    if backend.json_gateway:
        result = await json_call(server, lambda c: c.range_count(server.client_url, APISIX_PREFIX,
                                                                 PROBE_TIMEOUT, prefix=True))
        seen.append(f"JSON {describe(result)}")
        ok = ok and result.ok
    if backend.grpc:
        result = await grpc_call(server, lambda p: p.range_count(server.grpc_endpoint,
                                                                 APISIX_PREFIX, PROBE_TIMEOUT,
                                                                 prefix=True))
        seen.append(f"gRPC {describe(result)}")
        ok = ok and result.ok
    if server.cert_file:
        seen.append("mutual TLS (antietcd checks its peers by client certificate)")
    compat.record(backend, "tls", verdict("tls", backend, ok), "; ".join(seen))
    assert ok, seen


# -- auth: root plus a reader of the APISIX prefix ----------------------------------------


@pytest.mark.parametrize("backend", matrix("auth_reader"))
async def test_auth_reader(backend: Backend, server_pool: ServerPool,
                           compat: CompatResults) -> None:
    if not backend.etcd_auth:
        for feature in ("auth_reader", "auth_status", "auth_member_list"):
            compat.record(backend, feature, "no", "no etcd users, roles or tokens")
        pytest.skip(f"{backend.name} has no etcd auth")
    server = server_pool.get(backend, auth=True)
    assert server.cluster is not None
    server.cluster.put(ROUTE_KEY, "{}")
    server.cluster.put(OTHER_KEY, "x")
    url = server.client_url
    json_in = await json_call(server, lambda c: c.range_count(url, APISIX_PREFIX, PROBE_TIMEOUT,
                                                              prefix=True), reader=True)
    json_out = await json_call(server, lambda c: c.range_count(url, "/other/", PROBE_TIMEOUT,
                                                               prefix=True), reader=True)
    grpc_in = await grpc_call(server, lambda p: p.range_count(url, APISIX_PREFIX, PROBE_TIMEOUT,
                                                              prefix=True), reader=True)
    grpc_out = await grpc_call(server, lambda p: p.range_count(url, "/other/", PROBE_TIMEOUT,
                                                               prefix=True), reader=True)
    status = await json_call(server, lambda c: c.status(url, PROBE_TIMEOUT), reader=True)
    members = await json_call(server, lambda c: c.member_list_probe(url, PROBE_TIMEOUT),
                              reader=True)
    reads_prefix = json_in.ok and grpc_in.ok
    refused_elsewhere = json_out.reason is Reason.AUTH and grpc_out.reason is Reason.AUTH
    compat.record(backend, "auth_reader", "yes" if reads_prefix and refused_elsewhere else "fail",
                  f"/apisix/: JSON {describe(json_in)}, gRPC {describe(grpc_in)}; "
                  f"/other/: JSON {describe(json_out)}, gRPC {describe(grpc_out)}")
    compat.record(backend, "auth_status", "yes" if status.ok else "no", describe(status))
    compat.record(backend, "auth_member_list", "yes" if members.ok else "no", describe(members))
    assert reads_prefix, (describe(json_in), describe(grpc_in))
    assert refused_elsewhere, (describe(json_out), describe(grpc_out))
    # The pinned patch of every line lets any authenticated user call Status and MemberList.
    assert status.ok, describe(status)
    assert members.ok, describe(members)


# -- the stall: N+5 JSON watch long-polls at a stream limit of N -------------------------


def stall_limit(backend: Backend, tls: bool) -> int | None:
    if backend.max_streams_flag:
        return STREAMS
    if backend.kind == "etcd" and tls:
        return DEFAULT_TLS_LIMIT
    return None


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("backend", matrix("stall"))
async def test_stall(backend: Backend, tls: bool, server_pool: ServerPool,
                     compat: CompatResults) -> None:
    feature = "stall_tls" if tls else "stall_plain"
    if backend.kind != "etcd":
        compat.record(backend, feature, "no", "no JSON watch long-polls through a gRPC gateway")
        pytest.skip(f"{backend.name} has no JSON gateway in front of gRPC to stall")
    limit = stall_limit(backend, tls)
    if limit is None:
        compat.record(backend, feature, "no",
                      "no --max-concurrent-streams before 3.5.5; plain HTTP has no limit")
        pytest.skip(f"{backend.name} plain has no stream limit to reach")
    server = server_pool.get(backend, tls=tls,
                             max_streams=STREAMS if backend.max_streams_flag else None)
    url = server.client_url
    read = lambda c: c.range_count(url, APISIX_PREFIX, STALL_TIMEOUT, prefix=True)  # noqa: E731
    before = await json_call(server, read)
    assert before.ok, describe(before)
    storm = Storm(url, ca_file=server.ca_file)
    try:
        await storm.start(limit + 5)
        await wait_for(lambda: storm.created >= limit, 30, f"{limit} watches created")
        await asyncio.sleep(0.5)  # the five beyond the limit had time to be created too
        created = storm.created
        streams = metric_watch_streams(server)
        stalled = await json_call(server, read)
        grpc = await grpc_call(server, lambda p: p.range_count(url, APISIX_PREFIX, PROBE_TIMEOUT,
                                                               prefix=True))
    finally:
        await storm.stop()
    recovered = await json_recovers(server, read, 15)
    detected = (created == limit and streams == limit and not stalled.ok
                and stalled.reason is Reason.TIMEOUT and grpc.ok)
    compat.record(backend, feature, "yes" if detected and recovered else "fail",
                  f"limit {limit}: {created} of {limit + 5} watches created, {streams:g} streams; "
                  f"JSON range {describe(stalled)}; gRPC range {describe(grpc)}; recovered")
    assert created == limit, f"watches plateau at the limit, saw {created}"
    assert streams == limit
    assert not stalled.ok and stalled.reason is Reason.TIMEOUT, describe(stalled)
    assert grpc.ok, describe(grpc)
    assert recovered, "JSON reads answer again once the watches are gone"


# -- the daemon on each server (etcd: as a read-only non-root user) -------------------------


async def watch_as_reader(server: Server, opened: int) -> Storm:
    status, body = server.http("POST", "/v3/auth/authenticate",
                               {"name": READER, "password": READER_PASSWORD})
    assert status == 200, body
    storm = Storm(server.client_url, ca_file=server.ca_file, token=json.loads(body)["token"])
    await storm.start(opened)
    await wait_for(lambda: storm.created >= opened, 10, f"{opened} watches created")
    return storm


# The trip wire in the daemon runs: armed after two seconds, cleared after one; a surge of
# SURGE watches over BASELINE trips it (factor 2, at least MIN_STREAMS streams).
BASELINE = 3
SURGE = 10
MIN_STREAMS = 5
PAGE_GAP = 1.0  # seconds between the healthy run's scrapes (promtool's interval)
PAGES = 3
# The etcd line whose surge pages must make the alert check fire (its positive control).
CONTROL = max((b for b in RUNNABLE if b.kind == "etcd"),
              key=lambda b: tuple(int(n) for n in b.version.split(".")))


async def scrape_pages(proc: WatchdogProcess, server: Server, count: int) -> list[Target]:
    """`count` scrapes, PAGE_GAP apart, of watchdog and of the server's own /metrics page."""
    own = Target("watchdog", "watchdog:9817")
    peer = Target(server.backend.kind, "server:2379") if server.metrics_url else None
    for i in range(count):
        if i:
            await asyncio.sleep(PAGE_GAP)
        own.pages.append(await asyncio.to_thread(proc.metrics))
        if peer is not None:
            assert server.metrics_url is not None
            status, body = await asyncio.to_thread(server.http, "GET", "", None, 5.0, None,
                                                   server.metrics_url)
            assert status == 200, body[:200]
            peer.pages.append(body.decode())
    return [own] + ([peer] if peer else [])


@pytest.mark.parametrize("backend", matrix("daemon"))
async def test_daemon(backend: Backend, server_pool: ServerPool, seeded: set[str],
                      compat: CompatResults, tmp_path: Path, write_config: Callable[..., Path],
                      run_watchdog: Callable[..., WatchdogProcess]) -> None:
    """`watchdog run` on the server: the peer is up with its version, its watch streams
    equal the server's own count (etcd, with the user `watchdog` that may only read
    /apisix/), and no probe is counted as failed. Then, over the same healthy run, no rule
    in alerts/ fires (promtool over the scraped pages), and the trip wire: a watch surge
    trips it and it clears (etcd), or it is absent and "not available" (no watch count)."""
    promtool = require_tool("promtool")
    etcd: dict[str, Any] = {"interval": "1s", "timeout": "800ms",
                            "probe_key": "/apisix/watchdog/probe"}
    if backend.etcd_auth:
        server = server_pool.get(backend, auth=True)
        password = tmp_path / "etcd-password"
        password.write_text(READER_PASSWORD)
        password.chmod(0o600)
        etcd["auth"] = {"username": READER, "password_file": str(password)}
    else:
        server = plain(server_pool, seeded, backend)
    etcd["endpoints"] = [server.client_url]
    if backend.metrics == "separate":  # kine: its own page, named in the config
        etcd["metrics_urls"] = {server.client_url: server.metrics_url}
    # The baseline first: a steady state learned from polls before it would be too low
    # for the wire to clear once the surge is gone.
    storm = await watch_as_reader(server, BASELINE) if backend.kind == "etcd" else None
    try:
        proc = run_watchdog(write_config({
            "etcd": etcd,
            "tripwire": {"warmup": "2s", "hold": "1s", "min_streams": MIN_STREAMS}}))
        def polled() -> str | None:
            text = proc.metrics()
            polls = max((v for _, v in all_samples(
                text, "watchdog_etcd_probe_duration_seconds_count")), default=0)
            if polls < 3:
                return None
            if storm is not None and sample(text, "watchdog_etcd_watch_streams") != \
                    metric_watch_streams(server):
                return None
            return text

        text = await wait_for(polled, 30, "three polls (etcd: streams = etcd's own)")
        check_daemon(backend, server, text, compat)
        if storm is not None:
            await wait_for(lambda: sample(proc.metrics(),
                                          "watchdog_etcd_watch_streams_steady_state"),
                           15, "the trip wire armed (steady state learned)")
        healthy = await scrape_pages(proc, server, PAGES)
        fired = await asyncio.to_thread(firing, healthy, PAGE_GAP, promtool, tmp_path)
        jobs = " and ".join(f"{t.job}'s" for t in healthy)
        compat.record(backend, "no_alerts", "fail" if fired else "yes",
                      "; ".join(fired)[:300] if fired else
                      f"{PAGES} scrapes of {jobs} /metrics {PAGE_GAP:g}s apart, carried on "
                      f"to 20 min; none of {len(alert_names())} alerts fires")
        assert not fired, fired
        if storm is None:
            await check_no_tripwire(backend, proc, compat)
        else:
            await check_tripwire(backend, server, proc, compat, healthy, promtool, tmp_path)
    finally:
        if storm is not None:
            await storm.stop()


def check_daemon(backend: Backend, server: Server, text: str, compat: CompatResults) -> None:
    up = sample(text, "watchdog_etcd_peer_up")
    info = [labels for labels, _ in all_samples(text, "watchdog_etcd_peer_info")]
    version = info[0].get("version") if len(info) == 1 else None
    failures = {",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "peer"): value
                for labels, value in all_samples(text, "watchdog_etcd_probe_failures_total")
                if value}
    streams = sample(text, "watchdog_etcd_watch_streams")
    expected_version = backend.version if backend.kind == "etcd" else None
    # The `backend` label comes with backend recognition: where it is exported, it must
    # name the server's kind.
    named = info[0].get("backend", backend.kind) if len(info) == 1 else None
    page_up, fds = sample(text, "watchdog_etcd_metrics_up"), sample(text, "watchdog_etcd_open_fds")
    # Its page answers where it has one (kine's own port, named by etcd.metrics_urls).
    page_ok = (page_up is None and fds is None) if backend.metrics == "none" else \
        (page_up == 1 and bool(fds))
    ok = (up == 1 and not failures and named == backend.kind and page_ok
          and (expected_version is None or version == expected_version))
    compat.record(backend, "daemon", verdict("daemon", backend, ok),
                  f"peer_up {up}, version {version!r}, backend {named!r}, watch streams "
                  f"{streams}, metrics_up {page_up}, open fds {fds}, probe failures "
                  f"{failures or 'none'}")
    assert page_ok, (page_up, fds)
    assert up == 1
    assert not failures, failures
    assert named == backend.kind, info
    if expected_version is not None:
        assert version == expected_version, info


async def check_no_tripwire(backend: Backend, proc: WatchdogProcess,
                            compat: CompatResults) -> None:
    """No watch count: the wire's series are absent and the page says "not available"."""
    text = await asyncio.to_thread(proc.metrics)
    present = [name for name in ("watchdog_etcd_watch_streams", "watchdog_etcd_watch_tripwire",
                                 "watchdog_etcd_watch_streams_steady_state")
               if all_samples(text, name)]
    status, page = await asyncio.to_thread(http_get, proc.url + "/")
    said = f"not available on {backend.kind}" in page
    warming = "warming up" in page
    compat.record(backend, "tripwire", "no" if not present and said and not warming else "fail",
                  f"no watch count: series {present or 'absent'}; status page says "
                  f"{'not available on ' + backend.kind if said else 'no not-available'}"
                  f"{', warming up' if warming else ''}")
    assert status == 200
    assert not present, present
    assert said and not warming, page[:2000]


async def check_tripwire(backend: Backend, server: Server, proc: WatchdogProcess,
                         compat: CompatResults, healthy: list[Target], promtool: str,
                         workdir: Path) -> None:
    """SURGE more watches trip the wire (and the alert over the pages); closed, it clears."""
    steady = sample(proc.metrics(), "watchdog_etcd_watch_streams_steady_state")
    surge = await watch_as_reader(server, SURGE)
    started = time.monotonic()
    try:
        def tripped() -> str | None:
            text = proc.metrics()
            return text if sample(text, "watchdog_etcd_watch_tripwire") == 1 else None

        text = await wait_for(tripped, 10, "the trip wire tripped")
        tripped_after = time.monotonic() - started
        fired: list[str] | None = None
        if backend is CONTROL:
            # The same check that found the healthy run silent sees the surge (once: it
            # costs a promtool run).
            for target in healthy:
                target.pages.append(text if target.job == "watchdog" else target.pages[-1])
            fired = await asyncio.to_thread(firing, healthy, PAGE_GAP, promtool, workdir)
    finally:
        await surge.stop()
    started = time.monotonic()

    def wire() -> tuple[float | None, ...]:
        text = proc.metrics()
        ours = (sample(text, f"watchdog_etcd_watch_{name}")
                for name in ("tripwire", "streams", "streams_steady_state"))
        return (*ours, metric_watch_streams(server))

    seen: list[tuple[float | None, ...]] = []
    try:
        await wait_for(lambda: seen.append(wire()) or seen[-1][0] == 0, 15,
                       "the trip wire cleared after the surge")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; wire, streams, steady state, etcd's count: "
                             f"{seen[-1] if seen else None}") from None
    cleared_after = time.monotonic() - started
    seen = fired is None or any(f.startswith("EtcdWatchConnectionsTripWire") for f in fired)
    alert = "" if fired is None else \
        f" (EtcdWatchConnectionsTripWire over the pages: {'fires' if seen else 'silent'})"
    compat.record(backend, "tripwire", "yes" if seen else "fail",
                  f"steady {steady:g}; {SURGE} more watches tripped it in {tripped_after:.1f}s"
                  f"{alert}; closed, it cleared in {cleared_after:.1f}s")
    assert seen, fired
