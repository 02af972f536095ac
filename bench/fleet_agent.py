"""The real `watchdog run`, with timing hooks, for the fleet benchmark.

    python bench/fleet_agent.py RECORDS.jsonl -- run --config FILE --web.listen-address ADDR

Runs watchdog's own CLI in this process after wrapping three functions, without changing what
they do; each call appends one JSON line to RECORDS.jsonl:

- `EtcdJob.run` (the etcd job): start (CLOCK_MONOTONIC, comparable across processes)
  and wall seconds of each cycle;
- `snapshot_connections` (in the daemon's worker thread): wall and thread CPU seconds, and
  the number of sockets in the snapshot;
- `Renderer._render`, the snapshot part of /metrics (once per cycle, in the render
  thread): wall and thread CPU seconds, bytes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import watchdog.etcd.job as job_module  # noqa: E402
import watchdog.render as render_module  # noqa: E402
from watchdog.cli import main as cli_main  # noqa: E402


def install(records: Path) -> None:
    out = records.open("a", buffering=1)

    def emit(**fields: object) -> None:
        out.write(json.dumps(fields) + "\n")

    original_run = job_module.EtcdJob.run

    async def run(self: job_module.EtcdJob) -> job_module.EtcdCycle:
        start = time.monotonic()
        cycle = None
        try:
            cycle = await original_run(self)
            return cycle
        finally:
            polls = cycle.polls if cycle is not None else ()
            emit(kind="cycle", start=start, wall=time.monotonic() - start,
                 peers=len(polls), up=sum(1 for p in polls if p.up))

    job_module.EtcdJob.run = run  # type: ignore[method-assign]

    original_snapshot = job_module.snapshot_connections

    def snapshot(*args, **kwargs):  # type: ignore[no-untyped-def]
        w0, c0 = time.perf_counter(), time.thread_time()
        table = original_snapshot(*args, **kwargs)
        emit(kind="snapshot", wall=time.perf_counter() - w0, cpu=time.thread_time() - c0,
             established=sum(len(v) for v in table.established.values()),
             listening=len(table.listening))
        return table

    job_module.snapshot_connections = snapshot

    original_render = render_module.Renderer._render

    def _render(self, snap, openmetrics):  # type: ignore[no-untyped-def]
        w0, c0 = time.perf_counter(), time.thread_time()
        body = original_render(self, snap, openmetrics)
        emit(kind="render", wall=time.perf_counter() - w0, cpu=time.thread_time() - c0,
             bytes=len(body), lines=body.count(b"\n"))
        return body

    render_module.Renderer._render = _render  # type: ignore[method-assign]


if __name__ == "__main__":
    records = Path(sys.argv[1])
    argv = sys.argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    install(records)
    cli_main(args=argv, prog_name="watchdog")
