"""`watchdog smoke`: run the gate for several gateways, show progress, report, exit code."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import TextIO

import aiohttp

from watchdog.config import Config, GatewayConfig
from watchdog.etcd.client import EtcdHttp
from watchdog.gateway.smoke import Progress, SmokeResult, run_gate
from watchdog.gateway.status import TRACKED_DIRS
from watchdog.httpprobe import make_session
from watchdog.redact import Redactor, install
from watchdog.results import Reason

REDRAW = 0.2


def _line(p: Progress, now: float) -> str:
    elapsed = now - p.started
    if p.result is not None:
        return verdict(p.result)
    detail = f" {p.detail}" if p.detail else ""
    return f"  {p.gateway}: {elapsed:5.1f}s  {p.phase}{detail}"


def verdict(result: SmokeResult) -> str:
    """One line a person reads at 3 a.m."""
    if result.ok:
        return f"PASS {result.gateway}: {result.message}"
    tag = f"{result.phase}/{result.reason.value}" if result.reason else result.phase
    cleaned = " (canary deleted)" if result.canary_deleted else ""
    return f"FAIL {result.gateway} [{tag}] after {result.elapsed:.1f}s: {result.message}{cleaned}"


async def _show_progress(progress: list[Progress], out: TextIO) -> None:
    """Redraw one line per gateway in place until cancelled (terminals only)."""
    drawn = 0
    try:
        while True:
            now = time.monotonic()
            if drawn:
                out.write(f"\x1b[{drawn}F")
            for p in progress:
                out.write("\x1b[2K" + _line(p, now)[:200] + "\n")
            drawn = len(progress)
            out.flush()
            await asyncio.sleep(REDRAW)
    finally:
        if drawn:
            out.write(f"\x1b[{drawn}F" + "\x1b[2K\n" * drawn + f"\x1b[{drawn}F")
            out.flush()


def _etcd_http(config: Config) -> EtcdHttp:
    """The JSON-gateway client alone (the daemon's module would import gRPC: a second of
    a short deadline on a busy host)."""
    etcd = config.etcd
    tls = etcd.tls
    return EtcdHttp(
        etcd.endpoints, insecure_skip_verify=bool(tls and tls.insecure_skip_verify),
        ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
        key_file=str(tls.key_file) if tls and tls.key_file else None,
        username=etcd.auth.username if etcd.auth else None,
        password=etcd.auth.password.get_secret_value() if etcd.auth else None,
    )


async def _newest_revision_fn(config: Config):  # type: ignore[no-untyped-def]
    http = _etcd_http(config)
    prefix = config.etcd.prefix.rstrip("/")
    revision: list[int | None] = [None]  # etcd's revision at the last read
    failure: list[Reason | None] = [None]  # why the last read failed

    async def newest() -> int | None:
        for url in config.etcd.endpoints:
            results = await asyncio.gather(*(
                http.newest_mod_revision(url, f"{prefix}/{d}/", config.etcd.timeout)
                for d in TRACKED_DIRS
            ))
            if all(r.ok and isinstance(r.body, int) for r in results):
                revisions = [r.revision for r in results if r.revision is not None]
                revision[0], failure[0] = max(revisions) if revisions else None, None
                return max(int(r.body) for r in results)  # type: ignore[call-overload]
            failure[0] = next((r.reason for r in results if r.reason is not None), None)
        return None

    async def current() -> int | None:
        return revision[0]

    return http, newest, current, lambda: failure[0]


async def gate_all(
    config: Config, gateways: list[GatewayConfig], timeout: float, read_only: bool,
    progress_out: TextIO | None, redactor: Redactor | None = None,
    started: float | None = None,
) -> tuple[list[SmokeResult], bool]:
    """Run every gateway's gate in parallel; returns the results and whether a signal
    interrupted the run. Canaries are deleted in every case. The gates end `timeout`
    seconds after `started` (a time.monotonic(); default now)."""
    started = time.monotonic() if started is None else started
    redactor = redactor or Redactor.from_config(config)
    progress = [Progress(gw.name) for gw in gateways]
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[SmokeResult]] = []

    def stop() -> None:
        interrupted.set()
        for task in tasks:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    session = make_session(connector=aiohttp.TCPConnector(force_close=True, limit=0),
                           timeout=aiohttp.ClientTimeout(total=None))
    http = None
    newest = current = failure = None
    display = None
    try:
        if read_only:
            http, newest, current, failure = await _newest_revision_fn(config)
        if not interrupted.is_set():  # else a signal came before any gate wrote anything
            left = max(0.1, timeout - (time.monotonic() - started))  # setup counts too
            tasks += [
                asyncio.create_task(run_gate(
                    gw, session, left, poll_interval=config.smoke.poll_interval,
                    read_only=read_only, newest_config_revision=newest, progress=p,
                    call_timeout=min(gw.timeout or config.etcd.timeout, timeout),
                    redactor=redactor, etcd_revision=current, etcd_failure=failure,
                ), name=f"smoke:{gw.name}")
                for gw, p in zip(gateways, progress, strict=True)
            ]
            if progress_out is not None:
                display = asyncio.create_task(_show_progress(progress, progress_out))
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if display is not None:
            display.cancel()
            await asyncio.gather(display, return_exceptions=True)
        await session.close()
        if http is not None:
            await http.close()
    results = []
    for p in progress:
        result = p.result or SmokeResult(p.gateway, False, p.phase, "interrupted",
                                         read_only=read_only)
        if interrupted.is_set() and not result.ok and result.message == "interrupted":
            when = "before the gate started" if result.phase == "starting" \
                else f"during {result.phase}"
            result.message = f"interrupted by a signal {when}"
        results.append(result)
    return results, interrupted.is_set()


def run_smoke_command(
    config: Config, gateways: list[GatewayConfig], timeout: float, output: str, read_only: bool
) -> int:
    """Run the gate and print the report; returns the exit code (0 all synced, else 1)."""
    live = sys.stderr if output == "text" and sys.stderr.isatty() and \
        os.environ.get("TERM") != "dumb" else None
    started = time.monotonic()
    redactor = Redactor.from_config(config)
    install(redactor)  # every log line of this run, whatever logs it
    results, interrupted = asyncio.run(gate_all(config, gateways, timeout, read_only, live,
                                                redactor, started))
    ok = all(r.ok for r in results) and not interrupted
    if output == "json":
        report = {
            "ok": ok, "timeout": timeout, "read_only": read_only, "interrupted": interrupted,
            "elapsed": round(time.monotonic() - started, 3),
            "gateways": [r.to_dict() for r in results],
        }
        print(json.dumps(redactor.scrub_value(report), indent=2))
    else:
        for result in results:
            print(redactor.scrub(verdict(result)))
        synced = sum(r.ok for r in results)
        print(f"{synced}/{len(results)} gateways synced" + (" (interrupted)" if interrupted
                                                            else ""))
    return 0 if ok else 1
