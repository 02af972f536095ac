"""The init-sync smoke gate: a canary route must be served before a deploy rolls on.

Per gateway: wait for the data plane to answer, for /status/ready when configured, write
the canary through the admin API, poll the data plane until it answers 302 with the
canary's Location, and delete the canary whatever happened (timeout, error, signal).

A canary's id carries the Unix time it was written (``watchdog-canary-<unix>-<12 hex>``), so
a later run can tell a leftover (a SIGKILL mid-gate, a delete that failed while etcd was
down) from a concurrent run's canary: beside each write, canaries of this exact shape
older than ``sweep_older_than`` are deleted and reported.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import aiohttp

from watchdog.config import GatewayConfig
from watchdog.gateway.admin import AdminClient
from watchdog.gateway.status import (
    GatewayMetrics,
    config_lag,
    read_ready,
    revision_problem,
    scrape_metrics,
)
from watchdog.httpprobe import _classify, timed_request
from watchdog.redact import Redactor
from watchdog.results import ProbeResult, Reason

log = logging.getLogger(__name__)

CLEANUP_TIMEOUT = 5.0
DIAGNOSE_TIMEOUT = 2.0
WRITE_RETRY = 0.25
CANARY_PREFIX = "/__watchdog"
CANARY_ROUTE_PREFIX = "watchdog-canary-"
# Answers after which the admin API certainly stored nothing: the canary needs no delete.
REJECTED = frozenset({400, 401, 403, 404, 405})
# A canary's life is at most the gate's timeout plus its cleanup; an hour also covers the
# clock skew between two hosts gating at once.
SWEEP_AGE = 3600.0
SWEEP_BATCH = 16  # deletes in flight at once
CANARY_ID = re.compile(rf"^{CANARY_ROUTE_PREFIX}(\d{{9,11}})-[0-9a-f]{{12}}$")

T = TypeVar("T")


def new_nonce(now: float | None = None) -> str:
    """`<unix seconds>-<12 random hex>`: unique, and dated for a later sweep."""
    return f"{int(time.time() if now is None else now)}-{secrets.token_hex(6)}"


def canary_written_at(route_id: str) -> float | None:
    """When a canary of this tool was written (from its id), or None if the id is not one."""
    match = CANARY_ID.match(route_id)
    return float(match.group(1)) if match else None


def canary(nonce: str) -> tuple[str, dict[str, Any], str, str]:
    """(route id, route body, canary path, expected Location) per the contract."""
    route_id = f"{CANARY_ROUTE_PREFIX}{nonce}"
    path = f"{CANARY_PREFIX}/canary/{nonce}"
    location = f"{CANARY_PREFIX}/ok/{nonce}"
    body = {"uri": path, "plugins": {"redirect": {"uri": location, "ret_code": 302}}}
    return route_id, body, path, location


@dataclass
class SmokeResult:
    """The verdict for one gateway. `served_at` is the Unix time the canary was first
    served (for measuring what happens after); `elapsed` excludes the cleanup."""

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
    served_at: float | None = None
    config_lag: float | None = None
    swept: list[str] = field(default_factory=list)  # leftover canaries deleted by this run
    sweep_failed: list[str] = field(default_factory=list)  # leftovers that could not be

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


def _never_sent(result: ProbeResult) -> bool:
    """True when the request certainly never reached the server (so nothing was stored)."""
    if result.status is not None:
        return False
    return result.reason is Reason.TLS or (
        result.reason is Reason.REFUSED and result.detail in ("connection refused",
                                                              "dns lookup failed"))


def _stored_nothing(result: ProbeResult) -> bool:
    """True when a failed admin write certainly left nothing behind."""
    return _never_sent(result) or (result.status in REJECTED)


def _left(deadline: float, call_timeout: float, floor: float = 0.05) -> float:
    return max(floor, min(call_timeout, deadline - time.monotonic()))


async def _poll(
    what: Callable[[float], Awaitable[ProbeResult]], until: float, interval: float,
    call_timeout: float,
) -> ProbeResult:
    """Call `what` until it returns an ok ProbeResult or the deadline passes; the last
    result is returned either way."""
    while True:
        result = await what(_left(until, call_timeout))
        if result.ok or time.monotonic() + interval >= until:
            return result
        await asyncio.sleep(interval)


async def _to_the_end(aw: Awaitable[T]) -> tuple[T, bool]:
    """Await `aw` to its end even if this task is cancelled meanwhile (again and again);
    returns its value and whether a cancellation was swallowed, for the caller to re-raise.
    Only for bounded work: every call inside has its own timeout."""
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(task), cancelled
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True


async def run_gate(
    gateway: GatewayConfig,
    session: aiohttp.ClientSession,
    timeout: float,
    poll_interval: float = 0.05,
    read_only: bool = False,
    newest_config_revision: Callable[[], Awaitable[int | None]] | None = None,
    progress: Progress | None = None,
    call_timeout: float = 5.0,
    sweep_older_than: float | None = SWEEP_AGE,
    redactor: Redactor | None = None,
    etcd_revision: Callable[[], Awaitable[int | None]] | None = None,
    etcd_failure: Callable[[], Reason | None] | None = None,
) -> SmokeResult:
    """Run the gate for one gateway within `timeout` seconds (the canary's deletion, and
    the sweep of leftover canaries older than `sweep_older_than` seconds (None: no sweep),
    may take up to CLEANUP_TIMEOUT more each). When cancelled, the canary is still deleted,
    the verdict ("interrupted") is left in `progress.result`, and CancelledError is
    re-raised. Every text it returns or logs passes `redactor` (default: the gateway's own
    secrets), so an admin API that echoes the key never gets it relayed."""
    progress = progress or Progress(gateway.name)
    started = time.monotonic()
    deadline = started + timeout
    admin = AdminClient(gateway, session)
    scrub = (redactor or admin.redactor).scrub
    nonce = new_nonce()
    route_id, route, path, location = canary(nonce)
    put_task: asyncio.Task[ProbeResult] | None = None
    sweep_task: asyncio.Task[tuple[list[str], list[str]]] | None = None
    interrupted = cancelled = False
    result = SmokeResult(gateway.name, False, "starting", "", read_only=read_only)

    def phase(name: str, detail: str = "") -> None:
        progress.phase, progress.detail = name, scrub(detail)
        result.phase = name
        log.debug("smoke gateway=%s phase=%s %s", gateway.name, name, progress.detail)

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
                                f"data plane at {gateway.data_url} not answering after "
                                f"{time.monotonic() - started:.1f}s: {_describe(answer)}")
        if gateway.status_url is not None:
            phase("status ready", gateway.status_url)
            ready = await _poll(lambda t: read_ready(session, gateway.status_url or "", t),
                                deadline, max(poll_interval, 0.2), call_timeout)
            if not ready.ok:
                waited = time.monotonic() - started
                text = (f"gateway not ready: {gateway.status_url}/status/ready still answers "
                        f"{_describe(ready)} after {waited:.1f}s (its workers have not loaded "
                        "the config from etcd)") if ready.status is not None else (
                        f"status API at {gateway.status_url} not answering after {waited:.1f}s: "
                        f"{_describe(ready)} (not enabled? it needs APISIX >= 3.13)")
                raise GateError("status ready", ready.reason or Reason.HTTP,
                                text + "; no canary written")
        if read_only:
            result.message = await _judge_read_only(
                gateway, session, deadline, poll_interval, call_timeout,
                newest_config_revision, phase, result, etcd_revision, etcd_failure)
            result.ok = True
            phase("done")
            return result
        if gateway.data_url is None:
            raise GateError("write", Reason.PROTOCOL,
                            "no data_url configured: the canary cannot be checked "
                            "(set data_url, or use --read-only)")
        if sweep_older_than is not None:  # beside the write and the wait, off their path
            sweep_task = asyncio.create_task(
                sweep_leftovers(admin, sweep_older_than, call_timeout, keep=route_id))
        phase("write", route_id)
        while True:
            # Shielded: on a signal the write finishes first, so the delete cannot overtake it.
            put_task = asyncio.ensure_future(
                admin.put_route(route_id, route, _left(deadline, call_timeout, 0.1)))
            put = await asyncio.shield(put_task)
            if put.ok or not _never_sent(put) or \
                    time.monotonic() + WRITE_RETRY >= deadline:
                break
            # The admin API is not up yet (nothing was sent): it may be starting too.
            await asyncio.sleep(WRITE_RETRY)
        if not put.ok:
            if put.reason is Reason.AUTH:
                text = (f"admin API rejected the admin key ({_describe(put)}): check "
                        "admin_key_file / admin_key_env for this gateway")
            elif _never_sent(put):
                text = f"admin API at {gateway.admin_url} unreachable: {_describe(put)}"
            else:
                text = f"admin API failed writing the canary: {_describe(put)}"
            raise GateError("write", put.reason or Reason.HTTP, text)
        result.admin_write_seconds = put.duration
        written_at = time.monotonic()
        phase("propagate", path)
        while True:
            last = await fetch(session, f"{gateway.data_url}{path}",
                               _left(deadline, call_timeout))
            if last.status == 302 and last.location == location:
                result.sync_seconds = time.monotonic() - written_at
                result.served_at = time.time()
                break
            if time.monotonic() + poll_interval >= deadline:
                raise GateError("propagate", Reason.TIMEOUT,
                                await _not_served(admin, route_id, last,
                                                  time.monotonic() - written_at, call_timeout))
            await asyncio.sleep(poll_interval)
        result.ok = True
        result.message = (f"canary served after {result.sync_seconds * 1000:.0f} ms "
                          f"(admin write {put.duration * 1000:.0f} ms)")
        phase("done")
    except GateError as err:
        result.ok, result.reason, result.message = False, err.reason, err.message
    except asyncio.CancelledError:
        result.ok, result.message = False, "interrupted"
        interrupted = True
        raise
    finally:
        result.elapsed = time.monotonic() - started
        result.message = scrub(result.message)
        # Published before the cleanup: a second signal must not lose the verdict.
        progress.result = result
        if put_task is not None:
            result.canary_route = route_id
            deleted, cancelled = await _to_the_end(_cleanup(admin, route_id, put_task))
            result.canary_deleted = deleted
            if deleted is False:
                hint = ("a smoke run sweeps it once it is an hour old" if sweep_older_than
                        is not None else "delete it by hand")
                result.message += (f"; WARNING: canary route {route_id} could not be deleted "
                                   f"({hint})")
            if deleted is None:
                result.canary_route = None  # nothing stored, or nothing known to be
            if cancelled:  # a signal during the cleanup: the verdict stands, the task ends
                interrupted = True
        if sweep_task is not None:
            await _finish_sweep(sweep_task, result, interrupted)
        result.message = scrub(result.message)
        if cancelled:
            raise asyncio.CancelledError
    return result


async def _finish_sweep(task: asyncio.Task[tuple[list[str], list[str]]], result: SmokeResult,
                        interrupted: bool) -> None:
    """Wait for the sweep (bounded by CLEANUP_TIMEOUT) and report it; after a signal it is
    cancelled instead: leftovers wait for the next run."""
    if interrupted:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return
    try:
        result.swept, result.sweep_failed = await task
    except asyncio.CancelledError:
        task.cancel()
        raise
    if result.swept:
        result.message += (f"; swept {len(result.swept)} leftover canary route(s): "
                           f"{', '.join(result.swept[:5])}")
    if result.sweep_failed:
        result.message += ("; WARNING: leftover canary route(s) not deleted: "
                           f"{', '.join(result.sweep_failed[:5])}")


def _listed_routes(body: object) -> list[tuple[str, dict[str, Any]]]:
    """(id, route) of every route in a list answer (APISIX 3 `list`, APISIX 2 `node.nodes`)."""
    if not isinstance(body, dict):
        return []
    items = body.get("list")
    if items is None and isinstance(body.get("node"), dict):
        items = body["node"].get("nodes")
    routes = []
    for item in items if isinstance(items, list) else []:
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict):
            continue
        key = item.get("key")
        route_id = value.get("id") or (key.rsplit("/", 1)[-1] if isinstance(key, str) else "")
        if isinstance(route_id, str):
            routes.append((route_id, value))
    return routes


async def sweep_leftovers(
    admin: AdminClient, older_than: float, call_timeout: float, keep: str = "",
    now: float | None = None,
) -> tuple[list[str], list[str]]:
    """Delete canaries this tool left behind: ids of the dated canary shape whose route is
    exactly the canary's (uri and redirect), written more than `older_than` seconds ago.
    Returns (deleted, not deleted); bounded by CLEANUP_TIMEOUT, never raises for the gate."""
    swept: list[str] = []
    failed: list[str] = []
    now = time.time() if now is None else now
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            listing = await admin.list_routes(min(call_timeout, CLEANUP_TIMEOUT))
            if not listing.ok:
                return swept, failed
            leftovers = []
            for route_id, route in _listed_routes(listing.body):
                written = canary_written_at(route_id)
                if written is None or route_id == keep or now - written < older_than:
                    continue
                _, _, path, location = canary(route_id.removeprefix(CANARY_ROUTE_PREFIX))
                plugins = route.get("plugins")
                redirect = plugins.get("redirect") if isinstance(plugins, dict) else None
                if route.get("uri") != path or not isinstance(redirect, dict) or \
                        redirect.get("uri") != location:
                    continue  # our naming, but not our route: never touched
                leftovers.append(route_id)
            for start in range(0, len(leftovers), SWEEP_BATCH):
                batch = leftovers[start:start + SWEEP_BATCH]
                answers = await asyncio.gather(*(
                    admin.delete_route(route_id, min(call_timeout, CLEANUP_TIMEOUT))
                    for route_id in batch))
                for route_id, answer in zip(batch, answers, strict=True):
                    (swept if answer.ok else failed).append(route_id)
    except TimeoutError:
        pass
    if swept:
        log.info("leftover canaries swept gateway=%s routes=%s", admin.gateway.name,
                 ",".join(swept))
    return swept, failed


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
        return Served(None, error=_classify(exc)[1])


def _seen(last: Served) -> str:
    if last.status is None:
        return last.error or "no answer"
    if last.status == 302:
        return f"302 to {last.location!r}, not the canary's Location"
    if last.said.startswith(str(last.status)):
        return last.said
    return f"{last.status} {last.said}".strip()


async def _not_served(admin: AdminClient, route_id: str, last: Served, waited: float,
                      call_timeout: float) -> str:
    """Why the canary was not served, in words. Asks the admin API (a shim lists nothing
    of what it accepted) and the gateway's metrics (which revision it has loaded)."""
    message = f"canary written, data plane still answers {_seen(last)} after {waited:.1f}s"
    budget = min(call_timeout, DIAGNOSE_TIMEOUT)
    metrics_url = admin.gateway.metrics_url

    async def metrics() -> GatewayMetrics | None:
        if metrics_url is None:
            return None
        return (await scrape_metrics(admin.session, metrics_url, budget))[1]

    listing, stored, loaded = await asyncio.gather(
        admin.list_routes(budget), admin.get_route(route_id, budget), metrics())
    body = listing.body if isinstance(listing.body, dict) else {}
    if listing.status == 404 and body.get("message") == "Key not found":
        return message + ("; the admin API lists no routes although it accepted the write: "
                          "its store is not the etcd the data plane watches (an etcd-adapter "
                          "shim?)")
    if loaded is None:
        return message
    if loaded.etcd_reachable == 0:
        message += "; the gateway reports etcd unreachable (apisix_etcd_reachable 0)"
    node = stored.body if stored.ok and isinstance(stored.body, dict) else {}
    revision = node.get("modifiedIndex")
    have = loaded.max_modify_index
    if have is None or not isinstance(revision, int) or have >= revision:
        return message
    if have == 0:
        return message + (f"; the gateway reports no config loaded (modify index 0) while the "
                          f"canary is at revision {revision}: it is not applying etcd changes "
                          "(workers that never loaded, or a stuck watch)")
    return message + (f"; the gateway has loaded config up to revision {have:.0f} but the "
                      f"canary is at revision {revision}: it stopped applying etcd changes "
                      "(a stuck watch?)")


