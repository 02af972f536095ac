"""The init-sync smoke gate: a canary route must be served before a deploy rolls on.

Per gateway: wait for the data plane to answer, for /status/ready when configured, write
the canary through the admin API, poll the data plane until it answers 302 with the
canary's Location, and delete the canary whatever happened (timeout, error, signal).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from watchdog.config import GatewayConfig
from watchdog.gateway.admin import AdminClient
from watchdog.gateway.status import config_lag, read_ready, scrape_metrics
from watchdog.httpprobe import timed_request
from watchdog.results import ProbeResult, Reason

log = logging.getLogger(__name__)

CLEANUP_TIMEOUT = 5.0
CANARY_PREFIX = "/__watchdog"


def canary(nonce: str) -> tuple[str, dict[str, Any], str, str]:
    """(route id, route body, canary path, expected Location) per the contract."""
    route_id = f"watchdog-canary-{nonce}"
    path = f"{CANARY_PREFIX}/canary/{nonce}"
    location = f"{CANARY_PREFIX}/ok/{nonce}"
    body = {"uri": path, "plugins": {"redirect": {"uri": location, "ret_code": 302}}}
    return route_id, body, path, location


@dataclass
class SmokeResult:
    """The verdict for one gateway."""

    gateway: str
    ok: bool
    phase: str
    message: str
    reason: Reason | None = None
    sync_seconds: float | None = None
    admin_write_seconds: float | None = None
    elapsed: float = 0.0
    canary_route: str | None = None
    canary_deleted: bool | None = None
    read_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reason"] = self.reason.value if self.reason else None
        return data


@dataclass
class Progress:
    """Live state of one gateway's gate, for the terminal display."""

    gateway: str
    phase: str = "starting"
    detail: str = ""
    started: float = field(default_factory=time.monotonic)
    result: SmokeResult | None = None


class GateError(Exception):
    """Ends a gate early with a reason a person understands."""

    def __init__(self, phase: str, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.phase, self.reason, self.message = phase, reason, message


def _describe(result: ProbeResult) -> str:
    body = result.body if isinstance(result.body, dict) else {}
    said = body.get("error_msg") or body.get("message") or body.get("error")
    text = result.detail or (result.reason.value if result.reason else "failed")
    return f"{text} ({said})" if said else text


async def _poll(
    what: Callable[[float], Any], until: float, interval: float, call_timeout: float
) -> ProbeResult:
    """Call `what` until it returns an ok ProbeResult or the deadline passes; the last
    result is returned either way."""
    while True:
        left = until - time.monotonic()
        result: ProbeResult = await what(max(0.05, min(call_timeout, left)))
        if result.ok or time.monotonic() + interval >= until:
            return result
        await asyncio.sleep(interval)


async def run_gate(
    gateway: GatewayConfig,
    session: aiohttp.ClientSession,
    timeout: float,
    poll_interval: float = 0.05,
    read_only: bool = False,
    newest_config_revision: Callable[[], Any] | None = None,
    progress: Progress | None = None,
    call_timeout: float = 5.0,
) -> SmokeResult:
    """Run the gate for one gateway within `timeout` seconds."""
    progress = progress or Progress(gateway.name)
    started = time.monotonic()
    deadline = started + timeout
    admin = AdminClient(gateway, session)
    nonce = secrets.token_hex(6)
    route_id, route, path, location = canary(nonce)
    written = False
    result = SmokeResult(gateway.name, False, "starting", "", read_only=read_only)

    def phase(name: str, detail: str = "") -> None:
        progress.phase, progress.detail = name, detail
        result.phase = name

    try:
        if gateway.data_url is not None:
            phase("data plane", gateway.data_url)
            answer = await _poll(
                lambda t: timed_request(session, "GET", f"{gateway.data_url}/", api="data",
                                        op="root", timeout=t, expect_json=False,
                                        ok_status=range(100, 600)),
                deadline, max(poll_interval, 0.2), call_timeout,
            )
            if not answer.ok:
                raise GateError("data plane", answer.reason or Reason.REFUSED,
                                f"data plane at {gateway.data_url} not answering: "
                                f"{_describe(answer)}")
        if gateway.status_url is not None:
            phase("status ready", gateway.status_url)
            ready = await _poll(lambda t: read_ready(session, gateway.status_url or "", t),
                                deadline, max(poll_interval, 0.2), call_timeout)
            if not ready.ok:
                raise GateError("status ready", ready.reason or Reason.HTTP,
                                f"/status/ready still not ready after "
                                f"{time.monotonic() - started:.0f}s: {_describe(ready)}")
        if read_only:
            await _judge_read_only(gateway, session, deadline, poll_interval, call_timeout,
                                   newest_config_revision, phase)
            result.ok, result.message = True, "ready and config lag 0 (read-only)"
            phase("done")
            return result
        if gateway.data_url is None:
            raise GateError("write", Reason.PROTOCOL,
                            "no data_url configured: the canary cannot be checked "
                            "(set data_url, or use --read-only)")
        phase("write", route_id)
        written = True  # from here on, always try to delete: the PUT may land late
        put = await admin.put_route(route_id, route, max(0.1, min(call_timeout,
                                                                    deadline - time.monotonic())))
        if not put.ok:
            noun = "rejected the admin key" if put.reason is Reason.AUTH else "failed"
            raise GateError("write", put.reason or Reason.HTTP,
                            f"admin API {noun} writing the canary: {_describe(put)}")
        result.admin_write_seconds = put.duration
        written_at = time.monotonic()
        phase("propagate", path)
        last: Served | None = None
        while True:
            left = deadline - time.monotonic()
            last = await fetch(session, f"{gateway.data_url}{path}",
                               max(0.05, min(call_timeout, left)))
            if last.status == 302 and last.location == location:
                result.sync_seconds = time.monotonic() - written_at
                break
            if time.monotonic() + poll_interval >= deadline:
                raise GateError("propagate", Reason.TIMEOUT,
                                await _not_served(admin, last, time.monotonic() - written_at,
                                                  call_timeout))
            await asyncio.sleep(poll_interval)
        result.ok = True
        result.message = (f"canary served after {result.sync_seconds * 1000:.0f} ms "
                          f"(admin write {put.duration * 1000:.0f} ms)")
        phase("done")
    except GateError as err:
        result.ok, result.reason, result.message = False, err.reason, err.message
    except asyncio.CancelledError:
        result.ok, result.message = False, "interrupted"
        raise
    finally:
        result.elapsed = time.monotonic() - started
        if written:
            result.canary_route = route_id
            result.canary_deleted = await _cleanup(admin, route_id)
            if not result.canary_deleted:
                result.message += f"; WARNING: canary route {route_id} could not be deleted"
        progress.result = result
    return result


@dataclass(frozen=True, slots=True)
class Served:
    """What the data plane answered for the canary path."""

    status: int | None
    location: str = ""
    said: str = ""
    error: str = ""


def _said(raw: bytes) -> str:
    """A short account of a body: APISIX's error_msg when it is JSON, else its text."""
    try:
        data = json.loads(raw)
        if isinstance(data, dict) and isinstance(data.get("error_msg"), str):
            return data["error_msg"][:100]
    except ValueError:
        pass
    return " ".join(raw.decode(errors="replace").split())[:100]


async def fetch(session: aiohttp.ClientSession, url: str, timeout: float) -> Served:
    """One GET of the canary path, redirects not followed."""
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, allow_redirects=False) as resp:
                raw = await resp.content.read(512)
                said = ""
                if resp.status != 302:
                    said = _said(raw)
                return Served(resp.status, resp.headers.get("Location", ""), said)
    except TimeoutError:
        return Served(None, error=f"no answer within {timeout:.1f}s")
    except (aiohttp.ClientError, OSError) as exc:
        return Served(None, error=f"{type(exc).__name__}")


