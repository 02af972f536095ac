"""The daemon's gateway jobs: admin-call probes, gateway state, periodic smoke."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from watchdog.config import Config, GatewayConfig
from watchdog.gateway.admin import AdminClient
from watchdog.gateway.smoke import run_gate
from watchdog.gateway.status import GatewayMetrics, config_lag, read_ready, scrape_metrics
from watchdog.httpprobe import make_session
from watchdog.metrics import WatchdogMetrics
from watchdog.results import ProbeResult
from watchdog.status import Status

log = logging.getLogger(__name__)

NewestRevision = Callable[[], Awaitable[int | None]]


class GatewayJobs:
    """One admin/state job and one smoke job per gateway, sharing one HTTP session."""

    def __init__(
        self,
        config: Config,
        status: Status,
        metrics: WatchdogMetrics,
        clock: Callable[[], float],
        newest_config_revision: NewestRevision,
    ) -> None:
        self.config = config
        self.status = status
        self.metrics = metrics
        self.clock = clock
        self.newest_config_revision = newest_config_revision
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # One connection per call, like blackbox_exporter: phases include the connect.
            self._session = make_session(
                connector=aiohttp.TCPConnector(force_close=True, limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def jobs(self) -> list[object]:
        from watchdog.daemon import Job

        jobs: list[object] = []
        etcd = self.config.etcd
        for gw in self.config.gateways:
            interval = gw.interval or etcd.interval
            timeout = gw.timeout or etcd.timeout
            jobs.append(Job(f"gateway:{gw.name}", interval, timeout * 2 + 1.0,
                            self._poll_job(gw, timeout)))
            if self.config.smoke.interval > 0 and gw.data_url is not None:
                smoke = self.config.smoke
                jobs.append(Job(f"smoke:{gw.name}", smoke.interval,
                                smoke.timeout + 15.0, self._smoke_job(gw)))
        return jobs

    def _poll_job(self, gw: GatewayConfig, timeout: float) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await self.poll(gw, timeout)
        return run

    def _smoke_job(self, gw: GatewayConfig) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await self.smoke(gw)
        return run

    async def poll(self, gw: GatewayConfig, timeout: float) -> None:
        """Admin-call probe, /status/ready and the gateway's metrics, concurrently."""
        view = self.status.gateways[gw.name]
        admin = AdminClient(gw, self.session)

        async def ready() -> ProbeResult | None:
            return await read_ready(self.session, gw.status_url, timeout) if gw.status_url \
                else None

        async def state() -> tuple[GatewayMetrics | None, int | None] | None:
            if not gw.metrics_url:
                return None
            (_, scraped), newest = await asyncio.gather(
                scrape_metrics(self.session, gw.metrics_url, timeout),
                self.newest_config_revision(),
            )
            return scraped, newest

        called, ready_result, state_result = await asyncio.gather(
            admin.get_missing_route(timeout), ready(), state()
        )
        view.admin[called.op] = called
        self.metrics.record_admin(gw.name, called)
        if not called.ok:
            log.info("admin call failed gateway=%s reason=%s detail=%s", gw.name,
                     called.reason, called.detail)
        if ready_result is not None:
            view.ready = ready_result.ok
        if state_result is not None:
            scraped, newest = state_result
            view.etcd_reachable = scraped.etcd_reachable if scraped else None
            view.loaded_revision = scraped.max_modify_index if scraped else None
            view.config_lag = config_lag(newest, view.loaded_revision)
        view.polled = True

    async def smoke(self, gw: GatewayConfig) -> None:
        """A periodic canary, exported as smoke success and sync seconds."""
        view = self.status.gateways[gw.name]
        started = time.monotonic()
        result = await run_gate(
            gw, self.session, timeout=self.config.smoke.timeout,
            poll_interval=self.config.smoke.poll_interval,
            call_timeout=gw.timeout or self.config.etcd.timeout,
        )
        view.smoke = result
        view.last_smoke = self.clock()
        if not result.ok:
            self.metrics.smoke_failures.labels(gw.name, (result.reason or "protocol")).inc()
            log.warning("smoke failed gateway=%s phase=%s reason=%s: %s", gw.name,
                        result.phase, result.reason, result.message)
        else:
            log.info("smoke passed gateway=%s sync_ms=%.0f total_ms=%.0f", gw.name,
                     (result.sync_seconds or 0) * 1000, (time.monotonic() - started) * 1000)