async def _cleanup(admin: AdminClient, route_id: str,
                   put_task: asyncio.Task[ProbeResult]) -> bool | None:
    """Delete the canary once its write has finished. True: gone; False: written and not
    deleted; None: nothing stored, or a failed write (a 503, a timeout) whose delete failed
    too, so nobody knows whether a canary exists."""
    put = await put_task  # bounded by its own timeout
    if not put.ok and _stored_nothing(put):
        return None
    deleted = await admin.delete_route(route_id, CLEANUP_TIMEOUT)
    if deleted.ok:
        return True
    if put.ok:
        log.warning("canary not deleted gateway=%s route=%s reason=%s detail=%s",
                    admin.gateway.name, route_id, deleted.reason, deleted.detail)
        return False
    log.info("canary write failed and its delete too gateway=%s route=%s reason=%s; a "
             "canary that landed anyway is swept by a later run", admin.gateway.name,
             route_id, deleted.reason)
    return None


async def _judge_read_only(
    gateway: GatewayConfig,
    session: aiohttp.ClientSession,
    deadline: float,
    poll_interval: float,
    call_timeout: float,
    newest_config_revision: Callable[[], Awaitable[int | None]] | None,
    phase: Callable[[str, str], None],
    result: SmokeResult,
    etcd_revision: Callable[[], Awaitable[int | None]] | None = None,
    etcd_failure: Callable[[], Reason | None] | None = None,
) -> str:
    """Read-only verdict: the status API says ready and the config lag reaches 0.
    Returns the success message; raises GateError otherwise. A gateway that reports no
    possible revision (NaN, negative, beyond etcd's current revision) fails at once, with
    reason protocol; one that reports more than etcd's newest config is not in sync."""
    ready = "ready" if gateway.status_url is not None else ""
    if gateway.metrics_url is None or newest_config_revision is None:
        if not ready:
            raise GateError("read-only", Reason.PROTOCOL,
                            "read-only needs status_url or metrics_url for this gateway")
        return "/status/ready answers 200 (read-only; no metrics_url, config lag not checked)"
    phase("config lag", gateway.metrics_url)
    while True:
        scraped, metrics = await scrape_metrics(session, gateway.metrics_url,
                                                _left(deadline, call_timeout))
        etcd_timed_out = False
        try:  # bounded by the gate's deadline, whatever the etcd client's own timeout
            async with asyncio.timeout(max(0.05, deadline - time.monotonic())):
                newest = await newest_config_revision()
        except TimeoutError:
            newest, etcd_timed_out = None, True
        loaded = metrics.max_modify_index if metrics is not None else None
        problem = revision_problem(loaded)
        current = await etcd_revision() if etcd_revision is not None and loaded is not None \
            and not problem and newest is not None and loaded > newest else None
        if problem is None and current is not None and loaded is not None and loaded > current:
            problem = f"{loaded:.0f} is beyond etcd's current revision {current}"
        if problem:
            raise GateError("config lag", Reason.PROTOCOL,
                            f"gateway metrics at {gateway.metrics_url} report a loaded config "
                            f"revision that cannot be: {problem} (a broken exporter, or a "
                            "gateway on another etcd)")
        result.config_lag = lag = config_lag(newest, loaded)
        if lag == 0:
            text = "config lag 0 revisions" + (", /status/ready answers 200" if ready else "")
            return text + " (read-only)"
        if time.monotonic() + max(poll_interval, 0.2) >= deadline:
            if metrics is None:
                raise GateError("config lag", scraped.reason or Reason.HTTP,
                                f"gateway metrics at {gateway.metrics_url} unreadable: "
                                f"{_describe(scraped)}")
            if newest is None:
                failed = Reason.TIMEOUT if etcd_timed_out else (
                    etcd_failure() if etcd_failure is not None else None) or Reason.REFUSED
                said = "no answer from etcd by the deadline" if failed is Reason.TIMEOUT \
                    else f"etcd failed ({failed.value})"
                raise GateError("config lag", failed,
                                f"cannot read the newest config revision from etcd: {said} "
                                "(etcd.endpoints down or overloaded?)")
            if loaded is None:
                raise GateError("config lag", Reason.PROTOCOL,
                                f"gateway metrics at {gateway.metrics_url} have no "
                                "apisix_etcd_modify_indexes: the loaded config is unknown")
            if loaded > newest:
                raise GateError("config lag", Reason.TIMEOUT,
                                f"the gateway reports config up to revision {loaded:.0f}, but "
                                f"the newest gateway config in etcd is at revision {newest}: "
                                "it holds config etcd no longer has (deletes not applied? "
                                "another etcd?)")
            raise GateError("config lag", Reason.TIMEOUT,
                            f"config lag still {lag:.0f} revisions at the deadline: the "
                            f"gateway has loaded config up to revision {loaded:.0f}, etcd "
                            f"holds gateway config at revision {newest}: it stopped applying "
                            "etcd changes (a stuck watch?)")
        await asyncio.sleep(max(poll_interval, 0.2))