async def _not_served(admin: AdminClient, last: Served | None, waited: float,
                      call_timeout: float) -> str:
    """Why the canary was not served, in words; checks the admin list for a shim."""
    if last is None or last.status is None:
        seen = last.error if last else "no answer"
    elif last.status == 302:
        seen = f"302 to {last.location!r}, not the canary's Location"
    else:
        seen = last.said if last.said.startswith(str(last.status)) else \
            f"{last.status} {last.said}".strip()
    message = f"canary written, data plane still answers {seen} after {waited:.1f}s"
    listing = await admin.list_routes(min(call_timeout, 2.0))
    body = listing.body if isinstance(listing.body, dict) else {}
    if listing.status == 404 and body.get("message") == "Key not found":
        message += ("; the admin API lists no routes although it accepted the write: its "
                    "store is not the etcd the data plane watches (an etcd-adapter shim?)")
    return message


async def _cleanup(admin: AdminClient, route_id: str) -> bool:
    """Delete the canary, shielded from cancellation, bounded in time."""
    task = asyncio.ensure_future(admin.delete_route(route_id, CLEANUP_TIMEOUT))
    try:
        deleted = await asyncio.shield(task)
    except asyncio.CancelledError:
        deleted = await task
        if not deleted.ok:
            log.warning("canary not deleted gateway=%s route=%s reason=%s",
                        admin.gateway.name, route_id, deleted.reason)
        raise
    if not deleted.ok:
        log.warning("canary not deleted gateway=%s route=%s reason=%s",
                    admin.gateway.name, route_id, deleted.reason)
    return deleted.ok


async def _judge_read_only(
    gateway: GatewayConfig,
    session: aiohttp.ClientSession,
    deadline: float,
    poll_interval: float,
    call_timeout: float,
    newest_config_revision: Callable[[], Any] | None,
    phase: Callable[[str, str], None],
) -> None:
    """Read-only verdict: the status API says ready and the config lag reaches 0."""
    if gateway.metrics_url is None or newest_config_revision is None:
        if gateway.status_url is None:
            raise GateError("read-only", Reason.PROTOCOL,
                            "read-only needs status_url or metrics_url for this gateway")
        return
    phase("config lag", gateway.metrics_url)
    lag: float | None = None
    while True:
        left = deadline - time.monotonic()
        scraped, metrics = await scrape_metrics(session, gateway.metrics_url,
                                                max(0.05, min(call_timeout, left)))
        newest = await newest_config_revision()
        if metrics is not None:
            lag = config_lag(newest, metrics.max_modify_index)
            if lag == 0:
                return
        if time.monotonic() + poll_interval >= deadline:
            if metrics is None:
                raise GateError("config lag", scraped.reason or Reason.HTTP,
                                f"gateway metrics unreadable: {_describe(scraped)}")
            raise GateError("config lag", Reason.TIMEOUT,
                            f"config lag still {lag:.0f} revisions at the deadline"
                            if lag is not None else "config lag unknown at the deadline")
        await asyncio.sleep(max(poll_interval, 0.2))
