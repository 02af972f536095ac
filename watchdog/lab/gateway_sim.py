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
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from aiohttp import web

from watchdog.lab.sim_admin import AdminApi
from watchdog.lab.sim_config import (
    DEFAULT_ADMIN_KEY,
    KNOWN_FAULTS,
    METRICS_PATH,
    SYNC_MODES,
    SimConfig,
    check_faults,
)
from watchdog.lab.sim_core import SimCore
from watchdog.lab.sim_data import DataPlane
from watchdog.lab.sim_etcd import EtcdError
from watchdog.lab.sim_state import HTTP_DIRS
from watchdog.lab.sim_status import StatusApi
from watchdog.lab.sim_sync import ConfigSync

__all__ = ["KNOWN_FAULTS", "GatewaySim", "SimConfig", "check_faults", "main", "run_sim"]

log = logging.getLogger("watchdog.lab.gateway_sim")


class GatewaySim(SimCore):
    """One simulated APISIX node: admin, data, status and metrics ports, N workers."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config)
        self.sync = ConfigSync(self)
        self.data = DataPlane(self)
        self.status = StatusApi(self)
        self._runners: list[web.AppRunner] = []
        self._started = False
        self._stopping = False

    def on_stale_cleared(self) -> None:
        for worker in self.workers:
            if worker.loaded:
                self.spawn(self.sync.resync(worker))

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
        self.running = True
        self.fault_signal = asyncio.get_running_loop().create_future()
        try:
            await self.etcd.open()
            await self.etcd.find_healthy()
            await self.etcd.auth_headers()
            await self._init_dirs()
            self.data.open()
            await self._serve()
            if "init-hang" in self.faults:
                self.spawn(self.sync.initial_load())
            else:
                try:
                    await self.sync.load_all()
                except EtcdError as err:
                    log.warning("%s: first load failed (%s); retrying", self.config.name, err)
                    self.spawn(self.sync.initial_load())
        except BaseException:
            await self.stop()
            raise
        log.info("%s: admin %s data %s", self.config.name, self.admin_url, self.data_url)

    async def stop(self) -> None:
        """Stop listening, cancel and await every task, close every session."""
        if self._stopping:
            return
        self._stopping = True
        self.running = False
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        await self.cancel_tasks()
        await self.data.close()
        await self.etcd.close()

    async def _init_dirs(self) -> None:
        """`apisix init_etcd`: an "init_dir" placeholder per HTTP directory, if absent."""
        for directory in HTTP_DIRS:
            await self.etcd.put_if_absent(f"{self.config.prefix}/{directory}/", "init_dir")

    async def _serve(self) -> None:
        admin = AdminApi(self).build_app()
        data = web.Application()
        data.router.add_route("*", "/{tail:.*}", self.data.handle)
        status = web.Application()
        status.router.add_get("/status", self.status.handle_status)
        status.router.add_get("/status/ready", self.status.handle_ready)
        metrics = web.Application()
        metrics.router.add_get(METRICS_PATH, self.status.handle_metrics)
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
            self.ports[which] = int(sock.getsockname()[1])
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
