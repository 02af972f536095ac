"""The scheduler's outcomes: success, failed (ran, observed nothing), timeout, error."""

from __future__ import annotations

import asyncio

from watchdog.etcd.job import EtcdCycle
from watchdog.etcd.peers import PeerPoll, PeerTarget
from watchdog.metrics import make_registry
from watchdog.results import Reason
from watchdog.scheduler import Job, run_once

TARGET = PeerTarget("etcd-0", "http://127.0.0.1:2379")


def cycle(*up: bool) -> EtcdCycle:
    return EtcdCycle(polls=tuple(
        PeerPoll(target=TARGET, up=u, reason=None if u else Reason.REFUSED, duration=0.01)
        for u in up))


async def outcome_of(run, timeout: float = 1.0) -> tuple[str, list[object], float]:  # type: ignore[no-untyped-def]
    _, metrics = make_registry()
    delivered: list[object] = []
    outcome = await run_once(Job("etcd", 1.0, timeout, run), metrics, delivered.append)
    count = metrics.tasks.get_sample_value("watchdog_job_runs_total",
                                      {"task": "etcd", "outcome": outcome})
    return outcome, delivered, count or 0.0


async def test_outcomes() -> None:
    async def returns(result: object):  # type: ignore[no-untyped-def]
        return result

    async def hangs() -> None:
        await asyncio.sleep(10)

    async def crashes() -> None:
        raise RuntimeError("boom")

    some_up = cycle(False, True)
    assert await outcome_of(lambda: returns(some_up)) == ("success", [some_up], 1.0)
    none_up = cycle(False, False)
    # Every poll failed: delivered (the snapshot shows the peers down), but not a success.
    assert await outcome_of(lambda: returns(none_up)) == ("failed", [none_up], 1.0)
    assert (await outcome_of(hangs, timeout=0.05))[0] == "timeout"
    assert (await outcome_of(crashes))[:2] == ("error", [])
