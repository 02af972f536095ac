"""The gateway jobs: admin-call probes, gateway state, periodic smoke. They observe and
return `GatewayPoll` / `SmokeRun` results; the reducer applies them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from watchdog.config import Config, GatewayConfig
from watchdog.gateway.admin import AdminClient
from watchdog.gateway.smoke import SmokeResult, run_gate
from watchdog.gateway.status import GatewayMetrics, config_lag, read_ready, scrape_metrics
from watchdog.httpprobe import make_session
from watchdog.results import ProbeResult
from watchdog.scheduler import Job
from watchdog.shard import Shard

log = logging.getLogger(__name__)

NewestRevision = Callable[[], Awaitable[int | None]]


@dataclass(frozen=True, slots=True)
class GatewayPoll:
    """One round of checks of one gateway. `scraped` is False when no metrics_url is set
    (then the three state fields stay as they were)."""

    name: str
    admin: ProbeResult
    ready: bool | None = None
    scraped: bool = False
    etcd_reachable: float | None = None
    loaded_revision: float | None = None
    config_lag: float | None = None


@dataclass(frozen=True, slots=True)
class SmokeRun:
    """One periodic smoke probe of one gateway."""

    name: str
    result: SmokeResult


class GatewayJobs:
    """One admin/state job and one smoke job per gateway, sharing one HTTP session."""

    def __init__(self, config: Config, newest_config_revision: NewestRevision) -> None:
        self.config = config
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

    def jobs(self) -> list[Job]:
        jobs: list[Job] = []
        etcd = self.config.etcd
        for gw in Shard.of(self.config).gateways(self.config.gateways):
            interval = gw.interval or etcd.interval
            timeout = gw.timeout or etcd.timeout
            jobs.append(Job(f"gateway:{gw.name}", interval, timeout * 2 + 1.0,
                            self._poll_job(gw, timeout)))
            if self.config.smoke.interval > 0 and gw.data_url is not None:
                smoke = self.config.smoke
                jobs.append(Job(f"smoke:{gw.name}", smoke.interval,
                                smoke.timeout + 15.0, self._smoke_job(gw)))
        return jobs

    def _poll_job(self, gw: GatewayConfig, timeout: float) -> Callable[[], Awaitable[object]]:
        async def run() -> GatewayPoll:
            return await self.poll(gw, timeout)
        return run

    def _smoke_job(self, gw: GatewayConfig) -> Callable[[], Awaitable[object]]:
        async def run() -> SmokeRun:
            return await self.smoke(gw)
        return run

    async def poll(self, gw: GatewayConfig, timeout: float) -> GatewayPoll:
        """Admin-call probe, /status/ready and the gateway's metrics, concurrently."""
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
        poll = GatewayPoll(name=gw.name, admin=called,
                           ready=ready_result.ok if ready_result is not None else None)
        if state_result is not None:
            scraped, newest = state_result
            loaded = scraped.max_modify_index if scraped else None
            poll = GatewayPoll(
                name=gw.name, admin=called, ready=poll.ready, scraped=True,
                etcd_reachable=scraped.etcd_reachable if scraped else None,
                loaded_revision=loaded, config_lag=config_lag(newest, loaded),
            )
        return poll

    async def smoke(self, gw: GatewayConfig) -> SmokeRun:
        """A periodic canary, exported as smoke success and sync seconds."""
        started = time.monotonic()
        result = await run_gate(
            gw, self.session, timeout=self.config.smoke.timeout,
            poll_interval=self.config.smoke.poll_interval,
            call_timeout=gw.timeout or self.config.etcd.timeout,
        )
        if not result.ok:
            log.warning("smoke failed gateway=%s phase=%s reason=%s: %s", gw.name,
                        result.phase, result.reason, result.message)
        else:
            log.info("smoke passed gateway=%s sync_ms=%.0f total_ms=%.0f", gw.name,
                     (result.sync_seconds or 0) * 1000, (time.monotonic() - started) * 1000)
        return SmokeRun(gw.name, result)
