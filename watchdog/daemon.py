"""The daemon: builds the jobs from the config, schedules them, and hands every result to
the reducer. It publishes the latest snapshot; it computes nothing itself."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from watchdog.config import Config
from watchdog.etcd.job import EtcdJob
from watchdog.events import log_changes
from watchdog.metrics import SnapshotCollector, make_registry
from watchdog.reducer import Reducer
from watchdog.render import Renderer
from watchdog.scheduler import Job, run_every
from watchdog.shard import Shard, ShardInfo, exported
from watchdog.snapshot import Snapshot
from watchdog.state import StateError, StateStore
from watchdog.tripwire import TripwireBank, TripwireSettings, saved_state_problem
from watchdog.webconfig import WebServerConfig
from watchdog.webserver import ServerLimits

log = logging.getLogger(__name__)

STATE_SAVE_INTERVAL = 60.0
# How long a gateway result may wait to be applied together with the others that arrive
# meanwhile: one findings pass and one change log per batch, not per gateway (with 1,000
# gateways a pass per result made the agent's cost grow with the square of the fleet).
BATCH_DELAY = 0.1


def make_tripwire(config: Config, clock: Callable[[], float]) -> TripwireBank:
    tw = config.tripwire
    return TripwireBank(
        TripwireSettings(factor=tw.factor, warmup=tw.warmup, clear_factor=tw.clear_factor,
                         hold=tw.hold, min_streams=tw.min_streams),
        clock=clock,
    )


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
        self.tripwire = make_tripwire(config, clock)
        self.reducer = Reducer(config, self.tripwire, clock)
        self.registry, self.metrics = make_registry(registry)
        # A per-host agent (etcd.connections: local) exports only its peer's connections.
        collector = SnapshotCollector(
            self.snapshot, lambda: self.config.etcd.mirror_histograms,
            exported=lambda name: exported(name, self.config.etcd.connections))
        self.renderer = Renderer(self.registry, [collector, self.metrics.tasks],
                                 self.snapshot, config.etcd.interval, self.metrics.renders.inc)
        self.registry.register(ShardInfo(lambda: self.config))
        self.state = StateStore(Path(config.state_dir), validate=saved_state_problem)
        self.etcd = self._etcd_job()
        self.gateways: object | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self._pending: list[object] = []
        self._flush_handle: asyncio.TimerHandle | None = None

    def _etcd_job(self, discover_first: bool = False) -> EtcdJob:
        snapshot = self.snapshot
        return EtcdJob(
            self.config.etcd, targets=lambda: snapshot().targets,
            up=lambda: snapshot().json_healthy(),
            discover_first=discover_first, shard=Shard.of(self.config),
        )

    def snapshot(self) -> Snapshot:
        """The latest snapshot: what every output reads."""
        return self.reducer.snapshot

    def deliver(self, result: object) -> None:
        """Apply one job result (after any queued ones) and log what changed."""
        if self._pending:
            self._flush()
        prev, cur = self.reducer.apply(result)
        for warning in self.tripwire.drain_warnings():  # e.g. another cluster's state dropped
            log.warning("state: %s", warning)
        log_changes(prev, cur)

    def deliver_batched(self, result: object) -> None:
        """Queue a result; what arrives within BATCH_DELAY is applied in one go."""
        self._pending.append(result)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(BATCH_DELAY,
                                                                       self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        results, self._pending = self._pending, []
        if not results:
            return
        try:
            prev, cur = self.reducer.apply_all(results)
        except Exception:
            log.exception("applying job results failed results=%d", len(results))
            return
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
        peers = data.get("peers") if data else None
        if isinstance(peers, dict):
            self.reducer.remember({str(url): str(name) for url, name in peers.items()
                                   if isinstance(url, str) and isinstance(name, str)})
        if data and isinstance(data.get("tripwire"), dict):
            for warning in self.tripwire.load_dict(
                data["tripwire"], max_age=self.config.tripwire.state_max_age
            ):
                log.warning("state: %s", warning)
            wires = self.tripwire.wire_count()
            if wires:
                log.info("learned state loaded dir=%s wires=%d", self.config.state_dir, wires)
            else:
                log.info("no usable learned state dir=%s: learning afresh", self.config.state_dir)

    def save_state(self, data: dict[str, object] | None = None) -> None:
        try:
            self.state.save(data if data is not None else self._learned())
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
            many = job.name.startswith(("gateway:", "smoke:"))
            self.tasks.append(asyncio.create_task(
                run_every(job, self.metrics, self.deliver_batched if many else self.deliver),
                name=job.name))

    async def stop(self) -> None:
        """Cancel and await every task, close clients, flush state."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        self._flush()
        closers = [c.close() for c in (self.etcd, self.gateways) if hasattr(c, "close")]
        await asyncio.gather(*closers, return_exceptions=True)
        self.save_state()

    async def _save_state_async(self) -> None:
        # Snapshot on the loop (the reducer feeds the wires here too); only the disk write
        # leaves it.
        data = self._learned()
        await asyncio.to_thread(self.save_state, data)

    def _learned(self) -> dict[str, object]:
        """What survives a restart: the trip wires and the peers' member names."""
        return {"tripwire": self.tripwire.to_dict(), "peers": dict(self.snapshot().names)}

    async def reload(self, config: Config) -> None:
        """Apply a new config: stop the jobs (which flushes the learned state), rebuild them,
        the reducer's settings and the trip wire from `config`, and start them (which
        re-reads the state, so nothing learned is lost). The snapshot is kept: peers keep
        their series and are re-discovered before the next poll; gateways no longer
        configured leave it, new ones join it."""
        await self.stop()
        learned = self._learned()
        moved = Path(config.state_dir) != Path(self.config.state_dir)
        self.config = config
        self.tripwire = make_tripwire(config, self.clock)
        self.state = StateStore(Path(config.state_dir), validate=saved_state_problem)
        if moved:
            self.save_state(learned)
        self.reducer.reconfigure(config, self.tripwire)
        from watchdog.redact import Redactor, install

        install(Redactor.from_config(config))  # the new config's secrets
        self.etcd = self._etcd_job(discover_first=True)
        self.gateways = None
        self.renderer.min_interval = config.etcd.interval
        self.renderer.invalidate()
        await self.start()


