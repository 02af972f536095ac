"""An APISIX 3.x-compatible simulated gateway backed by real etcd.

APISIX needs OpenResty, which the lab cannot run, so this stand-in reproduces
what a monitor sees of a gateway: the Admin API and its etcd layout, the
per-worker watch fan-out on etcd (through the JSON gateway, as lua-resty-etcd
does), data-plane answers, the status API and the Prometheus endpoint, plus
switchable failure modes for rehearsals.

Run it as a process with `python -m watchdog.lab.gateway_sim --etcd URL ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import web
from yarl import URL

from watchdog.lab.sim_admin import AdminApi, encode
from watchdog.lab.sim_etcd import EtcdError, EtcdGateway, b64, describe, header_revision, range_end
from watchdog.lab.sim_state import (
    HTTP_DIRS,
    INDEXED_DIRS,
    Item,
    RequestView,
    Worker,
    find_route,
    pick_node,
    upstream_nodes,
    version_at_least,
)

log = logging.getLogger("watchdog.lab.gateway_sim")

KNOWN_FAULTS: frozenset[str] = frozenset({"init-hang", "watch-leak", "slow-admin", "stale", "shim",
                                         "echo-key", "nan-index"})
SYNC_MODES = ("legacy", "modern")
METRICS_PATH = "/apisix/prometheus/metrics"
DEFAULT_ADMIN_KEY = "edd1c9f034335f136f87ad84b625c8f1"  # config.yaml default up to 3.9.x
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length",
})
REASONS = {
    301: "Moved Permanently", 302: "Moved Temporarily", 307: "Temporary Redirect",
    308: "Permanent Redirect", 502: "Bad Gateway", 503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}


@dataclass(kw_only=True)
class SimConfig:
    """Settings of one simulated gateway (APISIX config.yaml, reduced to what matters here)."""

    name: str = "gw-1"
    etcd_endpoints: list[str] = field(default_factory=list)
    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    etcd_user: str | None = None
    etcd_password: str | None = None
    prefix: str = "/apisix"
    admin_key: str = DEFAULT_ADMIN_KEY
    workers: int = 4
    sync_mode: Literal["legacy", "modern"] = "modern"
    faults: set[str] = field(default_factory=set)
    version: str = "3.9.1"
    admin_delay: float = 0.5
    host: str = "127.0.0.1"
    admin_port: int = 0
    data_port: int = 0
    status_port: int = 0
    metrics_port: int = 0
    hostname: str = field(default_factory=socket.gethostname)
    etcd_timeout: float = 30.0  # etcd.timeout
    watch_timeout: float = 50.0  # etcd.watch_timeout
    leak_interval: float = 2.0  # watch reconnect period under the watch-leak fault
    resync_delay: float = 5.0  # etcd.resync_delay (plus up to 50 % jitter)
    health_check_timeout: float = 10.0  # etcd.health_check_timeout: skip a failed endpoint
    upstream_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.etcd_endpoints:
            raise ValueError("etcd_endpoints: at least one etcd URL is required")
        for url in self.etcd_endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"etcd endpoint {url!r} must start with http:// or https://")
        if self.sync_mode not in SYNC_MODES:
            raise ValueError(f"sync_mode {self.sync_mode!r}: choose one of {', '.join(SYNC_MODES)}")
        self.faults = set(self.faults)
        check_faults(self.faults)
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.admin_delay < 0:
            raise ValueError("admin_delay must not be negative")
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"host {self.host!r}: the simulator only listens on loopback")
        self.prefix = "/" + self.prefix.strip("/")


def check_faults(faults: Iterable[str]) -> None:
    unknown = sorted(set(faults) - KNOWN_FAULTS)
    if unknown:
        raise ValueError(
            f"unknown fault(s): {', '.join(unknown)}; choose from {', '.join(sorted(KNOWN_FAULTS))}"
        )


@dataclass
class _WatchState:
    """One watch loop's position and the streams it leaked."""

    next_rev: int
    created: bool = False
    leaked: list[aiohttp.ClientResponse] = field(default_factory=list)


