"""JSON-gateway and gRPC probes against real etcd members on loopback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import trustme

from tests.helpers import sample
from watchdog.etcd.client import EtcdCallError, EtcdHttp, EtcdStatus, RangeCount, b64, prefix_end
from watchdog.etcd.exposure import STREAM_LIMIT, headroom, stream_limit_exposed
from watchdog.etcd.probes import GrpcProber
from watchdog.etcd.sockets import count_connections
from watchdog.lab.cluster import EtcdCluster
from watchdog.results import ProbeResult, Reason

pytestmark = pytest.mark.integration

PROBE_KEY = "/watchdog/probe"
WATCH_PREFIX = "/apisix/routes/"


def tls_args(cluster: EtcdCluster) -> dict[str, str]:
    assert cluster.tls_files is not None
    return {"ca_file": str(cluster.tls_files.ca_file)}


@pytest.fixture
async def make_http() -> AsyncIterator[Callable[..., EtcdHttp]]:
    made: list[EtcdHttp] = []

    def make(**kwargs: object) -> EtcdHttp:
        client = EtcdHttp(**kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def make_grpc() -> Iterator[Callable[..., GrpcProber]]:
    made: list[GrpcProber] = []

    def make(**kwargs: object) -> GrpcProber:
        prober = GrpcProber(**kwargs)  # type: ignore[arg-type]
        made.append(prober)
        return prober

    yield make
    for prober in made:
        prober.close()


# -- happy paths ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["etcd_single", "etcd_tls"])
async def test_range_and_status_both_apis(
    which: str, request: pytest.FixtureRequest, make_http, make_grpc
) -> None:
    cluster: EtcdCluster = request.getfixturevalue(which)
    cluster.put(PROBE_KEY, "1")
    cluster.put(PROBE_KEY + "/a", "2")
    kwargs = tls_args(cluster) if cluster.tls else {}
    http, grpc = make_http(**kwargs), make_grpc(**kwargs)
    url = cluster.endpoints[0]

    json_range = await http.range_count(url, PROBE_KEY, timeout=2)
    json_prefix = await http.range_count(url, PROBE_KEY, timeout=2, prefix=True)
    grpc_range = await grpc.range_count(url, PROBE_KEY, timeout=2)
    grpc_prefix = await grpc.range_count(url, PROBE_KEY, timeout=2, prefix=True)
    for result, count in ((json_range, 1), (json_prefix, 2), (grpc_range, 1), (grpc_prefix, 2)):
        assert result.ok, result
        assert result.op == "range"
        assert isinstance(result.body, RangeCount) and result.body.count == count
        assert result.revision is not None and result.revision >= 2
    assert json_range.api == "json" and grpc_range.api == "grpc"
    assert {"connect", "processing", "transfer"} <= set(json_range.phases)
    assert ("tls" in json_range.phases) is cluster.tls
    assert json_range.body.member_id == grpc_range.body.member_id

    json_status = await http.status(url, timeout=2)
    grpc_status = await grpc.status(url, timeout=2)
    for result in (json_status, grpc_status):
        assert result.ok, result
        assert result.op == "status"
        info = result.body
        assert isinstance(info, EtcdStatus)
        assert info.version == cluster.version
        assert info.is_leader and info.db_size > 0 and info.raft_term >= 1
        assert result.revision == info.revision and info.revision >= 2
    assert json_status.body.member_id == grpc_status.body.member_id
    assert json_status.body.cluster_id == grpc_status.body.cluster_id != ""
    assert json_status.body.db_size_in_use is not None  # only the JSON answer carries it


async def test_member_list_of_three(etcd_cluster3: EtcdCluster, make_http) -> None:
    http = make_http(urls=etcd_cluster3.endpoints)
    members = await http.member_list(http.urls[1], timeout=2)
    by_name = {m.name: m for m in members}
    assert set(by_name) == {m.name for m in etcd_cluster3.members}
    for member in etcd_cluster3.members:
        found = by_name[member.name]
        assert found.client_urls == (member.client_url,)
        assert found.peer_urls == (member.peer_url,)
        assert not found.is_learner
        assert int(found.id) == int(found.id_hex, 16)
    probe = await http.member_list_probe(http.urls[0], timeout=2)
    assert probe.ok and probe.op == "member_list" and len(probe.body) == 3
    status = await http.status(http.urls[0], timeout=2)
    assert members.cluster_id == probe.body.cluster_id == status.body.cluster_id != ""


async def test_metrics_page_is_capped(etcd_single: EtcdCluster, make_http) -> None:
    http = make_http()
    result, page = await http.metrics_page(etcd_single.endpoints[0], timeout=2)
    assert result.ok and result.api == "metrics" and result.body is None
    assert page is not None and b"etcd_server_has_leader" in page
    small, none = await http.metrics_page(etcd_single.endpoints[0], timeout=2, max_bytes=1000)
    assert none is None
    assert small.reason is Reason.PROTOCOL and small.detail == "page over 1000 bytes"


# -- auth --------------------------------------------------------------------------

SECRET = "Sup3r-S3cret-Root-Pw"
WRONG = "Wr0ng-Guess-Pw-4711"


@pytest.fixture
def auth_cluster(make_cluster: Callable[..., EtcdCluster]) -> EtcdCluster:
    # A 1 s token TTL lets the test see a real expiry.
    return make_cluster(size=1, auth=True, root_password=SECRET,
                        extra_args=("--auth-token-ttl", "1"), name_prefix="auth")


def assert_no_secret(secret: str, *things: object) -> None:
    for thing in things:
        assert secret not in repr(thing)
        if isinstance(thing, ProbeResult):
            for value in (thing.detail, thing.body, thing.phases, thing.api, thing.op):
                assert secret not in repr(value)


@pytest.mark.fault(
    "etcd wrong password or no credentials (client level)",
    reports="`auth` on range and status through both APIs (`authenticate: authentication failed`); "
            "no secret in any result or log",
    within="the first call")
async def test_auth_both_apis(
    auth_cluster: EtcdCluster, make_http, make_grpc, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = auth_cluster.endpoints[0]
    http = make_http(username="root", password=SECRET)
    grpc = make_grpc(username="root", password=SECRET)
    good = [
        await http.range_count(url, PROBE_KEY, timeout=2),
        await http.status(url, timeout=2),
        await grpc.range_count(url, PROBE_KEY, timeout=2),
        await grpc.status(url, timeout=2),
    ]
    assert all(r.ok for r in good), good

    anonymous = await make_http().range_count(url, PROBE_KEY, timeout=2)
    assert anonymous.reason is Reason.AUTH, anonymous

    bad_http = make_http(username="root", password=WRONG)
    bad_grpc = make_grpc(username="root", password=WRONG)
    bad = [
        await bad_http.range_count(url, PROBE_KEY, timeout=2),
        await bad_http.status(url, timeout=2),
        await bad_grpc.range_count(url, PROBE_KEY, timeout=2),
        await bad_grpc.status(url, timeout=2),
    ]
    for result in bad:
        assert not result.ok and result.reason is Reason.AUTH, result
        assert result.body is None
    assert bad[0].detail == "authenticate: authentication failed"

    assert_no_secret(SECRET, http, grpc, *good, *bad)
    assert_no_secret(WRONG, bad_http, bad_grpc, *bad)
    assert SECRET not in caplog.text and WRONG not in caplog.text


@pytest.mark.fault(
    "an etcd token etcd does not know, then a real expiry (TTL 1 s)",
    reports="the call authenticates again by itself and passes, on both APIs",
    within="within the call")
async def test_token_refresh(auth_cluster: EtcdCluster, make_http, make_grpc) -> None:
    url = auth_cluster.endpoints[0]
    http = make_http(username="root", password=SECRET)
    grpc = make_grpc(username="root", password=SECRET)
    assert (await http.range_count(url, PROBE_KEY, timeout=2)).ok
    assert (await grpc.range_count(url, PROBE_KEY, timeout=2)).ok

    # A token etcd does not know: the call authenticates again by itself. (A forged
    # simple token "<x>.<n>" with n above the raft index would make etcd wait for that
    # index instead of answering, so the garbage has no index.)
    http._tokens[url] = "garbage"
    refreshed = await http.range_count(url, PROBE_KEY, timeout=2)
    assert refreshed.ok, refreshed
    assert http._tokens[url] != "garbage"

    # A real expiry (TTL 1 s, checked each second) on both APIs.
    await asyncio.sleep(2.5)
    assert (await http.range_count(url, PROBE_KEY, timeout=2)).ok
    after = await grpc.range_count(url, PROBE_KEY, timeout=2)
    assert after.ok, after


@pytest.mark.fault(
    "an expired token met by six concurrent gRPC calls",
    reports="every call passes: renewing never closes the channel under another call",
    within="within the calls, 4 rounds")
async def test_expired_token_met_by_two_grpc_calls_at_once(
    auth_cluster: EtcdCluster, make_grpc
) -> None:
    # The daemon sends range and status to a peer together. When both meet an expired
    # token, renewing it must not close the channel under the other call (that once
    # surfaced as a PROTOCOL failure about one poll in seven).
    url = auth_cluster.endpoints[0]
    grpc = make_grpc(username="root", password=SECRET)
    assert (await grpc.status(url, timeout=2)).ok
    for _ in range(4):
        await asyncio.sleep(2.2)  # past the 1 s TTL, checked each second
        results = await asyncio.gather(*(
            call for _ in range(3)
            for call in (grpc.range_count(url, PROBE_KEY, timeout=2), grpc.status(url, timeout=2))
        ))
        assert all(r.ok for r in results), [r for r in results if not r.ok]


# -- faults --------------------------------------------------------------------------


@pytest.mark.fault(
    "a member paused (SIGSTOP) with 10 calls in flight (client level)",
    reports="each call ends `timeout`; a healthy member answers meanwhile through both APIs",
    within="timeout + 0.5 s; healthy calls < 0.5 s (asserted)")
@pytest.mark.fault(
    "a member killed (client level)",
    reports="`refused` on range and status through both APIs",
    within="< 1 s (asserted)")
async def test_paused_member_times_out_without_blocking_others(
    make_cluster: Callable[..., EtcdCluster],
    etcd_single: EtcdCluster,
    make_http,
    make_grpc,
) -> None:
    cluster = make_cluster(size=1, name_prefix="paused")
    paused, healthy = cluster.endpoints[0], etcd_single.endpoints[0]
    http, grpc = make_http(), make_grpc()
    assert (await grpc.range_count(paused, PROBE_KEY, timeout=2)).ok  # client made, then hang
    cluster.pause_member(0)
    try:
        timeout = 1.0

        async def timed(call: object) -> tuple[ProbeResult, float]:
            started = time.monotonic()
            result = await call  # type: ignore[misc]
            return result, time.monotonic() - started

        hung = [timed(http.range_count(paused, PROBE_KEY, timeout)) for _ in range(4)]
        hung += [timed(grpc.range_count(paused, PROBE_KEY, timeout)) for _ in range(4)]
        hung += [timed(http.status(paused, timeout)), timed(grpc.status(paused, timeout))]
        hung_tasks = [asyncio.ensure_future(c) for c in hung]
        await asyncio.sleep(0.05)  # every hung call is in flight before the healthy ones
        ok_json, json_took = await timed(http.range_count(healthy, PROBE_KEY, timeout))
        ok_grpc, grpc_took = await timed(grpc.range_count(healthy, PROBE_KEY, timeout))
        assert ok_json.ok and ok_grpc.ok
        assert json_took < 0.5 and grpc_took < 0.5
        assert not any(t.done() for t in hung_tasks)

        for result, took in await asyncio.gather(*hung_tasks):
            assert result.reason is Reason.TIMEOUT, result
            assert took < timeout + 0.5, (result, took)
    finally:
        cluster.resume_member(0)

    # Back to normal once it runs again; then a crash is a refusal on both APIs.
    assert (await http.range_count(paused, PROBE_KEY, timeout=2)).ok
    cluster.kill_member(0)
    refused = [
        await http.range_count(paused, PROBE_KEY, timeout=2),
        await http.status(paused, timeout=2),
        await grpc.range_count(paused, PROBE_KEY, timeout=2),
        await grpc.status(paused, timeout=2),
    ]
    for result in refused:
        assert result.reason is Reason.REFUSED, result
        assert result.duration < 1


@pytest.mark.fault(
    "a CA that did not sign etcd's certificate (client level)",
    reports="`tls` on range and status through both APIs (`certificate verify failed`)",
    within="the first call")
async def test_wrong_ca_is_tls(etcd_tls: EtcdCluster, make_http, make_grpc,
                               tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    http, grpc = make_http(ca_file=str(other)), make_grpc(ca_file=str(other))
    url = etcd_tls.endpoints[0]
    results = [
        await http.range_count(url, PROBE_KEY, timeout=2),
        await http.status(url, timeout=2),
        await grpc.range_count(url, PROBE_KEY, timeout=2),
        await grpc.status(url, timeout=2),
    ]
    for result in results:
        assert result.reason is Reason.TLS, result
    assert results[0].detail.startswith("certificate verify failed")


@pytest.mark.fault(
    "member list asked of a closed port",
    reports="a typed error with reason `refused`",
    within="the first call (1 s timeout)")
async def test_member_list_failure_raises_typed_error(make_http) -> None:
    from watchdog.lab.cluster import free_port

    with pytest.raises(EtcdCallError) as info:
        await make_http().member_list(f"http://127.0.0.1:{free_port()}", timeout=1)
    assert info.value.result.reason is Reason.REFUSED


# -- the stall ----------------------------------------------------------------------

MEASURED: dict[str, object] = {}


@asynccontextmanager
async def watch_load(url: str, n: int, ssl_context: object) -> AsyncIterator[list[int]]:
    """n HTTP watch long-polls on WATCH_PREFIX, each on its own connection, held open.

    Yields a list that grows by one for every watch etcd confirmed as created.
    """
    created: list[int] = []
    body = {"create_request": {"key": b64(WATCH_PREFIX), "range_end": b64(prefix_end(
        WATCH_PREFIX))}}
    connector = aiohttp.TCPConnector(limit=0, ssl=ssl_context or True)
    session = aiohttp.ClientSession(connector=connector,
                                    timeout=aiohttp.ClientTimeout(total=None))

    async def one(i: int) -> None:
        async with session.post(url + "/v3/watch", json=body) as resp:
            line = await resp.content.readline()
            if b'"created":true' in line:
                created.append(i)
            await asyncio.sleep(3600)  # hold the stream; cancelled on exit

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    try:
        yield created
    finally:
        for task in tasks:
            task.cancel()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()


async def watch_streams(http: EtcdHttp, url: str) -> float | None:
    result, page = await http.metrics_page(url, timeout=2)
    if page is None:
        MEASURED.setdefault("metrics_failures", []).append(result.detail)  # type: ignore[union-attr]
        return None
    return sample(page.decode(), "etcd_debugging_mvcc_watch_stream_total")


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[misc]
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.fault(
    "250 watch streams on TLS etcd 3.5.1 (client level)",
    reports="JSON range `timeout ... in processing`, gRPC range passes",
    within="JSON < 2.5 s, gRPC < 0.5 s (asserted)")
@pytest.mark.timeout(60)
async def test_stall_reproduced(
    make_cluster: Callable[..., EtcdCluster], make_http, make_grpc
) -> None:
    watches = 263
    started = time.monotonic()
    cluster = make_cluster(size=1, tls=True, name_prefix="stall")
    url, port = cluster.endpoints[0], cluster.members[0].client_port
    http, grpc = make_http(**tls_args(cluster)), make_grpc(**tls_args(cluster))
    assert stream_limit_exposed(cluster.version, tls=True) is True
    assert (await http.range_count(url, PROBE_KEY, timeout=2)).ok

    async with watch_load(url, watches, cluster.ssl_context()) as created:
        conns: list[int] = []
        streams: list[float | None] = []

        async def loaded() -> bool:
            count = count_connections(None, port)
            conns.append(count.total if count else 0)
            streams.append(await watch_streams(http, url))
            return conns[-1] >= watches and streams[-1] == STREAM_LIMIT

        await wait_for(loaded, 15, f"{watches} connections and {STREAM_LIMIT} streams")
        await asyncio.sleep(0.5)  # the rest stay stuck, not slow
        stream_count = await watch_streams(http, url)
        json_range = await http.range_count(url, PROBE_KEY, timeout=2)
        grpc_range = await grpc.range_count(url, PROBE_KEY, timeout=2)
        MEASURED.update(
            tls_streams=stream_count, tls_connections=conns[-1], tls_created=len(created),
            tls_headroom=headroom(stream_count, True), tls_json=(json_range.reason,
            json_range.detail, round(json_range.duration, 3)),
            tls_grpc_seconds=round(grpc_range.duration, 4),
        )
        assert stream_count == STREAM_LIMIT
        assert len(created) == STREAM_LIMIT
        assert json_range.reason is Reason.TIMEOUT, json_range
        assert json_range.detail.startswith("timeout after") and json_range.detail.endswith("in processing")
        assert json_range.duration < 2.5
        assert grpc_range.ok and grpc_range.duration < 0.5, grpc_range

    recovered: list[ProbeResult] = []

    async def json_ok() -> bool:
        recovered.append(await http.range_count(url, PROBE_KEY, timeout=1))
        return recovered[-1].ok

    await wait_for(json_ok, 10, "the JSON gateway to answer again")
    MEASURED.update(tls_recovery_probes=len(recovered),
                    tls_recovered_seconds=round(recovered[-1].duration, 4))

    plain = make_cluster(size=1, name_prefix="plainstall")
    plain_url, plain_port = plain.endpoints[0], plain.members[0].client_port
    plain_http = make_http()
    assert stream_limit_exposed(plain.version, tls=False) is False
    async with watch_load(plain_url, watches, None) as created:
        plain_streams: list[float | None] = []

        async def all_created() -> bool:
            plain_streams.append(await watch_streams(plain_http, plain_url))
            return len(created) == watches and plain_streams[-1] == watches

        await wait_for(all_created, 15, f"{watches} plain watches")
        count = count_connections(None, plain_port)
        json_plain = await plain_http.range_count(plain_url, PROBE_KEY, timeout=2)
        MEASURED.update(plain_streams=plain_streams[-1],
                        plain_connections=count.total if count else None,
                        plain_json=(json_plain.ok, round(json_plain.duration, 4)))
        assert count is not None and count.total >= watches
        assert json_plain.ok and json_plain.duration < 0.5, json_plain

    MEASURED["test_seconds"] = round(time.monotonic() - started, 1)
    print("\nstall measurements:", MEASURED)
    assert time.monotonic() - started < 40
