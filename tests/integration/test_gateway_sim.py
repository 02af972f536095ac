"""The simulated APISIX gateway, driven like an operator drives APISIX, on real etcd."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from tests.helpers import sample
from watchdog.lab.cluster import EtcdCluster, b64, free_port, prefix_end
from watchdog.lab.gateway_sim import GatewaySim, SimConfig

pytestmark = pytest.mark.integration

KEY = "test-admin-key"
AUTH = {"X-API-KEY": KEY}
NOT_FOUND_ROUTE = {"error_msg": "404 Route Not Found"}
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
Probe = Callable[..., Awaitable[GatewaySim]]


# -- fixtures and helpers ---------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[EtcdCluster]:
    """A member only this module writes to, so the default /apisix layout is ours."""
    with EtcdCluster(size=1, name_prefix="gwsim") as cluster:
        yield cluster


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A small echo server; yields its `host:port`."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({
            "method": request.method,
            "path_qs": request.path_qs,
            "body": await request.text(),
            "host": request.host,
            "forwarded_for": request.headers.get("X-Forwarded-For"),
        })

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    await runner.cleanup()


@pytest.fixture
async def make_sim() -> AsyncIterator[Probe]:
    """Start simulators on a cluster; at teardown stop them and check nothing leaked."""
    sims: list[GatewaySim] = []
    before = set(asyncio.all_tasks())

    async def make(cluster: EtcdCluster, **kwargs: Any) -> GatewaySim:
        kwargs.setdefault("workers", 2)
        kwargs.setdefault("admin_key", KEY)
        kwargs.setdefault("etcd_timeout", 5.0)
        if cluster.tls and cluster.tls_files:
            kwargs.setdefault("ca_file", cluster.tls_files.ca_file)
        sim = GatewaySim(SimConfig(etcd_endpoints=cluster.endpoints, **kwargs))
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()
    leftover = set(asyncio.all_tasks()) - before - {asyncio.current_task()}
    assert not leftover, f"tasks left running: {leftover}"
    for sim in sims:
        assert sim.live_watches == 0 and sim.leaked_watches == 0


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 5.0, interval: float = 0.02,
    what: str = "",
) -> T:
    """Poll an async check until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except (AssertionError, aiohttp.ClientError, OSError) as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


async def call(
    client: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, Mapping[str, str]]:
    """(status, decoded body, headers) of one request; no redirects followed."""
    kwargs.setdefault("allow_redirects", False)
    async with client.request(method, url, **kwargs) as resp:
        text = await resp.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return resp.status, body, resp.headers


async def watch_streams(cluster: EtcdCluster) -> int:
    text = await asyncio.to_thread(cluster.metrics_text)
    value = sample(text, "etcd_debugging_mvcc_watch_stream_total")
    assert value is not None
    return int(value)


def fixture_json(fixtures_dir: Path, name: str) -> Any:
    return json.loads((fixtures_dir / "apisix" / name).read_text())


def without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def canary(n: str) -> dict[str, Any]:
    return {
        "uri": f"/__watchdog/canary/{n}",
        "plugins": {"redirect": {"uri": f"/__watchdog/ok/{n}", "ret_code": 302}},
    }