async def serve(config: Config, listen: str | Sequence[str], stop: asyncio.Event | None = None,
                web_config: WebServerConfig | None = None, *,
                load: Callable[[], Config] | None = None, limits: ServerLimits | None = None,
                telemetry_path: str = "/metrics") -> None:
    """Run the daemon and its web server until SIGTERM/SIGINT (or `stop` is set). With a web
    config, the server speaks TLS and/or asks for basic auth as it says; with `load`,
    SIGHUP and POST /-/reload re-read the config through it."""
    from aiohttp import web

    from watchdog.reload import Reloader
    from watchdog.web import make_app
    from watchdog.webconfig import LiveWebConfig
    from watchdog.webserver import KEEPALIVE_TIMEOUT, Listener, WebCollector

    daemon = Daemon(config)
    reloader = Reloader(daemon, load)
    own_signals = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    addresses = [listen] if isinstance(listen, str) else list(listen)
    live = LiveWebConfig(web_config) if web_config else None
    app = make_app(daemon, [live.middleware] if live else [], telemetry_path=telemetry_path,
                   reload=reloader.reload if load else None)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=KEEPALIVE_TIMEOUT)
    listener = Listener(lambda: runner.server(), limits or ServerLimits())  # type: ignore[misc]
    app.on_response_prepare.append(listener.on_response_prepare)
    await runner.setup()
    daemon.registry.register(WebCollector(listener, live))
    daemon.registry.register(reloader)
    try:
        await listener.start(addresses, web_config.ssl_context() if web_config else None)
        log.info("listening addresses=%s max_connections=%d read_header_timeout=%gs %s",
                 ",".join(listener.bound()), listener.cap, listener.limits.read_header_timeout,
                 web_config.describe() if web_config else "tls=off basic_auth_users=0")
        await daemon.start()
        reloader.started = True
        if own_signals and load is not None:
            loop.add_signal_handler(signal.SIGHUP, reloader.on_sighup)
        await stop.wait()
        log.info("shutting down")
    finally:
        await listener.close()
        await daemon.stop()
        await runner.cleanup()
        if own_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a late SIGHUP must not kill us
    log.info("stopped cleanly")
