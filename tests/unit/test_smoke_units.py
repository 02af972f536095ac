"""run_gate against a scripted admin API and data plane: the canary's life cycle at the
edges a simulator does not reach (a signal mid-write, a hung write, a rejected key)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from watchdog.config import GatewayConfig
from watchdog.gateway.gate import verdict
from watchdog.gateway.smoke import (
    Progress,
    SmokeResult,
    canary,
    canary_written_at,
    new_nonce,
    run_gate,
)
from watchdog.httpprobe import make_session
from watchdog.results import Reason

KEY = "unit-admin-key"


@dataclass
class FakeGateway:
    """Admin API and data plane on one port; behaviour set per test."""

    put_delay: float = 0.0
    put_status: int = 201
    delete_status: int = 200
    redirect_to: str | None = None  # None: serve the canary properly
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    put_started: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def admin(self, request: web.Request) -> web.Response:
        route_id = request.match_info["id"]
        if request.method == "PUT":
            self.events.append("put-start")
            self.put_started.set()
            await asyncio.sleep(self.put_delay)
            if self.put_status >= 300:
                self.events.append(f"put-{self.put_status}")
                return web.json_response({"error_msg": "failed to check token"},
                                         status=self.put_status)
            self.routes[route_id] = await request.json()
            self.events.append("put-done")
            return web.json_response({"key": route_id}, status=self.put_status)
        if request.method == "DELETE":
            self.events.append("delete")
            if self.delete_status >= 300:
                return web.json_response({"error_msg": "etcd unavailable"},
                                         status=self.delete_status)
            if self.routes.pop(route_id, None) is None:
                return web.json_response({"message": "Key not found"}, status=404)
            return web.json_response({"deleted": "1"})
        if request.method == "GET":
            return web.json_response({"message": "Key not found"}, status=404)
        raise web.HTTPMethodNotAllowed(request.method, ["PUT", "DELETE", "GET"])

    async def listing(self, request: web.Request) -> web.Response:
        """APISIX 3's list answer; 404 'Key not found' when there is nothing at all."""
        if not self.routes:
            return web.json_response({"message": "Key not found"}, status=404)
        items = [{"key": f"/apisix/routes/{rid}", "value": {**route, "id": rid},
                  "modifiedIndex": 7} for rid, route in self.routes.items()]
        return web.json_response({"list": items, "total": len(items)})

    async def data(self, request: web.Request) -> web.Response:
        for route in self.routes.values():
            if route["uri"] == request.path:
                target = self.redirect_to or route["plugins"]["redirect"]["uri"]
                raise web.HTTPFound(target)
        return web.json_response({"error_msg": "404 Route Not Found"}, status=404)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGateway]:
    gw = FakeGateway()
    app = web.Application()
    app.router.add_route("GET", "/apisix/admin/routes", gw.listing)
    app.router.add_route("*", "/apisix/admin/routes/{id}", gw.admin)
    app.router.add_route("*", "/{tail:.*}", gw.data)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    gw.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield gw
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = make_session(connector=aiohttp.TCPConnector(force_close=True, limit=0))
    yield s
    await s.close()


def gateway(url: str, monkeypatch: pytest.MonkeyPatch) -> GatewayConfig:
    monkeypatch.setenv("UNIT_ADMIN_KEY", KEY)
    return GatewayConfig(name="gw", admin_url=url, admin_key_env="UNIT_ADMIN_KEY", data_url=url)


Gate = Callable[..., Awaitable[SmokeResult]]


def test_canary_matches_the_contract() -> None:
    route_id, body, path, location = canary("abc123")
    assert route_id == "watchdog-canary-abc123"
    assert body == {"uri": "/__watchdog/canary/abc123",
                    "plugins": {"redirect": {"uri": "/__watchdog/ok/abc123", "ret_code": 302}}}
    assert (path, location) == ("/__watchdog/canary/abc123", "/__watchdog/ok/abc123")


def test_verdict_lines() -> None:
    passed = SmokeResult("gw-1", True, "done", "canary served after 12 ms")
    assert verdict(passed) == "PASS gw-1: canary served after 12 ms"
    failed = SmokeResult("gw-2", False, "propagate", "still 404", Reason.TIMEOUT, elapsed=3.02,
                         canary_route="watchdog-canary-x", canary_deleted=True)
    assert verdict(failed) == "FAIL gw-2 [propagate/timeout] after 3.0s: still 404 (canary deleted)"


async def test_passes_and_deletes(fake: FakeGateway, session: aiohttp.ClientSession,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=5)
    assert result.ok and result.sync_seconds is not None and result.served_at is not None
    assert result.canary_deleted is True and fake.routes == {}
    assert fake.events == ["put-start", "put-done", "delete"]
    assert result.swept == [] and result.sweep_failed == []


def test_a_canary_id_carries_the_time_it_was_written() -> None:
    nonce = new_nonce(now=1_764_576_000.7)
    assert nonce.startswith("1764576000-") and len(nonce) == 23
    route_id, _, _, _ = canary(nonce)
    assert canary_written_at(route_id) == 1_764_576_000.0
    assert len(route_id) <= 64  # APISIX's id limit
    for other in ("watchdog-canary-abc123", "watchdog-canary-1764576000-ABCDEF012345",
                  "watchdog-canary-1764576000-0123456789ab-x", "my-route",
                  "xwatchdog-canary-1764576000-0123456789ab"):
        assert canary_written_at(other) is None


