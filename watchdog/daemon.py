"""The daemon: builds the jobs from the config, schedules them, and hands every result to
the reducer. It publishes the latest snapshot; it computes nothing itself."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from watchdog.config import Config
from watchdog.etcd.job import EtcdJob
from watchdog.events import log_changes
from watchdog.metrics import make_registry
from watchdog.reducer import Reducer
from watchdog.render import Renderer
from watchdog.scheduler import Job, run_every
from watchdog.snapshot import Snapshot
from watchdog.state import StateError, StateStore
from watchdog.tripwire import TripwireBank, TripwireSettings
from watchdog.webconfig import WebServerConfig

log = logging.getLogger(__name__)

STATE_SAVE_INTERVAL = 60.0


class Daemon:
    """Owns the jobs' tasks, the reducer (the latest snapshot) and the registry."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        tw = config.tripwire
        self.tripwire = TripwireBank(
            TripwireSettings(
                factor=tw.factor, warmup=tw.warmup, clear_factor=tw.clear_factor,
                hold=tw.hold, min_streams=tw.min_streams,
            ),
            clock=clock,
        )
        self.reducer = Reducer(config, self.tripwire, clock)
        self.registry, self.metrics = make_registry(self.snapshot, registry)
        self.renderer = Renderer(self.registry, self.snapshot, config.etcd.interval,
                                 self.metrics.renders.inc)
        self.state = StateStore(Path(config.state_dir))
        snapshot = self.snapshot
        self.etcd = EtcdJob(
            config.etcd, targets=lambda: snapshot().targets,
            up=lambda: [p.target for p in snapshot().peers.values() if p.up],
        )
        self.gateways: object | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def snapshot(self) -> Snapshot:
        """The latest snapshot: what every output reads."""
        return self.reducer.snapshot

    def deliver(self, result: object) -> None:
        """Apply one job result and log what changed."""
        prev, cur = self.reducer.apply(result)
        log_changes(prev, cur)

    async def poll_etcd(self) -> Snapshot:
        """One etcd cycle, applied now (what the etcd job does each interval)."""
        self.deliver(await self.etcd.run())
        return self.snapshot()

    # -- lifecycle -----------------------------------------------------------

    def load_state(self) -> None:
        try:
            data = self.state.load()
        except StateError as err:
            log.warning("cannot read state dir=%s error=%s", self.config.state_dir, err)
            return
        if data and isinstance(data.get("tripwire"), dict):
            for warning in self.tripwire.load_dict(
                data["tripwire"], max_age=self.config.tripwire.state_max_age
            ):
                log.warning("state: %s", warning)
            log.info("learned state loaded dir=%s", self.config.state_dir)

    def save_state(self, data: dict[str, object] | None = None) -> None:
        try:
            self.state.save(data if data is not None else {"tripwire": self.tripwire.to_dict()})
        except StateError as err:
            self.metrics.state_save_failures.inc()
            log.warning("cannot save state dir=%s error=%s", self.config.state_dir, err)

    def jobs(self) -> list[Job]:
        etcd = self.config.etcd
        jobs = [
            # Polls are bounded one by one; the job as a whole gets an interval of slack.
            Job("etcd", etcd.interval, etcd.interval + etcd.timeout * 2, self.etcd.run),
            Job("state", STATE_SAVE_INTERVAL, 10.0, self._save_state_async, jitter=0.0),
        ]
        if self.config.gateways:
            from watchdog.gateway.jobs import GatewayJobs

            gateway_jobs = GatewayJobs(self.config, self.etcd.newest_config_revision)
            self.gateways = gateway_jobs
            jobs += gateway_jobs.jobs()
        for job in jobs:
            self.metrics.add_job(job.name)
        return jobs

    async def start(self) -> None:
        """Start every job's loop (inside the running event loop)."""
        self.load_state()
        for job in self.jobs():
            self.tasks.append(asyncio.create_task(
                run_every(job, self.metrics, self.deliver), name=job.name))

    async def stop(self) -> None:
        """Cancel and await every task, close clients, flush state."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        closers = [c.close() for c in (self.etcd, self.gateways) if hasattr(c, "close")]
        await asyncio.gather(*closers, return_exceptions=True)
        self.save_state()

    async def _save_state_async(self) -> None:
        # Snapshot on the loop (the reducer feeds the wires here too); only the disk write
        # leaves it.
        data = {"tripwire": self.tripwire.to_dict()}
        await asyncio.to_thread(self.save_state, data)


async def serve(config: Config, listen: str, stop: asyncio.Event | None = None,
                web_config: WebServerConfig | None = None) -> None:
    """Run the daemon and its web server until SIGTERM/SIGINT (or `stop` is set); with a
    web config, the server speaks TLS and/or asks for basic auth as it says."""
    from aiohttp import web

    from watchdog.web import make_app

    daemon = Daemon(config)
    own_signals = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    host, _, port = listen.rpartition(":")
    middlewares = web_config.middlewares() if web_config else []
    runner = web.AppRunner(make_app(daemon, middlewares), access_log=None,
                           handle_signals=False)
    await runner.setup()
    try:
        ssl_context = web_config.ssl_context() if web_config else None
        site = web.TCPSite(runner, host or "0.0.0.0", int(port), ssl_context=ssl_context)
        await site.start()
        log.info("listening address=%s %s", listen,
                 web_config.describe() if web_config else "tls=off basic_auth_users=0")
        await daemon.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        await daemon.stop()
        await runner.cleanup()
        if own_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("stopped cleanly")
