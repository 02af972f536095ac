"""The state every part of a simulated gateway shares: its config and fault modes, the etcd
client, the workers' tables, watch counters, request counters, ports and background tasks."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from watchdog.lab.sim_config import METRICS_PATH, SimConfig, check_faults
from watchdog.lab.sim_etcd import EtcdGateway
from watchdog.lab.sim_state import HTTP_DIRS, Worker

log = logging.getLogger("watchdog.lab.gateway_sim")


class SimCore:
    """One simulated APISIX node's shared state; the parts (admin API, data plane, config
    sync, status API) read and update it, and `GatewaySim` runs them."""

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
        self.http_status: Counter[tuple[str, ...]] = Counter()  # apisix_http_status
        self.requests_total = 0
        self.ports: dict[str, int] = {}
        self.fault_signal: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.running = False

    def on_stale_cleared(self) -> None:
        """Called when the stale fault is switched off while running (the sync catches up)."""

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

    def url(self, which: str) -> str:
        if which not in self.ports:
            raise RuntimeError("the simulator is not started")
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.ports[which]}"

    @property
    def admin_url(self) -> str:
        """Base URL of the Admin API port (append /apisix/admin/...)."""
        return self.url("admin")

    @property
    def data_url(self) -> str:
        return self.url("data")

    @property
    def status_url(self) -> str:
        """Base URL of the status API (append /status or /status/ready)."""
        return self.url("status")

    @property
    def metrics_url(self) -> str:
        return self.url("metrics") + METRICS_PATH

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
        if "stale" in old and "stale" not in new and self.running:
            self.on_stale_cleared()
        self.signal_faults()

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

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: task failed", self.config.name, exc_info=task.exception())

    def signal_faults(self) -> None:
        """Wake everything waiting on a fault change (watch polls, a hung init)."""
        if self.fault_signal is None:
            return
        if not self.fault_signal.done():
            self.fault_signal.set_result(None)
        self.fault_signal = asyncio.get_running_loop().create_future()

    async def cancel_tasks(self) -> None:
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
