"""`watchdog doctor`: one-shot verdicts for a person or a pipeline.

It builds the daemon's own jobs and reducer, so its findings are the daemon's findings; runs
them for a while (reading saved state when there is some, writing none), optionally runs one
smoke canary per gateway (always deleted), and reports the open findings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from watchdog.config import Config
from watchdog.daemon import Daemon
from watchdog.findings import Finding, failing, human_duration
from watchdog.scheduler import run_every
from watchdog.snapshot import Snapshot

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FINDINGS = 0, 1


@dataclass(frozen=True)
class Report:
    """What doctor saw: the last snapshot and its open findings."""

    snapshot: Snapshot
    findings: tuple[Finding, ...]
    duration: float

    @property
    def exit_code(self) -> int:
        return EXIT_FINDINGS if failing(self.findings) else EXIT_OK


async def diagnose(config: Config, duration: float, smoke: bool = False) -> Report:
    """Run the daemon's etcd and gateway jobs (never its state saver, never periodic smoke)
    for `duration` seconds, plus one canary per gateway with `smoke`; return the findings."""
    daemon = Daemon(config)
    # One run is short: a condition counts once it held over two evaluations and for a
    # third of the run (at most one interval), so a fault present from the start is named.
    tracker = daemon.reducer.findings
    tracker.open_after = min(tracker.open_after, duration / 3)
    daemon.load_state()  # read-only: doctor never calls save_state
    started = time.monotonic()
    jobs = [j for j in daemon.jobs() if j.name != "state" and not j.name.startswith("smoke:")]
    tasks = [asyncio.create_task(run_every(j, daemon.metrics, daemon.deliver), name=j.name)
             for j in jobs]
    smokes: list[asyncio.Task[None]] = []
    gateway_jobs = daemon.gateways
    if smoke and gateway_jobs is not None:
        from watchdog.gateway.jobs import GatewayJobs

        assert isinstance(gateway_jobs, GatewayJobs)

        async def one(gw_name: str) -> None:
            gw = config.gateway(gw_name)
            daemon.deliver(await gateway_jobs.smoke(gw))

        smokes = [asyncio.create_task(one(g.name)) for g in config.gateways if g.data_url]
    try:
        await asyncio.sleep(duration)
        if smokes:
            # A canary run is bounded by smoke.timeout; its cleanup by a little more.
            await asyncio.wait(smokes, timeout=config.smoke.timeout + 15.0)
            # Long enough after the verdicts for a finding they raise to open.
            await asyncio.sleep(tracker.open_after + config.etcd.interval)
    finally:
        for task in tasks + smokes:
            task.cancel()
        await asyncio.gather(*tasks, *smokes, return_exceptions=True)
        closers = [c.close() for c in (daemon.etcd, daemon.gateways) if hasattr(c, "close")]
        await asyncio.gather(*closers, return_exceptions=True)
    snap = daemon.snapshot()
    return Report(snap, snap.findings, time.monotonic() - started)


def render_text(report: Report) -> str:
    """The findings for a person: worst first, each with subject, summary, fix and runbook."""
    snap = report.snapshot
    now = time.time()
    peers = len(snap.peers)
    up = sum(1 for p in snap.peers.values() if p.up)
    lines = [f"watchdog doctor: {report.duration:.0f}s, {snap.cycle} etcd polls, "
             f"{up}/{peers} peers up, {len(snap.gateways)} gateways"]
    bad = failing(report.findings)
    if not report.findings:
        lines.append("OK: no findings")
    elif not bad:
        lines.append("OK: no warning or critical finding")
    for f in report.findings:
        lines.append("")
        lines.append(f"{f.severity.value.upper()} {f.kind} {f.subject_kind}={f.subject}")
        lines.append(f"  {f.summary}")
        for e in f.evidence:
            age = human_duration(e.age + max(0.0, now - snap.taken))
            lines.append(f"  - {e.what}: {e.value} ({age} ago)")
        lines.append(f"  cause: {f.cause}")
        lines.append(f"  fix: {f.fix}")
        lines.append(f"  runbook: {f.runbook}")
    if bad:
        lines.append("")
        lines.append(f"{len(bad)} warning/critical finding(s): exit 1")
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The findings for a pipeline: the /api/v1/findings document plus the exit code."""
    from watchdog.web import findings_document

    doc = findings_document(report.snapshot, time.time())
    doc["exit_code"] = report.exit_code
    doc["duration_seconds"] = round(report.duration, 1)
    return json.dumps(doc, indent=2) + "\n"