async def scrape(client: aiohttp.ClientSession, sim: GatewaySim) -> str:
    async with client.get(sim.metrics_url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await resp.text()


def lag(text: str) -> float:
    x_index = sample(text, "apisix_etcd_modify_indexes", key="x_etcd_index")
    max_index = sample(text, "apisix_etcd_modify_indexes", key="max_modify_index")
    assert x_index is not None and max_index is not None
    return x_index - max_index


# -- Admin API and data plane --------------------------------------------------------


async def test_route_lifecycle_like_an_operator(
    lab: EtcdCluster, make_sim: Probe, upstream: str, client: aiohttp.ClientSession,
    fixtures_dir: Path,
) -> None:
    sim = await make_sim(lab, workers=4)
    admin = sim.admin_url + "/apisix/admin"
    route = {"methods": ["GET"], "uris": ["/get", "/anything/*"],
             "upstream": {"type": "roundrobin", "nodes": {upstream: 1}}}

    status, body, headers = await call(client, "PUT", admin + "/routes/life", json=route,
                                       headers=AUTH)
    assert status == 201, body
    put_fixture = fixture_json(fixtures_dir, "admin-route-put-response.json")
    assert set(body) == set(put_fixture)
    assert set(put_fixture["value"]) - {"upstream_id", "uri"} <= set(body["value"])
    assert body["key"] == "/apisix/routes/life"
    assert body["value"]["id"] == "life"
    assert isinstance(body["value"]["create_time"], int)
    assert headers["Content-Type"] == "application/json"
    assert headers["Server"] == "APISIX/3.9.1"
    assert headers["X-API-VERSION"] == "v3"
    [(_, stored)] = await asyncio.to_thread(lab.get, "/apisix/routes/life")
    assert json.loads(stored) == body["value"]
    created = body["value"]["create_time"]

    await asyncio.sleep(1.05)  # so update_time can move on
    route["methods"] = ["GET", "POST"]
    status, body, _ = await call(client, "PUT", admin + "/routes/life", json=route, headers=AUTH)
    assert status == 200, body
    assert body["value"]["create_time"] == created
    assert body["value"]["update_time"] > created

    status, got, _ = await call(client, "GET", admin + "/routes/life", headers=AUTH)
    assert status == 200
    assert set(got) == {"key", "value", "createdIndex", "modifiedIndex"}
    assert got["modifiedIndex"] > got["createdIndex"]
    assert got["value"] == body["value"]
    get_fixture = fixture_json(fixtures_dir, "admin-route-get-response.3.13.0.json")
    assert set(got["value"]["upstream"]) == set(get_fixture["value"]["upstream"])

    status, listed, _ = await call(client, "GET", admin + "/routes", headers=AUTH)
    assert status == 200
    assert set(listed) == {"list", "total"} and listed["total"] == len(listed["list"])
    assert got in listed["list"]

    async def proxied() -> Any:
        status, body, _ = await call(client, "GET", sim.data_url + "/get?x=1")
        return status == 200 and body

    echoed = await eventually(proxied, what="route served")
    assert echoed["method"] == "GET" and echoed["path_qs"] == "/get?x=1"
    for _ in range(4):  # every worker serves it
        status, echoed, headers = await call(
            client, "POST", sim.data_url + "/anything/deep?y=2", data="payload"
        )
        assert status == 200, echoed
        assert echoed == {**echoed, "method": "POST", "path_qs": "/anything/deep?y=2",
                          "body": "payload", "forwarded_for": "127.0.0.1"}
        assert headers["Server"] == "APISIX/3.9.1"
    status, body, _ = await call(client, "DELETE", sim.data_url + "/get")
    assert (status, body) == (404, NOT_FOUND_ROUTE)  # DELETE is not in methods

    status, body, _ = await call(client, "DELETE", admin + "/routes/life", headers=AUTH)
    delete_fixture = fixture_json(fixtures_dir, "admin-route-delete-response.json")
    assert (status, body) == (200, {**delete_fixture, "key": "/apisix/routes/life"})
    assert await asyncio.to_thread(lab.get, "/apisix/routes/life") == []
    status, body, _ = await call(client, "GET", admin + "/routes/life", headers=AUTH)
    assert (status, body) == (404, fixture_json(fixtures_dir, "admin-get-404-response.json"))

    async def gone() -> bool:
        results = [await call(client, "GET", sim.data_url + "/get") for _ in range(4)]
        return all((s, b) == (404, NOT_FOUND_ROUTE) for s, b, _ in results)

    await eventually(gone, what="route removed from every worker")


async def test_stored_values_match_each_version(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession, fixtures_dir: Path
) -> None:
    """3.9 stores schema defaults (the 3.13.0 fixture); 3.14+ stores only what was sent."""
    route = {"methods": ["GET"], "upstream": {"nodes": {"127.0.0.1:8080": 1},
             "type": "roundrobin"}, "uri": "/index"}
    for version, fixture, expected in (
        ("3.9.1", "admin-route-get-response.3.13.0.json", 201),
        ("3.14.0", "admin-route-get-response.3.14plus.json", 200),
    ):
        sim = await make_sim(lab, version=version, workers=1)
        url = sim.admin_url + "/apisix/admin/routes/1"
        status, _, _ = await call(client, "PUT", url, json=route, headers=AUTH)
        assert status == expected
        status, got, _ = await call(client, "GET", url, headers=AUTH)
        assert status == 200
        got["value"] = without(got["value"], "create_time", "update_time")
        assert without(got, "createdIndex", "modifiedIndex") == fixture_json(fixtures_dir, fixture)
    status, _, _ = await call(client, "DELETE", url, headers=AUTH)
    assert status == 200


async def test_auth_and_error_bodies(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession, fixtures_dir: Path
) -> None:
    sim = await make_sim(lab, workers=1)
    admin = sim.admin_url + "/apisix/admin"
    for headers in ({}, {"X-API-KEY": "wrong"}):
        status, body, got_headers = await call(client, "GET", admin + "/routes", headers=headers)
        assert (status, body) == (401, {"error_msg": "failed to check token"})
        assert "X-API-VERSION" not in got_headers
        assert got_headers["Server"] == "APISIX/3.9.1"
    status, _, _ = await call(client, "GET", admin + f"/routes?api_key={KEY}")
    assert status == 200
    status, _, _ = await call(client, "HEAD", admin)
    assert status == 200
    status, body, headers = await call(client, "GET", admin + "/foo", headers=AUTH)
    assert (status, body) == (404, {"error_msg": "Unsupported resource type: foo"})
    not_found = fixture_json(fixtures_dir, "admin-get-404-response.json")
    for method in ("GET", "DELETE"):
        status, body, headers = await call(client, method, admin + "/routes/absent",
                                           headers=AUTH)
        assert (status, body) == (404, not_found)
        assert headers["X-API-VERSION"] == "v3"
    status, body, _ = await call(client, "PUT", admin + "/routes/x", data="{nope",
                                 headers=AUTH)
    assert status == 400 and body["error_msg"].startswith("invalid request body")
    status, body, _ = await call(client, "PUT", admin + "/routes/x", headers=AUTH,
                                 json={"uri": "/x", "create_time": 1})
    assert (status, body) == (400, {"error_msg": "the property is forbidden:  create_time"})

    newer = await make_sim(lab, workers=1, version="3.10.0")
    for headers, reason in (({}, "missing apikey"), ({"X-API-KEY": "wrong"}, "wrong apikey")):
        status, body, _ = await call(client, "GET", newer.admin_url + "/apisix/admin/routes",
                                     headers=headers)
        assert (status, body) == (401, {"error_msg": "failed to check token",
                                        "description": reason})


async def test_list_empty_then_key_not_found(
    etcd_single: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession,
    fixtures_dir: Path,
) -> None:
    prefix = f"/sim{uuid.uuid4().hex[:8]}"
    sim = await make_sim(etcd_single, prefix=prefix, workers=1)
    placeholders = await asyncio.to_thread(etcd_single.get, prefix + "/", True)
    assert len(placeholders) == 13 and {v for _, v in placeholders} == {"init_dir"}
    url = sim.admin_url + "/apisix/admin/routes"
    status, body, _ = await call(client, "GET", url, headers=AUTH)
    assert (status, body) == (200, fixture_json(fixtures_dir, "admin-routes-list-empty.json"))
    await asyncio.to_thread(
        etcd_single.request, "/v3/kv/deleterange", {"key": b64(prefix + "/routes/")}
    )
    status, body, _ = await call(client, "GET", url, headers=AUTH)
    assert (status, body) == (404, {"message": "Key not found"})


async def test_post_ids_and_references(
    lab: EtcdCluster, make_sim: Probe, upstream: str, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(lab)
    admin = sim.admin_url + "/apisix/admin"
    status, body, _ = await call(client, "POST", admin + "/upstreams", headers=AUTH,
                                 json={"type": "roundrobin", "nodes": [
                                     {"host": upstream.split(":")[0],
                                      "port": int(upstream.split(":")[1]), "weight": 1}]})
    assert status == 201, body
    upstream_id = body["value"]["id"]
    assert len(upstream_id) == 20 and upstream_id.isdigit()
    assert body["key"] == f"/apisix/upstreams/{upstream_id}"
    assert await asyncio.to_thread(lab.get, "/apisix/gen_id")
    status, body, _ = await call(client, "PUT", admin + "/services/svc-ref", headers=AUTH,
                                 json={"upstream_id": upstream_id})
    assert status == 201, body
    status, body, _ = await call(client, "PUT", admin + "/routes/by-service", headers=AUTH,
                                 json={"uri": "/via-service", "service_id": "svc-ref"})
    assert status == 201, body
    status, body, _ = await call(client, "PUT", admin + "/routes/dangling", headers=AUTH,
                                 json={"uri": "/x", "upstream_id": "missing"})
    assert (status, body) == (400, {"error_msg": "failed to fetch upstream info by upstream "
                                                 "id [missing], response code: 404"})

    async def served() -> Any:
        status, body, _ = await call(client, "GET", sim.data_url + "/via-service")
        return status == 200 and body

    assert (await eventually(served, what="route via service"))["path_qs"] == "/via-service"
    status, body, _ = await call(client, "DELETE", admin + f"/upstreams/{upstream_id}",
                                 headers=AUTH)
    assert status == 400 and "is still using it now" in body["error_msg"]

    dead = {"uri": "/dead", "upstream": {"type": "roundrobin",
                                         "nodes": {f"127.0.0.1:{free_port()}": 1}}}
    status, _, _ = await call(client, "PUT", admin + "/routes/dead", json=dead, headers=AUTH)
    assert status == 201

    async def bad_gateway() -> bool:
        status, body, headers = await call(client, "GET", sim.data_url + "/dead")
        return status == 502 and "502 Bad Gateway" in body and headers["Server"] == "APISIX/3.9.1"

    await eventually(bad_gateway, what="502 from a dead upstream")
    for path in ("/routes/dead", "/routes/by-service", "/services/svc-ref",
                 f"/upstreams/{upstream_id}"):
        status, _, _ = await call(client, "DELETE", admin + path, headers=AUTH)
        assert status == 200


@pytest.mark.parametrize("sync_mode", ["modern", "legacy"])
async def test_canary_redirect_is_served_within_a_second(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession, sync_mode: str
) -> None:
    sim = await make_sim(lab, workers=4, sync_mode=sync_mode)
    await sim.wait_watching()
    name = f"n-{sync_mode}"
    url = sim.admin_url + f"/apisix/admin/routes/canary-{name}"
    probe = sim.data_url + f"/__watchdog/canary/{name}"
    started = time.monotonic()
    status, _, _ = await call(client, "PUT", url, json=canary(name), headers=AUTH)
    assert status == 201

    async def redirected() -> bool:
        # Four requests in a row reach all four workers (round robin): each has applied it.
        for _ in range(4):
            status, _, headers = await call(client, "GET", probe)
            if status != 302 or headers["Location"] != f"/__watchdog/ok/{name}":
                return False
        return True

    await eventually(redirected, timeout=1.0, interval=0.01, what="canary 302")
    assert time.monotonic() - started < 1.0

    status, _, _ = await call(client, "DELETE", url, headers=AUTH)
    assert status == 200

    async def all_gone() -> bool:
        results = [await call(client, "GET", probe) for _ in range(4)]
        return all((s, b) == (404, NOT_FOUND_ROUTE) for s, b, _ in results)

    await eventually(all_gone, timeout=1.0, interval=0.01, what="canary 404")


# -- watch fan-out on etcd ---------------------------------------------------------------


async def test_watch_fan_out_legacy_and_modern(
    make_cluster: Callable[..., EtcdCluster], make_sim: Probe
) -> None:
    cluster = make_cluster(size=1, name_prefix="fanout")
    baseline = await watch_streams(cluster)
    for mode, expected in (("legacy", 2 * 4 * 13), ("modern", 2 * 4)):
        sims = [await make_sim(cluster, name=f"gw-{i}", workers=4, sync_mode=mode)
                for i in range(2)]

        async def reached(want: int = baseline + expected) -> bool:
            return await watch_streams(cluster) == want

        await eventually(reached, timeout=10, interval=0.1, what=f"{mode} streams")
        await asyncio.sleep(0.5)
        assert await watch_streams(cluster) == baseline + expected  # and it stays there
        assert sum(s.live_watches for s in sims) == expected
        for sim in sims:
            await sim.stop()
        await eventually(lambda: reached(baseline), timeout=10, interval=0.1,
                         what="streams released")


# -- fault modes ---------------------------------------------------------------------------


async def test_fault_init_hang_then_switched_off_at_run_time(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession, fixtures_dir: Path
) -> None:
    route = {"id": "hang", "uri": "/hang", "plugins": {"redirect": {"uri": "/ok"}}}
    await asyncio.to_thread(lab.put, "/apisix/routes/hang", json.dumps(route))
    sim = await make_sim(lab, faults={"init-hang"})
    status, body, _ = await call(client, "GET", sim.status_url + "/status")
    assert (status, body) == (200, {"status": "ok"})
    status, body, headers = await call(client, "GET", sim.status_url + "/status/ready")
    shape = fixture_json(fixtures_dir, "status-ready-503-worker-not-synced.json")
    assert status == 503 and set(body) == set(shape) and body["status"] == "error"
    assert body["error"] == "worker id: 0 has not received configuration"
    for _ in range(4):
        status, body, _ = await call(client, "GET", sim.data_url + "/hang")
        assert (status, body) == (404, NOT_FOUND_ROUTE)

    status, state, _ = await call(client, "PUT", sim.admin_url + "/__sim/faults",
                                  json={"faults": []}, headers=AUTH)
    assert status == 200 and state["faults"] == []

    async def ready() -> bool:
        status, body, _ = await call(client, "GET", sim.status_url + "/status/ready")
        return (status, body) == (200, fixture_json(fixtures_dir, "status-ready-200.json"))

    await eventually(ready, what="ready after init-hang cleared")
    status, _, headers = await call(client, "GET", sim.data_url + "/hang")
    assert (status, headers["Location"]) == (302, "/ok")


async def test_fault_watch_leak_grows_etcd_streams(
    make_cluster: Callable[..., EtcdCluster], make_sim: Probe
) -> None:
    cluster = make_cluster(size=1, name_prefix="leak")
    baseline = await watch_streams(cluster)
    sim = await make_sim(cluster, workers=2, faults={"watch-leak"}, leak_interval=0.7)
    await sim.wait_watching()
    counts = [await watch_streams(cluster)]
    for _ in range(3):
        await asyncio.sleep(0.8)
        counts.append(await watch_streams(cluster))
    assert counts == sorted(counts) and counts[-1] >= counts[0] + 2 * 2, counts
    assert sim.leaked_watches >= 4

    sim.set_faults(set())
    await asyncio.sleep(1.0)  # a poll that was mid-reconnect settles
    settled = await watch_streams(cluster)
    await asyncio.sleep(1.5)
    assert await watch_streams(cluster) == settled  # no more reconnects, nothing released
    await sim.stop()

    async def released() -> bool:
        return await watch_streams(cluster) == baseline

    await eventually(released, timeout=10, interval=0.1, what="leaked streams closed on stop")


async def test_fault_slow_admin_and_control_endpoint(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(lab, workers=1, faults={"slow-admin"}, admin_delay=0.3)
    routes = sim.admin_url + "/apisix/admin/routes"
    control = sim.admin_url + "/__sim/faults"

    async def timed() -> float:
        started = time.monotonic()
        status, _, _ = await call(client, "GET", routes, headers=AUTH)
        assert status == 200
        return time.monotonic() - started

    assert await timed() >= 0.3
    status, _, _ = await call(client, "PUT", control, json={"faults": []})
    assert status == 401
    status, body, _ = await call(client, "PUT", control, json={"faults": ["bogus"]},
                                 headers=AUTH)
    assert status == 400 and "bogus" in body["error_msg"]
    status, body, _ = await call(client, "PUT", control, headers=AUTH,
                                 json={"faults": ["slow-admin"], "admin_delay": 0.6})
    assert (status, body) == (200, {"faults": ["slow-admin"], "admin_delay": 0.6})
    assert await timed() >= 0.6
    status, body, _ = await call(client, "GET", control, headers=AUTH)
    assert body == {"faults": ["slow-admin"], "admin_delay": 0.6}
    status, _, _ = await call(client, "PUT", control, json={"faults": []}, headers=AUTH)
    assert status == 200
    assert await timed() < 0.3


async def test_fault_stale_stops_applying_and_lag_grows(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(lab, workers=2)
    await sim.wait_watching()
    before = lag(await scrape(client, sim))
    status, _, _ = await call(client, "PUT", sim.admin_url + "/__sim/faults",
                              json={"faults": ["stale"]}, headers=AUTH)
    assert status == 200
    admin = sim.admin_url + "/apisix/admin/routes"
    for n in ("stale-1", "stale-2"):
        status, _, _ = await call(client, "PUT", f"{admin}/{n}", json=canary(n), headers=AUTH)
        assert status == 201
    await asyncio.sleep(0.5)
    for _ in range(4):
        status, body, _ = await call(client, "GET", sim.data_url + "/__watchdog/canary/stale-2")
        assert (status, body) == (404, NOT_FOUND_ROUTE)
    stale_lag = lag(await scrape(client, sim))
    assert stale_lag >= before + 2
    status, _, _ = await call(client, "GET", f"{admin}/stale-2", headers=AUTH)
    assert status == 200  # the admin side still works

    sim.set_faults(set())

    async def caught_up() -> bool:
        results = [await call(client, "GET", sim.data_url + "/__watchdog/canary/stale-2")
                   for _ in range(2)]
        return all(s == 302 for s, _, _ in results)

    await eventually(caught_up, what="served after stale cleared")
    assert lag(await scrape(client, sim)) < stale_lag
    for n in ("stale-1", "stale-2"):
        await call(client, "DELETE", f"{admin}/{n}", headers=AUTH)


async def test_fault_shim_accepts_writes_that_go_nowhere(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(lab, faults={"shim"})
    admin = sim.admin_url + "/apisix/admin/routes"
    status, body, _ = await call(client, "PUT", admin + "/shim", json=canary("shim"),
                                 headers=AUTH)
    assert status == 201 and set(body) == {"key", "value"}
    status, body, _ = await call(client, "GET", admin + "/shim", headers=AUTH)
    assert status == 200 and body["key"] == "/apisix/routes/shim"
    status, body, _ = await call(client, "GET", admin, headers=AUTH)
    assert status == 404 and body["message"] == "Key not found"
    assert body["header"]["revision"].isdigit()
    await asyncio.sleep(0.3)
    for _ in range(2):
        status, body, _ = await call(client, "GET", sim.data_url + "/__watchdog/canary/shim")
        assert (status, body) == (404, NOT_FOUND_ROUTE)
    assert await asyncio.to_thread(lab.get, "/apisix/routes/shim") == []


# -- status, metrics, etcd variants -------------------------------------------------------


async def test_status_api_and_prometheus_values(
    lab: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    sim = await make_sim(lab, workers=2, hostname="gw-host-1")
    async with client.get(sim.status_url + "/status") as resp:
        assert resp.status == 200 and await resp.text() == '{"status":"ok"}'
    async with client.get(sim.status_url + "/status/ready") as resp:
        assert resp.status == 200 and await resp.text() == '{"status":"ok"}'

    status, _, _ = await call(client, "PUT", sim.admin_url + "/apisix/admin/routes/metrics",
                              json=canary("metrics"), headers=AUTH)
    assert status == 201
    _, got, _ = await call(client, "GET", sim.admin_url + "/apisix/admin/routes/metrics",
                           headers=AUTH)

    async def indexed() -> str | None:
        texts = [await scrape(client, sim) for _ in range(2)]  # one per worker
        ok = all(sample(t, "apisix_etcd_modify_indexes", key="routes") == got["modifiedIndex"]
                 for t in texts)
        return texts[-1] if ok else None

    text = await eventually(indexed, what="routes modify index")
    revision = int(lab.request("/v3/kv/range", {"key": b64("/apisix/phantomkey")})
                   ["header"]["revision"])  # type: ignore[index]
    assert sample(text, "apisix_etcd_modify_indexes", key="x_etcd_index") == revision
    assert sample(text, "apisix_etcd_reachable") == 1
    assert sample(text, "apisix_node_info", hostname="gw-host-1") == 1
    max_index = sample(text, "apisix_etcd_modify_indexes", key="max_modify_index")
    assert max_index is not None and max_index >= got["modifiedIndex"]
    for help_line in (
        "# HELP apisix_etcd_reachable Config server etcd reachable from APISIX, 0 is unreachable",
        "# HELP apisix_etcd_modify_indexes Etcd modify index for APISIX keys",
        "# HELP apisix_node_info Info of APISIX node",
    ):
        assert help_line in text.splitlines()
    await call(client, "DELETE", sim.admin_url + "/apisix/admin/routes/metrics", headers=AUTH)


async def test_etcd_down_then_back(
    make_cluster: Callable[..., EtcdCluster], make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    cluster = make_cluster(size=1, name_prefix="down")
    sim = await make_sim(cluster, workers=2, resync_delay=0.1, health_check_timeout=0.3)
    await sim.wait_watching()
    await asyncio.to_thread(cluster.kill_member, 0)
    status, body, _ = await call(client, "GET", sim.admin_url + "/apisix/admin/routes",
                                 headers=AUTH)
    assert status == 503 and set(body) == {"error_msg"} and body["error_msg"]
    text = await scrape(client, sim)
    assert sample(text, "apisix_etcd_reachable") == 0
    status, _, _ = await call(client, "GET", sim.status_url + "/status/ready")
    assert status == 200  # ready means "loaded once", not "etcd up"

    await asyncio.to_thread(cluster.restart_member, 0)
    await asyncio.sleep(0.4)  # past the passive health-check window
    await sim.wait_watching(timeout=10)
    status, _, _ = await call(client, "PUT", sim.admin_url + "/apisix/admin/routes/back",
                              json=canary("back"), headers=AUTH)
    assert status == 201

    async def served() -> bool:
        status, _, _ = await call(client, "GET", sim.data_url + "/__watchdog/canary/back")
        return status == 302

    await eventually(served, what="served after etcd came back")
    assert sample(await scrape(client, sim), "apisix_etcd_reachable") == 1


async def test_compaction_forces_a_full_reload(
    make_cluster: Callable[..., EtcdCluster], make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    """A watch resuming from a compacted revision reloads everything (the events are gone)."""
    cluster = make_cluster(size=1, name_prefix="compact")
    sim = await make_sim(cluster, workers=2, resync_delay=3.0, health_check_timeout=0.1)
    await sim.wait_watching()
    await asyncio.to_thread(cluster.kill_member, 0)
    await asyncio.to_thread(cluster.restart_member, 0)
    await asyncio.to_thread(cluster.put, "/apisix/routes/compacted",
                            json.dumps({"id": "compacted", **canary("compacted")}))
    answer = await asyncio.to_thread(cluster.put, "/apisix/other", "x")
    revision = int(answer["header"]["revision"])  # type: ignore[index]
    assert sim.live_watches == 0, "the watches came back before the compaction"
    await asyncio.to_thread(cluster.request, "/v3/kv/compaction", {"revision": revision})

    async def served() -> bool:
        results = [await call(client, "GET", sim.data_url + "/__watchdog/canary/compacted")
                   for _ in range(2)]
        return all(s == 302 for s, _, _ in results)

    # The watches come back after a backoff of resync_delay plus up to 50 % jitter, maybe
    # twice while etcd restarts; on a loaded 2-core CI machine that can pass 10 s.
    await eventually(served, timeout=25, what="served after compaction reload")
    assert sim.reloads == 2  # one per worker
    await sim.wait_watching()


async def test_tls_etcd(
    etcd_tls: EtcdCluster, make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    prefix = f"/sim{uuid.uuid4().hex[:8]}"
    sim = await make_sim(etcd_tls, prefix=prefix, workers=2)
    assert etcd_tls.endpoints[0].startswith("https://")
    status, body, _ = await call(client, "PUT", sim.admin_url + "/apisix/admin/routes/tls",
                                 json=canary("tls"), headers=AUTH)
    assert status == 201 and body["key"] == f"{prefix}/routes/tls"

    async def served() -> bool:
        status, _, _ = await call(client, "GET", sim.data_url + "/__watchdog/canary/tls")
        return status == 302

    await eventually(served, what="served over TLS etcd")
    assert sample(await scrape(client, sim), "apisix_etcd_reachable") == 1


async def test_etcd_with_auth(
    make_cluster: Callable[..., EtcdCluster], make_sim: Probe, client: aiohttp.ClientSession
) -> None:
    cluster = make_cluster(size=1, auth=True, name_prefix="auth")
    sim = await make_sim(cluster, workers=1, etcd_user="root",
                         etcd_password=cluster.root_password)
    status, _, _ = await call(client, "PUT", sim.admin_url + "/apisix/admin/routes/auth",
                              json=canary("auth"), headers=AUTH)
    assert status == 201
    assert await asyncio.to_thread(cluster.get, "/apisix/routes/auth")

    async def served() -> bool:
        status, _, _ = await call(client, "GET", sim.data_url + "/__watchdog/canary/auth")
        return status == 302

    await eventually(served, what="served with etcd auth")


# -- process mode and config --------------------------------------------------------------


async def test_process_mode(
    lab: EtcdCluster, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    ready_file = tmp_path / "ready.json"
    stderr = tmp_path / "sim.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "watchdog.lab.gateway_sim", "--etcd", lab.endpoints[0],
             "--name", "gw-proc", "--admin-key", KEY, "--workers", "2", "--sync-mode",
             "legacy", "--fault", "slow-admin", "--admin-delay", "0.1",
             "--ready-file", str(ready_file)],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert await asyncio.to_thread(sel.select, 20), stderr.read_text()
        line = proc.stdout.readline().decode()
        info = json.loads(line)
        assert {"name", "pid", "admin_url", "data_url", "status_url", "metrics_url"} <= set(info)
        assert info["name"] == "gw-proc" and info["faults"] == ["slow-admin"]
        assert info["metrics_url"].endswith("/apisix/prometheus/metrics")
        assert json.loads(ready_file.read_text()) == info
        status, _, _ = await call(client, "HEAD", info["admin_url"] + "/apisix/admin")
        assert status == 200
        status, body, _ = await call(client, "GET", info["status_url"] + "/status/ready")
        assert (status, body) == (200, {"status": "ok"})
        async with client.get(info["metrics_url"]) as resp:
            assert sample(await resp.text(), "apisix_etcd_reachable") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise
        if proc.stdout is not None:
            proc.stdout.close()
    log = stderr.read_text()
    assert code == 0, log
    assert "Unclosed" not in log and "Task was destroyed" not in log, log


def test_config_validation(tmp_path: Path) -> None:
    good = {"etcd_endpoints": ["http://127.0.0.1:2379"]}
    assert SimConfig(**good).prefix == "/apisix"  # type: ignore[arg-type]
    for bad in (
        {"etcd_endpoints": []},
        {**good, "faults": {"bogus"}},
        {**good, "sync_mode": "grpc"},
        {**good, "host": "0.0.0.0"},
        {**good, "workers": 0},
    ):
        with pytest.raises(ValueError):
            SimConfig(**bad)  # type: ignore[arg-type]
    assert prefix_end("/apisix/") == b"/apisix0"
