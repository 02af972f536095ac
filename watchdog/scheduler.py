"""Runs jobs: each at its interval, each run bounded by a deadline, runs never overlapping.

A job observes and returns a result (or None); the scheduler hands every result to one
`deliver` callback, the daemon's, which passes it to the reducer. The scheduler records only
its own metrics: runs by outcome and the duration of the last run.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from watchdog.metrics import WatchdogMetrics

log = logging.getLogger(__name__)

Deliver = Callable[[object], None]


@dataclass
class Job:
    """A named coroutine run every `interval` seconds, each run bounded by `timeout`."""

    name: str
    interval: float
    timeout: float
    run: Callable[[], Awaitable[object]]
    jitter: float = 0.1


async def run_once(job: Job, metrics: WatchdogMetrics, deliver: Deliver | None = None) -> str:
    """One bounded run of a job; delivers its result and returns and records its outcome:
    success, failed (the run completed, but its result says it observed nothing), timeout
    or error (it crashed)."""
    started = time.monotonic()
    outcome = "success"
    result: object = None
    try:
        async with asyncio.timeout(job.timeout):
            result = await job.run()
    except TimeoutError:
        outcome = "timeout"
        log.warning("job timed out job=%s timeout=%.3gs", job.name, job.timeout)
    except Exception:
        outcome = "error"
        log.exception("job crashed job=%s", job.name)
    if result is not None and deliver is not None:
        try:
            deliver(result)
        except Exception:
            outcome = "error"
            log.exception("applying the result failed job=%s", job.name)
    if outcome == "success" and getattr(result, "failed", False):
        outcome = "failed"  # it ran, but saw nothing: e.g. every peer's poll failed
    metrics.job_runs.labels(job.name, outcome).inc()
    metrics.job_duration.labels(job.name).set(time.monotonic() - started)
    return outcome


async def run_every(job: Job, metrics: WatchdogMetrics, deliver: Deliver | None = None) -> None:
    """Run a job at its interval until cancelled. Runs never overlap: the next one starts
    only after the previous one ended, at the next tick (with a little jitter)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await run_once(job, metrics, deliver)
        elapsed = loop.time() - started
        pause = max(0.0, job.interval - elapsed)
        pause *= 1 + random.uniform(-job.jitter, job.jitter)
        await asyncio.sleep(pause)