async def test_only_old_canaries_of_its_own_shape_are_swept(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    now = time.time()

    def leftover(age: float, **change: Any) -> str:
        route_id, body, _, _ = canary(new_nonce(now - age))
        fake.routes[route_id] = {**body, **change}
        return route_id

    old = leftover(7200)
    older = leftover(86400 * 3)
    fresh = leftover(60)  # a concurrent run's
    foreign_uri = leftover(7200, uri="/my/own/path")  # our naming, someone else's route
    fake.routes["watchdog-canary-abc123"] = canary("abc123")[1]  # undated: age unknown
    fake.routes["users"] = {"uri": "/users"}
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=5)
    assert result.ok
    assert sorted(result.swept) == sorted([old, older]) and result.sweep_failed == []
    assert f"swept 2 leftover canary route(s): {result.swept[0]}" in result.message
    assert set(fake.routes) == {fresh, foreign_uri, "watchdog-canary-abc123", "users"}
    assert result.to_dict()["swept"] == result.swept


async def test_no_sweep_when_disabled(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    route_id, body, _, _ = canary(new_nonce(time.time() - 7200))
    fake.routes[route_id] = body
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=5,
                            sweep_older_than=None)
    assert result.ok and result.swept == [] and route_id in fake.routes
    assert fake.events == ["put-start", "put-done", "delete"]


async def test_signal_during_the_write_lets_it_land_then_deletes(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delete sent while the write is still in flight could overtake it and leave the
    canary behind; the gate lets the write finish first."""
    fake.put_delay = 0.4
    progress = Progress("gw")
    task = asyncio.create_task(run_gate(gateway(fake.url, monkeypatch), session, timeout=5,
                                        progress=progress))
    await asyncio.wait_for(fake.put_started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert fake.events == ["put-start", "put-done", "delete"]
    assert fake.routes == {}
    assert progress.result is not None
    assert (progress.result.ok, progress.result.message) == (False, "interrupted")
    assert progress.result.canary_deleted is True


async def test_second_signal_during_the_cleanup_still_deletes(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.put_delay = 0.4
    progress = Progress("gw")
    task = asyncio.create_task(run_gate(gateway(fake.url, monkeypatch), session, timeout=5,
                                        progress=progress))
    await asyncio.wait_for(fake.put_started.wait(), 5)
    task.cancel()
    await asyncio.sleep(0.1)
    task.cancel()  # an impatient second Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert fake.events == ["put-start", "put-done", "delete"] and fake.routes == {}
    assert progress.result is not None and progress.result.canary_deleted is True


async def test_rejected_key_sends_no_delete(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.put_status = 401
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=5)
    assert (result.ok, result.phase, result.reason) == (False, "write", Reason.AUTH)
    assert result.message.startswith("admin API rejected the admin key (HTTP 401 (failed to "
                                     "check token))")
    assert result.canary_route is None and result.canary_deleted is None
    assert fake.events == ["put-start", "put-401"]


async def test_hung_write_is_still_deleted(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that timed out may have landed: the gate deletes it anyway."""
    fake.put_delay = 0.6
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=5, call_timeout=0.3)
    assert (result.ok, result.phase, result.reason) == (False, "write", Reason.TIMEOUT)
    assert result.canary_route is not None
    # The server finishes the write after the client gave up; the delete was already sent.
    # The fake applies them in arrival order, so whatever landed is gone or never came.
    assert "delete" in fake.events


async def test_wrong_location_is_named(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.redirect_to = "/somewhere-else"
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=0.5)
    assert (result.ok, result.phase, result.reason) == (False, "propagate", Reason.TIMEOUT)
    assert "302 to '/somewhere-else', not the canary's Location" in result.message
    assert result.canary_deleted is True and fake.routes == {}


async def test_a_refused_write_whose_delete_fails_asks_nobody_to_delete_by_hand(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.put_status = fake.delete_status = 503  # etcd down: APISIX answers 503 to both
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=0.5)
    assert (result.ok, result.phase, result.reason) == (False, "write", Reason.HTTP)
    assert fake.events == ["put-start", "put-503", "delete"]
    assert result.canary_deleted is None and result.canary_route is None
    assert "by hand" not in result.message and "by hand" not in caplog.text
    assert "could not be deleted" not in result.message


async def test_a_written_canary_whose_delete_fails_is_named_with_the_sweep(
    fake: FakeGateway, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.delete_status = 503
    result = await run_gate(gateway(fake.url, monkeypatch), session, timeout=5)
    assert result.ok and result.canary_deleted is False
    assert result.message.endswith(f"; WARNING: canary route {result.canary_route} could not "
                                   "be deleted (a smoke run sweeps it once it is an hour old)")


@pytest.mark.parametrize(
    ("newest", "loaded", "lag", "problem"),
    [
        (57, 41.0, 16.0, None),
        (57, 57.0, 0.0, None),
        (57, 0.0, 57.0, None),
        (57, float("nan"), None, "nan is not a revision"),
        (57, float("inf"), None, "inf is not a revision"),
        (57, -3.0, None, "-3 is negative"),
        (57, 1e300, None, "1e+300 is beyond any etcd revision"),
        (57, 41.5, None, "41.5 is not a whole revision"),
        (57, 58.0, None, None),  # more than etcd holds: no lag says that
        (None, 41.0, None, None),
        (57, None, None, None),
    ],
)
def test_config_lag_is_never_0_for_a_revision_that_cannot_be(
    newest: int | None, loaded: float | None, lag: float | None, problem: str | None,
) -> None:
    from watchdog.gateway.status import config_lag, revision_problem

    assert config_lag(newest, loaded) == lag
    assert revision_problem(loaded) == problem
