"""The daemon: builds the jobs from the config, runs the one polling loop, shuts down cleanly."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from watchdog.config import Config, EtcdConfig
from watchdog.etcd.client import EtcdHttp
from watchdog.etcd.peers import PeerPoll, PeerTarget, discover, poll_peer
from watchdog.etcd.probes import GrpcProber
from watchdog.etcd.sockets import snapshot_connections
from watchdog.gateway.status import TRACKED_DIRS
from watchdog.metrics import WatchdogMetrics, make_registry
from watchdog.state import StateError, StateStore
from watchdog.status import GatewayView, PeerView, Status
from watchdog.tripwire import TripwireBank, TripwireSettings
from watchdog.webconfig import WebServerConfig
from watchdog.webserver import ServerLimits

log = logging.getLogger(__name__)

STATE_SAVE_INTERVAL = 60.0


@dataclass
class Job:
    """A named coroutine run every `interval` seconds, each run bounded by `timeout`."""

    name: str
    interval: float
    timeout: float
    run: Callable[[], Awaitable[None]]
    jitter: float = 0.1


async def run_once(job: Job, metrics: WatchdogMetrics) -> str:
    """One bounded run of a job; returns and records its outcome."""
    started = time.monotonic()
    outcome = "success"
    try:
        async with asyncio.timeout(job.timeout):
            await job.run()
    except TimeoutError:
        outcome = "timeout"
        log.warning("job timed out job=%s timeout=%.3gs", job.name, job.timeout)
    except Exception:
        outcome = "error"
        log.exception("job crashed job=%s", job.name)
    metrics.job_runs.labels(job.name, outcome).inc()
    metrics.job_duration.labels(job.name).set(time.monotonic() - started)
    return outcome


async def run_every(job: Job, metrics: WatchdogMetrics) -> None:
    """Run a job at its interval until cancelled. Runs never overlap: the next one starts
    only after the previous one ended, at the next tick (with a little jitter)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await run_once(job, metrics)
        elapsed = loop.time() - started
        pause = max(0.0, job.interval - elapsed)
        pause *= 1 + random.uniform(-job.jitter, job.jitter)
        await asyncio.sleep(pause)


def etcd_clients(etcd: EtcdConfig) -> tuple[EtcdHttp, GrpcProber | None]:
    """The JSON-gateway client and the gRPC prober for the configured TLS and auth."""
    tls = etcd.tls
    files = {
        "ca_file": str(tls.ca_file) if tls and tls.ca_file else None,
        "cert_file": str(tls.cert_file) if tls and tls.cert_file else None,
        "key_file": str(tls.key_file) if tls and tls.key_file else None,
    }
    auth = {
        "username": etcd.auth.username if etcd.auth else None,
        "password": etcd.auth.password.get_secret_value() if etcd.auth else None,
    }
    http = EtcdHttp(etcd.endpoints, insecure_skip_verify=bool(tls and tls.insecure_skip_verify),
                    **files, **auth)
    grpc = GrpcProber(**files, **auth) if etcd.grpc_probes else None
    return http, grpc


