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
from watchdog.gateway.smoke import Progress, SmokeResult, run_gate
from watchdog.gateway.status import TRACKED_DIRS
from watchdog.httpprobe import make_session

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


async def _newest_revision_fn(config: Config):  # type: ignore[no-untyped-def]
    from watchdog.etcd.job import etcd_clients

    http, _ = etcd_clients(config.etcd.model_copy(update={"grpc_probes": False}))
    prefix = config.etcd.prefix.rstrip("/")

    async def newest() -> int | None:
        for url in config.etcd.endpoints:
            results = await asyncio.gather(*(
                http.newest_mod_revision(url, f"{prefix}/{d}/", config.etcd.timeout)
                for d in TRACKED_DIRS
            ))
            if all(r.ok and isinstance(r.body, int) for r in results):
                return max(int(r.body) for r in results)  # type: ignore[call-overload]
        return None

    return http, newest


async def gate_all(
    config: Config, gateways: list[GatewayConfig], timeout: float, read_only: bool,
    progress_out: TextIO | None,
) -> tuple[list[SmokeResult], bool]:
    """Run every gateway's gate in parallel; returns the results and whether a signal
    interrupted the run. Canaries are deleted in every case."""
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
    newest = None
    display = None
    try:
        if read_only:
            http, newest = await _newest_revision_fn(config)
        if not interrupted.is_set():  # else a signal came before any gate wrote anything
            tasks += [
                asyncio.create_task(run_gate(
                    gw, session, timeout, poll_interval=config.smoke.poll_interval,
                    read_only=read_only, newest_config_revision=newest, progress=p,
                    call_timeout=min(gw.timeout or config.etcd.timeout, timeout),
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
    results, interrupted = asyncio.run(gate_all(config, gateways, timeout, read_only, live))
    ok = all(r.ok for r in results) and not interrupted
    if output == "json":
        report = {
            "ok": ok, "timeout": timeout, "read_only": read_only, "interrupted": interrupted,
            "elapsed": round(time.monotonic() - started, 3),
            "gateways": [r.to_dict() for r in results],
        }
        print(json.dumps(report, indent=2))
    else:
        for result in results:
            print(verdict(result))
        synced = sum(r.ok for r in results)
        print(f"{synced}/{len(results)} gateways synced" + (" (interrupted)" if interrupted
                                                            else ""))
    return 0 if ok else 1