class GatewaySim:
    """One simulated APISIX node: admin, data, status and metrics ports, N workers."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._faults: frozenset[str] = frozenset(config.faults)
        self._admin_delay = config.admin_delay
        self.etcd = EtcdGateway(
            config.etcd_endpoints,
            ca_file=config.ca_file,
            cert_file=config.cert_file,
            key_file=config.key_file,
            user=config.etcd_user,
            password=config.etcd_password,
            timeout=config.etcd_timeout,
            health_check_timeout=config.health_check_timeout,
        )
        self.workers = [Worker(i, config.prefix) for i in range(config.workers)]
        self.shim_store: dict[str, dict[str, Any]] = {}
        self.shim_revision = int(time.time())
        self.live_watches = 0
        self.leaked_watches = 0
        self.reloads = 0  # full reloads forced by compaction or an etcd restart
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runners: list[web.AppRunner] = []
        self._ports: dict[str, int] = {}
        self._fault_signal: asyncio.Future[None] | None = None
        self._worker_turn = itertools.count()
        self._metrics_turn = itertools.count()
        self._upstream_turns: Counter[str] = Counter()
        self._http_status: Counter[tuple[str, ...]] = Counter()
        self._requests_total = 0
        self._upstream_session: aiohttp.ClientSession | None = None
        self._started = False
        self._stopping = False

    # -- public surface ----------------------------------------------------

    @property
    def faults(self) -> frozenset[str]:
        return self._faults

    @property
    def admin_delay(self) -> float:
        return self._admin_delay

    @property
    def admin_delay_now(self) -> float:
        """The latency added to each admin call right now."""
        return self._admin_delay if "slow-admin" in self._faults else 0.0

    def _url(self, which: str) -> str:
        if which not in self._ports:
            raise RuntimeError("the simulator is not started")
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._ports[which]}"

    @property
    def admin_url(self) -> str:
        """Base URL of the Admin API port (append /apisix/admin/...)."""
        return self._url("admin")

    @property
    def data_url(self) -> str:
        return self._url("data")

    @property
    def status_url(self) -> str:
        """Base URL of the status API (append /status or /status/ready)."""
        return self._url("status")

    @property
    def metrics_url(self) -> str:
        return self._url("metrics") + METRICS_PATH

    @property
    def ready(self) -> bool:
        """Every worker has loaded the full configuration once (what /status/ready reports)."""
        return all(w.loaded for w in self.workers)

    @property
    def expected_watches(self) -> int:
        """Watch streams this gateway holds on etcd when healthy."""
        per_worker = len(HTTP_DIRS) if self.config.sync_mode == "legacy" else 1
        return per_worker * len(self.workers)

    def set_faults(self, faults: Iterable[str], admin_delay: float | None = None) -> None:
        """Switch fault modes at run time (and optionally the slow-admin delay)."""
        new = frozenset(faults)
        check_faults(new)
        if admin_delay is not None:
            if admin_delay < 0:
                raise ValueError("admin_delay must not be negative")
            self._admin_delay = admin_delay
        old, self._faults = self._faults, new
        if old != new:
            log.info("%s: faults %s -> %s", self.config.name, sorted(old), sorted(new))
        if "stale" in old and "stale" not in new and self._started and not self._stopping:
            for worker in self.workers:
                if worker.loaded:
                    self._spawn(self._resync(worker))
        self._signal_faults()

    def fault_state(self) -> dict[str, Any]:
        return {"faults": sorted(self._faults), "admin_delay": self._admin_delay}

    def state(self) -> dict[str, Any]:
        """What GET /__sim/state shows: faults, watches and each worker's sync position."""
        return {
            "name": self.config.name,
            "version": self.config.version,
            "sync_mode": self.config.sync_mode,
            **self.fault_state(),
            "ready": self.ready,
            "live_watches": self.live_watches,
            "leaked_watches": self.leaked_watches,
            "reloads": self.reloads,
            "expected_watches": self.expected_watches,
            "workers": [
                {
                    "id": w.id, "loaded": w.loaded, "applied_index": w.applied_index,
                    "revision": w.revision, "routes": len(w.tables.get("routes", {})),
                }
                for w in self.workers
            ],
        }

    def describe(self) -> dict[str, Any]:
        """The JSON line the process prints when ready."""
        return {
            "name": self.config.name,
            "pid": os.getpid(),
            "version": self.config.version,
            "sync_mode": self.config.sync_mode,
            "workers": len(self.workers),
            "faults": sorted(self._faults),
            "admin_url": self.admin_url,
            "data_url": self.data_url,
            "status_url": self.status_url,
            "metrics_url": self.metrics_url,
            "etcd": list(self.config.etcd_endpoints),
        }

    def next_shim_revision(self) -> int:
        self.shim_revision += 1
        return self.shim_revision

    async def wait_ready(self, timeout: float = 10.0) -> None:
        await self._wait(lambda: self.ready, timeout, "all workers loaded")

    async def wait_watching(self, timeout: float = 10.0) -> None:
        """Until every watch stream of every worker has been created on etcd."""
        await self._wait(
            lambda: self.live_watches >= self.expected_watches, timeout, "watches created"
        )

    async def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not check():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.config.name}: {what} not reached in {timeout}s")
            await asyncio.sleep(0.02)

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> GatewaySim:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Like `apisix start`: check etcd, write init_dir placeholders, listen, load, watch."""
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        self._fault_signal = asyncio.get_running_loop().create_future()
        try:
            await self.etcd.open()
            await self.etcd.find_healthy()
            await self.etcd.auth_headers()
            await self._init_dirs()
            self._upstream_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=False, limit=0), auto_decompress=False
            )
            await self._serve()
            if "init-hang" in self._faults:
                self._spawn(self._initial_load())
            else:
                try:
                    await self._load_all()
                except EtcdError as err:
                    log.warning("%s: first load failed (%s); retrying", self.config.name, err)
                    self._spawn(self._initial_load())
        except BaseException:
            await self.stop()
            raise
        log.info("%s: admin %s data %s", self.config.name, self.admin_url, self.data_url)

    async def stop(self) -> None:
        """Stop listening, cancel and await every task, close every session."""
        if self._stopping:
            return
        self._stopping = True
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
        if self._upstream_session is not None:
            await self._upstream_session.close()
        await self.etcd.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task failed", self.config.name, exc_info=task.exception())

    def _signal_faults(self) -> None:
        """Wake everything waiting on a fault change (watch polls, a hung init)."""
        if self._fault_signal is None:
            return
        if not self._fault_signal.done():
            self._fault_signal.set_result(None)
        self._fault_signal = asyncio.get_running_loop().create_future()

    async def _init_dirs(self) -> None:
        """`apisix init_etcd`: an "init_dir" placeholder per HTTP directory, if absent."""
        for directory in HTTP_DIRS:
            await self.etcd.put_if_absent(f"{self.config.prefix}/{directory}/", "init_dir")

    async def _serve(self) -> None:
        admin = AdminApi(self).build_app()
        data = web.Application()
        data.router.add_route("*", "/{tail:.*}", self._handle_data)
        status = web.Application()
        status.router.add_get("/status", self._handle_status)
        status.router.add_get("/status/ready", self._handle_ready)
        metrics = web.Application()
        metrics.router.add_get(METRICS_PATH, self._handle_metrics)
        ports = {
            "admin": (admin, self.config.admin_port),
            "data": (data, self.config.data_port),
            "status": (status, self.config.status_port),
            "metrics": (metrics, self.config.metrics_port),
        }
        for which, (app, port) in ports.items():
            app.on_response_prepare.append(self._server_header)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            self._runners.append(runner)
            sock = self._listen(port)
            self._ports[which] = int(sock.getsockname()[1])
            await web.SockSite(runner, sock).start()

    def _listen(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, port))
        except OSError:
            sock.close()
            raise
        return sock

    async def _server_header(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = f"APISIX/{self.config.version}"

    # -- config sync -------------------------------------------------------

    async def _initial_load(self) -> None:
        while True:
            while "init-hang" in self._faults:
                assert self._fault_signal is not None
                await asyncio.shield(self._fault_signal)
            try:
                await self._load_all()
                return
            except EtcdError as err:
                log.warning("%s: loading config failed: %s", self.config.name, err)
                await self._backoff()

    async def _load_all(self) -> None:
        """One range over the whole prefix, shared by every worker, then the watches."""
        prefix = self.config.prefix
        kvs, revision = await self.etcd.range(prefix, range_end(prefix))
        for worker in self.workers:
            worker.load(kvs, revision)
            worker.loaded = True
        for worker in self.workers:
            if self.config.sync_mode == "modern":
                key = prefix + "/"
                self._spawn(self._watch_loop(worker, key, None, revision))
            else:
                for directory in HTTP_DIRS:
                    key = f"{prefix}/{directory}"
                    self._spawn(self._watch_loop(worker, key, (directory,), revision))

    async def _backoff(self) -> None:
        delay = self.config.resync_delay
        await asyncio.sleep(delay + random.uniform(0, delay / 2))

    async def _resync(self, worker: Worker) -> None:
        """Catch up after the stale fault: a full read replaces the worker's tables."""
        while True:
            try:
                prefix = self.config.prefix
                kvs, revision = await self.etcd.range(prefix, range_end(prefix))
                if "stale" not in self._faults:
                    worker.load(kvs, revision)
                return
            except EtcdError as err:
                log.warning("%s: resync of worker %d failed: %s", self.config.name, worker.id, err)
                await self._backoff()

    async def _watch_loop(
        self, worker: Worker, key: str, dirs: tuple[str, ...] | None, revision: int
    ) -> None:
        """One long-poll watch on `key`, re-opened after watch_timeout or an error."""
        state = _WatchState(next_rev=revision + 1)
        session = self.etcd.new_watch_session()
        try:
            while True:
                try:
                    await self._watch_once(worker, session, key, dirs, state)
                except (EtcdError, aiohttp.ClientError, OSError, ValueError) as err:
                    log.warning(
                        "%s: worker %d watch %s: %s", self.config.name, worker.id, key,
                        describe(err),
                    )
                    await self._backoff()
        finally:
            for resp in state.leaked:
                _drop(resp)
            self.leaked_watches -= len(state.leaked)
            await session.close()

    async def _watch_once(
        self, worker: Worker, session: aiohttp.ClientSession, key: str,
        dirs: tuple[str, ...] | None, state: _WatchState,
    ) -> None:
        endpoint = self.etcd.first_healthy()
        end = range_end(key)
        body = {"create_request": {
            "key": b64(key), "range_end": b64(end), "start_revision": state.next_rev,
        }}
        headers = await self.etcd.auth_headers()
        timeout = aiohttp.ClientTimeout(sock_connect=self.config.etcd_timeout)
        try:
            # A member that accepts TCP but never answers (SIGSTOP) must not hold us forever.
            async with asyncio.timeout(self.config.watch_timeout):
                resp = await session.post(
                    endpoint + "/v3/watch", json=body, headers=headers, timeout=timeout
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            self.etcd.report_failure(endpoint)
            raise EtcdError(f"{endpoint}: {describe(err)}") from err
        if resp.status != 200:
            text = await resp.text()
            _drop(resp)
            raise EtcdError(f"watch answered {resp.status}: {text.strip()[:200]}")
        state.created = False
        reader = asyncio.create_task(self._read_watch(worker, resp, key, dirs, state))
        loop = asyncio.get_running_loop()
        started = loop.time()
        leak = False
        try:
            while not reader.done():
                leaking = "watch-leak" in self._faults
                interval = self.config.leak_interval if leaking else self.config.watch_timeout
                remaining = started + interval - loop.time()
                if remaining <= 0:
                    leak = leaking
                    break
                assert self._fault_signal is not None
                await asyncio.wait(
                    {reader, self._fault_signal}, timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            if reader.done():
                reader.result()
        finally:
            if not reader.done():
                reader.cancel()
                with suppress(asyncio.CancelledError):
                    await reader
            if state.created:
                self.live_watches -= 1
            if leak:
                # The fault: the old long poll is never cancelled, etcd keeps its stream.
                state.leaked.append(resp)
                self.leaked_watches += 1
            else:
                _drop(resp)

    async def _read_watch(
        self, worker: Worker, resp: aiohttp.ClientResponse, key: str,
        dirs: tuple[str, ...] | None, state: _WatchState,
    ) -> None:
        """Consume the newline-delimited watch stream until EOF or a reload."""
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                if line.strip() and await self._on_watch_message(
                    worker, json.loads(line), key, dirs, state
                ):
                    return

    async def _on_watch_message(
        self, worker: Worker, message: Mapping[str, Any], key: str,
        dirs: tuple[str, ...] | None, state: _WatchState,
    ) -> bool:
        """Handle one watch response; True when this long poll should end."""
        if "error" in message:
            error = message["error"]
            text = error.get("message") if isinstance(error, dict) else str(error)
            raise EtcdError(str(text))
        result = message.get("result") or {}
        compacted = int(result.get("compact_revision") or 0)
        if compacted:
            log.info("%s: worker %d: compacted at %d, reloading", self.config.name, worker.id,
                     compacted)
            await self._reload(worker, key, dirs, state)
            return True
        if result.get("canceled"):
            reason = str(result.get("cancel_reason") or "watch canceled")
            if "auth" in reason or "permission" in reason:
                await self.etcd.auth_headers(refresh=True)
            raise EtcdError(reason)
        revision = header_revision(result)
        if result.get("created"):
            if not state.created:
                state.created = True
                self.live_watches += 1
            if 0 < revision < worker.revision:
                log.info("%s: worker %d: etcd went back to revision %d, reloading",
                         self.config.name, worker.id, revision)
                await self._reload(worker, key, dirs, state)
                return True
        worker.revision = max(worker.revision, revision)
        stale = "stale" in self._faults
        for event in result.get("events") or []:
            mod_revision = int((event.get("kv") or {}).get("mod_revision", 0))
            state.next_rev = max(state.next_rev, mod_revision + 1)
            if not stale:
                worker.apply(event)
        return False

    async def _reload(
        self, worker: Worker, key: str, dirs: tuple[str, ...] | None, state: _WatchState
    ) -> None:
        """Full read of this watch's prefix (compaction, or etcd restarted)."""
        kvs, revision = await self.etcd.range(key, range_end(key))
        if "stale" not in self._faults:
            worker.load(kvs, revision, dirs)
        state.next_rev = revision + 1
        self.reloads += 1

    # -- data plane --------------------------------------------------------

    def _pick_worker(self) -> Worker:
        return self.workers[next(self._worker_turn) % len(self.workers)]

    async def _handle_data(self, request: web.Request) -> web.StreamResponse:
        self._requests_total += 1
        worker = self._pick_worker()
        host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else (
            request.host.split("]")[0] + "]")
        view = RequestView(
            method=request.method, host=host, path=request.path, query=request.query,
            headers=request.headers, scheme=request.scheme, request_uri=request.path_qs,
        )
        found = find_route(worker, view) if worker.loaded else None
        if found is None:
            return self._count(self._json(404, {"error_msg": "404 Route Not Found"}))
        route, pattern = found
        conf = route.value
        service = worker.get("services", conf["service_id"]) if "service_id" in conf else None
        if "service_id" in conf and service is None:
            return self._count(self._json(404, {"error_msg": "404 Route Not Found"}))
        service_conf = service.value if service and isinstance(service.value, dict) else {}
        plugins = {**(service_conf.get("plugins") or {}), **(conf.get("plugins") or {})}
        labels = (route.id, pattern, host if conf.get("host") or conf.get("hosts") else "",
                  service.id if service else "")
        redirect = plugins.get("redirect")
        if isinstance(redirect, dict):
            return self._count(self._redirect(redirect, view), labels)
        upstream = self._upstream_of(worker, route, conf, service, service_conf)
        if upstream is None:
            return self._count(self._error_page(502), labels)
        return await self._proxy(request, view, route, upstream, plugins, labels)

    def _upstream_of(
        self, worker: Worker, route: Item, conf: Mapping[str, Any], service: Item | None,
        service_conf: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """The route's upstream wins over upstream_id, then the service's."""
        owners = (route.key, service.key if service else "")
        for owner, source in zip(owners, (conf, service_conf), strict=True):
            if isinstance(source.get("upstream"), dict):
                return dict(source["upstream"], _key=f"{owner}#upstream")
            if source.get("upstream_id") is not None:
                item = worker.get("upstreams", str(source["upstream_id"]))
                if item is None or not isinstance(item.value, dict):
                    return None
                return dict(item.value, _key=item.key)
        return None

    def _redirect(self, conf: Mapping[str, Any], view: RequestView) -> web.Response:
        if conf.get("http_to_https") and view.scheme == "http":
            status = 301
            location = f"https://{view.host}{view.request_uri}"
        else:
            status = int(conf.get("ret_code", 302))
            target = str(conf.get("uri") or "")
            if conf.get("regex_uri") and isinstance(conf["regex_uri"], list):
                target = _regex_rewrite(conf["regex_uri"], view.path) or view.path
            location = _expand_vars(target, view)
            if conf.get("append_query_string") and view.query:
                joiner = "&" if "?" in location else "?"
                location += joiner + view.request_uri.partition("?")[2]
        resp = self._error_page(status)
        resp.headers["Location"] = location
        return resp

    async def _proxy(
        self, request: web.Request, view: RequestView, route: Item, upstream: dict[str, Any],
        plugins: Mapping[str, Any], labels: tuple[str, ...],
    ) -> web.StreamResponse:
        nodes = upstream_nodes(upstream)
        self._upstream_turns[upstream["_key"]] += 1
        target = pick_node(nodes, self._upstream_turns[upstream["_key"]])
        if target is None:
            return self._count(self._error_page(502), labels)
        host, port = target
        scheme = "https" if upstream.get("scheme") == "https" else "http"
        path, query = request.raw_path.partition("?")[::2]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        pass_host = upstream.get("pass_host", "pass")
        headers["Host"] = (
            f"{host}:{port}" if pass_host == "node"
            else str(upstream.get("upstream_host") or request.host) if pass_host == "rewrite"
            else request.host
        )
        rewrite = plugins.get("proxy-rewrite")
        if isinstance(rewrite, dict):
            if rewrite.get("uri"):
                path = _expand_vars(str(rewrite["uri"]), view)
            elif isinstance(rewrite.get("regex_uri"), list):
                path = _regex_rewrite(rewrite["regex_uri"], view.path) or path
            if rewrite.get("host"):
                headers["Host"] = str(rewrite["host"])
        peer = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For")
        headers.update({
            "X-Real-IP": peer,
            "X-Forwarded-For": f"{forwarded}, {peer}" if forwarded else peer,
            "X-Forwarded-Proto": request.scheme,
            "X-Forwarded-Host": view.host,
            "X-Forwarded-Port": str(self._ports["data"]),
        })
        url = URL(f"{scheme}://{host}:{port}{path}" + (f"?{query}" if query else ""),
                  encoded=True)
        limits = upstream.get("timeout") if isinstance(upstream.get("timeout"), dict) else {}
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=float(limits.get("connect", self.config.upstream_timeout)),
            sock_read=float(limits.get("read", self.config.upstream_timeout)),
        )
        body = await request.read()
        labels = (*labels, host)
        assert self._upstream_session is not None
        try:
            async with self._upstream_session.request(
                request.method, url, headers=headers, data=body or None, timeout=timeout,
                allow_redirects=False,
            ) as upstream_resp:
                payload = await upstream_resp.read()
                out = web.Response(status=upstream_resp.status, body=payload)
                for name, value in upstream_resp.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "server":
                        out.headers.add(name, value)
        except TimeoutError:
            return self._count(self._error_page(504), labels)
        except (aiohttp.ClientError, OSError) as err:
            log.info("%s: upstream %s:%d failed: %s", self.config.name, host, port, describe(err))
            return self._count(self._error_page(502), labels)
        return self._count(out, labels)

    def _count(self, resp: web.Response, labels: tuple[str, ...] = ()) -> web.Response:
        """apisix_http_status bookkeeping (code, route, matched_uri, host, service, node)."""
        route, uri, host, service, node = (*labels, "", "", "", "", "")[:5]
        self._http_status[(str(resp.status), route, uri, host, service, "", node)] += 1
        return resp

    def _json(self, status: int, body: Any) -> web.Response:
        return web.Response(
            status=status, body=encode(body).encode(), content_type="application/json"
        )

    def _error_page(self, status: int) -> web.Response:
        """nginx's error page, as APISIX answers a bare status."""
        title = f"{status} {REASONS.get(status, '')}".strip()
        text = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>openresty</center>\r\n"
            "<p><em>Powered by <a href=\"https://apisix.apache.org/\">APISIX</a>.</em></p>"
            "</body>\r\n</html>\r\n"
        )
        return web.Response(status=status, body=text.encode(), content_type="text/html")

    # -- status API --------------------------------------------------------

    async def _handle_status(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="text/plain")

    async def _handle_ready(self, request: web.Request) -> web.Response:
        for worker in self.workers:
            if not worker.loaded:
                error = f"worker id: {worker.id} has not received configuration"
                body = json.dumps({"status": "error", "error": error}, separators=(",", ":"))
                return web.Response(status=503, body=body.encode(), content_type="text/plain")
        return web.Response(body=b'{"status":"ok"}', content_type="text/plain")

    # -- Prometheus --------------------------------------------------------

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        """Computed at scrape time, as APISIX 3.9 does (etcd is asked on every scrape)."""
        reachable = 1
        x_etcd_index: int | None = None
        try:
            await self.etcd.version()
        except EtcdError as err:
            log.info("%s: etcd unreachable during scrape: %s", self.config.name, err)
            reachable = 0
        if reachable:
            with suppress(EtcdError):
                _, x_etcd_index = await self.etcd.range(f"{self.config.prefix}/phantomkey")
        worker = self.workers[next(self._metrics_turn) % len(self.workers)]
        indexes = {d: worker.max_modify_index(d) for d in INDEXED_DIRS}
        indexes["max_modify_index"] = max(indexes.values())
        if worker.tables.get("global_rules"):
            indexes["prev_index"] = worker.revision
        if x_etcd_index is not None:
            indexes["x_etcd_index"] = x_etcd_index
        shown: dict[str, object] = dict(indexes)
        if "nan-index" in self._faults:  # a broken exporter: not a revision at all
            shown = {k: ("NaN" if k != "x_etcd_index" else v) for k, v in indexes.items()}
        out = [
            "# HELP apisix_etcd_modify_indexes Etcd modify index for APISIX keys",
            "# TYPE apisix_etcd_modify_indexes gauge",
            *(f'apisix_etcd_modify_indexes{{key="{k}"}} {v}' for k, v in sorted(shown.items())),
            "# HELP apisix_etcd_reachable Config server etcd reachable from APISIX, "
            "0 is unreachable",
            "# TYPE apisix_etcd_reachable gauge",
            f"apisix_etcd_reachable {reachable}",
            "# HELP apisix_http_requests_total The total number of client requests",
            "# TYPE apisix_http_requests_total gauge",
            f"apisix_http_requests_total {self._requests_total}",
        ]
        if self._http_status:
            out += [
                "# HELP apisix_http_status HTTP status codes per service in APISIX",
                "# TYPE apisix_http_status counter",
            ]
            names = ("code", "route", "matched_uri", "matched_host", "service", "consumer",
                     "node")
            for values, count in sorted(self._http_status.items()):
                labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
                out.append(f"apisix_http_status{{{labels}}} {count}")
        node_labels = f'hostname="{_escape(self.config.hostname)}"'
        if version_at_least(self.config.version, 3, 13):
            node_labels += f',version="{_escape(self.config.version)}"'
        out += [
            "# HELP apisix_node_info Info of APISIX node",
            "# TYPE apisix_node_info gauge",
            f"apisix_node_info{{{node_labels}}} 1",
        ]
        return web.Response(
            body=("\n".join(out) + "\n").encode(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


def _drop(resp: aiohttp.ClientResponse) -> None:
    """Close a long poll's connection at once (no TLS close_notify wait), as a cancel does."""
    connection = resp.connection
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
    resp.close()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _expand_vars(template: str, view: RequestView) -> str:
    """nginx-style $uri/$request_uri/$host/$scheme/$arg_x in a redirect or rewrite target."""
    def var(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("arg_"):
            return view.query.get(name[4:], "")
        return {
            "uri": view.path, "request_uri": view.request_uri, "host": view.host,
            "scheme": view.scheme,
        }.get(name, "")

    return re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", var, template)


def _regex_rewrite(rule: list[Any], path: str) -> str | None:
    """regex_uri = [pattern, template] with $1-style groups."""
    if len(rule) < 2:
        return None
    match = re.search(str(rule[0]), path)
    if match is None:
        return None
    return re.sub(r"\$(\d+)", lambda g: match.group(int(g.group(1))) or "", str(rule[1]))


# -- process mode -------------------------------------------------------------


async def run_sim(
    config: SimConfig,
    ready: Callable[[GatewaySim], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run one gateway until SIGTERM/SIGINT (or `stop` is set); `ready` is called once up."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller stops us through `stop`
    try:
        async with GatewaySim(config) as sim:
            if ready is not None:
                ready(sim)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m watchdog.lab.gateway_sim",
        description="Run an APISIX 3.x-compatible simulated gateway on loopback.",
    )
    p.add_argument("--etcd", action="append", required=True, metavar="URL",
                   help="etcd client URL (repeat for several; the first healthy is used)")
    p.add_argument("--name", default="gw-1")
    p.add_argument("--admin-key", default=DEFAULT_ADMIN_KEY)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--sync-mode", choices=SYNC_MODES, default="modern")
    p.add_argument("--fault", action="append", default=[], choices=sorted(KNOWN_FAULTS))
    p.add_argument("--admin-delay", type=float, default=0.5, help="seconds, for slow-admin")
    p.add_argument("--apisix-version", default="3.9.1", help="APISIX version to imitate")
    p.add_argument("--prefix", default="/apisix")
    p.add_argument("--ca-file", help="CA bundle for https:// etcd endpoints")
    p.add_argument("--cert-file", help="client certificate for etcd (mTLS)")
    p.add_argument("--key-file", help="client key for etcd (mTLS)")
    p.add_argument("--etcd-user")
    p.add_argument("--etcd-password",
                   default=os.environ.get("WATCHDOG_SIM_ETCD_PASSWORD"),
                   help="defaults to $WATCHDOG_SIM_ETCD_PASSWORD")
    p.add_argument("--host", default="127.0.0.1")
    for port in ("admin", "data", "status", "metrics"):
        p.add_argument(f"--{port}-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--etcd-timeout", type=float, default=30.0)
    p.add_argument("--watch-timeout", type=float, default=50.0)
    p.add_argument("--ready-file", type=Path, help="also write the ready JSON line here")
    p.add_argument("--log-level", default="WARNING")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        name=args.name,
        etcd_endpoints=list(args.etcd),
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        etcd_user=args.etcd_user,
        etcd_password=args.etcd_password,
        prefix=args.prefix,
        admin_key=args.admin_key,
        workers=args.workers,
        sync_mode=args.sync_mode,
        faults=set(args.fault),
        version=args.apisix_version,
        admin_delay=args.admin_delay,
        host=args.host,
        admin_port=args.admin_port,
        data_port=args.data_port,
        status_port=args.status_port,
        metrics_port=args.metrics_port,
        etcd_timeout=args.etcd_timeout,
        watch_timeout=args.watch_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))

    def announce(sim: GatewaySim) -> None:
        line = json.dumps(sim.describe())
        if args.ready_file is not None:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(line + "\n")
            tmp.replace(args.ready_file)
        print(line, flush=True)

    try:
        asyncio.run(run_sim(config, announce))
    except (EtcdError, OSError) as err:
        print(f"gateway_sim: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