class Daemon:
    """Owns the status, the metrics, the clients and every job's task."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.status = Status(started=clock())
        self.registry, self.metrics = make_registry(self.status, registry)
        tw = config.tripwire
        self.tripwire = TripwireBank(
            TripwireSettings(
                factor=tw.factor, warmup=tw.warmup, clear_factor=tw.clear_factor,
                hold=tw.hold, min_streams=tw.min_streams,
            ),
            clock=clock,
        )
        self.state = StateStore(Path(config.state_dir))
        self.targets: list[PeerTarget] = []
        self.http: EtcdHttp | None = None
        self.grpc: GrpcProber | None = None
        self.gateways: object | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self._newest_cache: tuple[float, int | None] = (-1e9, None)
        for gw in config.gateways:
            self.status.gateways[gw.name] = GatewayView(name=gw.name, admin_url=gw.admin_url)
            self.metrics.add_gateway(gw.name)

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
            Job("etcd", etcd.interval, etcd.interval + etcd.timeout * 2, self.poll_etcd),
            Job("state", STATE_SAVE_INTERVAL, 10.0, self._save_state_async, jitter=0.0),
        ]
        if self.config.gateways:
            from watchdog.gateway.jobs import GatewayJobs

            gateway_jobs = GatewayJobs(self.config, self.status, self.metrics, self.clock,
                                       self.newest_config_revision)
            self.gateways = gateway_jobs
            jobs += gateway_jobs.jobs()
        for job in jobs:
            self.metrics.add_job(job.name)
        return jobs

    async def start(self) -> None:
        """Start every job's loop (inside the running event loop)."""
        etcd = self.config.etcd
        self.load_state()
        self.http, self.grpc = etcd_clients(etcd)
        for job in self.jobs():
            self.tasks.append(asyncio.create_task(run_every(job, self.metrics), name=job.name))

    async def stop(self) -> None:
        """Cancel and await every task, close clients, flush state."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        closers = [c.close() for c in (self.http, self.gateways) if hasattr(c, "close")]
        await asyncio.gather(*closers, return_exceptions=True)
        if self.grpc is not None:
            await asyncio.to_thread(self.grpc.close)
        self.save_state()

    async def _save_state_async(self) -> None:
        # Snapshot on the loop (observe() runs here too); only the disk write leaves it.
        data = {"tripwire": self.tripwire.to_dict()}
        await asyncio.to_thread(self.save_state, data)

    async def newest_config_revision(self) -> int | None:
        """The newest mod_revision of gateway config in etcd (cached for a second, since
        every gateway job asks for it)."""
        now = time.monotonic()
        cached_at, value = self._newest_cache
        if now - cached_at < 1.0:
            return value
        assert self.http is not None
        url = next((t.url for t in self.targets if self.status.peers.get(t.name) and
                    self.status.peers[t.name].up), self.config.etcd.endpoints[0])
        prefix = self.config.etcd.prefix.rstrip("/")
        results = await asyncio.gather(*(
            self.http.newest_mod_revision(url, f"{prefix}/{d}/", self.config.etcd.timeout)
            for d in TRACKED_DIRS
        ))
        newest = [r.body for r in results if r.ok and isinstance(r.body, int)]
        value = max(newest) if len(newest) == len(results) else None
        self._newest_cache = (now, value)
        return value

    # -- the etcd job --------------------------------------------------------

    async def poll_etcd(self) -> None:
        """Poll every known peer concurrently, each within its deadline, while the member
        list is read beside them (a change applies from the next cycle), so a stalled
        JSON gateway costs one timeout per cycle, not two."""
        assert self.http is not None
        discovery = None
        if not self.targets:
            self._apply_discovery(*await discover(self.config.etcd, self.http, self.targets))
        elif self._needs_discovery():
            discovery = asyncio.create_task(discover(self.config.etcd, self.http, self.targets))
        try:
            sockets = await asyncio.to_thread(snapshot_connections, True)
            # A bounded number of peers at a time: a thousand polls started at once would
            # queue on the event loop, and that wait would show as JSON-probe latency.
            slots = asyncio.Semaphore(self.config.etcd.max_concurrent_polls)

            async def poll_one(target: PeerTarget) -> PeerPoll:
                async with slots:
                    poll = await poll_peer(target, self.config.etcd, self.http, self.grpc,
                                           sockets, self.config.etcd.connections_top_n)
                self._record_poll(poll)
                return poll

            polls = await asyncio.gather(*(poll_one(t) for t in self.targets))
            for name, streams in self._expected_streams(polls).items():
                if name in self.status.peers:
                    self.status.peers[name].expected_streams = streams
            if discovery is not None:
                self._apply_discovery(*await discovery)
        finally:
            if discovery is not None and not discovery.done():
                discovery.cancel()

    def _needs_discovery(self) -> bool:
        """Members are followed with discovery on; without it the list only names the
        configured endpoints, so it is read until every endpoint has a member name."""
        if self.config.etcd.discover_members:
            return True
        return any(t.name == t.url for t in self.targets)

    def _apply_discovery(self, targets: list[PeerTarget], error: str) -> None:
        if error and error != self.status.discovery_error:
            log.warning("member discovery failed: %s", error)
        self.status.discovery_error = error
        self._apply_targets(targets)

    def _apply_targets(self, targets: list[PeerTarget]) -> None:
        new = {t.name for t in targets}
        for gone in [name for name in self.status.peers if name not in new]:
            log.info("peer left peer=%s", gone)
            del self.status.peers[gone]
            self.metrics.forget_peer(gone)
            self.tripwire.forget(gone)
        for target in targets:
            view = self.status.peers.get(target.name)
            if view is None:
                log.info("watching peer peer=%s url=%s", target.name, target.url)
                self.status.peers[target.name] = PeerView(
                    name=target.name, endpoint=target.url, tls=target.tls,
                    member_id=target.member_id,
                )
                self.metrics.add_peer(target.name, grpc=self.config.etcd.grpc_probes)
            else:
                view.endpoint, view.tls = target.url, target.tls
        self.targets = targets

    def _expected_streams(self, polls: list[PeerPoll]) -> dict[str, float]:
        """Expected watch streams per peer from the gateway inventory.

        A gateway pinned to an etcd endpoint counts fully on that peer; the others are
        spread evenly over the peers that are up (an estimate: clients pick endpoints)."""
        by_url = {p.target.url: p.target.name for p in polls}
        up = [p.target.name for p in polls if p.up] or [p.target.name for p in polls]
        expected: dict[str, float] = {}
        known = False
        for gw in self.config.gateways:
            streams = gw.expected_streams()
            if streams is None:
                continue
            known = True
            pinned = by_url.get(gw.etcd_endpoint or "")
            if pinned:
                expected[pinned] = expected.get(pinned, 0.0) + streams
            else:
                for name in up:
                    expected[name] = expected.get(name, 0.0) + streams / len(up)
        if known:
            for p in polls:
                expected.setdefault(p.target.name, 0.0)
        return expected

    def _record_poll(self, poll: PeerPoll) -> None:
        view = self.status.peers.get(poll.target.name)
        if view is None:
            return
        if view.polled and view.up and not poll.up:
            log.warning("peer down peer=%s reason=%s", view.name, poll.reason)
        elif view.polled and not view.up and poll.up:
            log.info("peer up again peer=%s", view.name)
        view.polled, view.up = True, poll.up
        view.poll_reason = poll.reason.value if poll.reason else ""
        view.last_poll, view.poll_duration = self.clock(), poll.duration
        view.metrics = poll.metrics if poll.up else None
        view.connections = poll.connections
        view.member_id = poll.member_id or view.member_id
        view.version = poll.version or view.version
        view.is_leader = poll.is_leader if poll.up else None
        view.exposed = poll.exposed
        if poll.revision is not None:
            view.revision = poll.revision
        if not poll.up and poll.reason is not None:
            self.metrics.poll_failures.labels(view.name, poll.reason.value).inc()
        for result in poll.probes:
            view.probes[(result.api, result.op)] = result
            self.metrics.record_probe(view.name, result)
        streams = view.watch_streams
        # A NaN or negative sample on a peer's page is exported as it is but never learned
        # from (the trip wire rejects it, and one bad page must not fail the whole poll).
        if poll.up and streams is not None and math.isfinite(streams) and streams >= 0:
            view.wires["watch_streams"] = self.tripwire.observe(view.name, "watch_streams", streams)
        if poll.connections is not None:
            view.wires["client_connections"] = self.tripwire.observe(
                view.name, "client_connections", poll.connections.total
            )
        ws = view.wires.get("watch_streams")
        view.history.append((self.clock(), streams, ws.steady if ws else None))

    async def reload(self, config: Config) -> None:
        """Apply a new config: stop the jobs (which flushes the learned state), rebuild them
        from `config` on the same registry and status, and start them (which re-reads the
        state, so nothing learned is lost). Peers are re-discovered at the next poll."""
        await self.stop()
        learned: dict[str, object] = {"tripwire": self.tripwire.to_dict()}
        moved = Path(config.state_dir) != Path(self.config.state_dir)
        self.config = config
        tw = config.tripwire
        self.tripwire = TripwireBank(TripwireSettings(
            factor=tw.factor, warmup=tw.warmup, clear_factor=tw.clear_factor, hold=tw.hold,
            min_streams=tw.min_streams), clock=self.clock)
        self.state = StateStore(Path(config.state_dir))
        if moved:
            self.save_state(learned)
        self.targets, self.gateways, self._newest_cache = [], None, (-1e9, None)
        wanted = {gw.name: gw for gw in config.gateways}
        for name in [n for n in self.status.gateways if n not in wanted]:
            del self.status.gateways[name]
        for gw in config.gateways:
            view = self.status.gateways.get(gw.name)
            if view is None:
                self.status.gateways[gw.name] = GatewayView(name=gw.name, admin_url=gw.admin_url)
                self.metrics.add_gateway(gw.name)
            else:
                view.admin_url = gw.admin_url
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
