"""The benchmark runner: every section against its peer measured in the same run, one report.

    python bench/run.py            # full run (about 8-10 minutes on 2 cores)
    python bench/run.py --quick    # short run (about 6 minutes)
    python bench/run.py --only poll,fleet

Writes docs/benchmarks.md (tables, machine and versions) and bench/results/latest.json (every
raw number). Each section runs in a fresh child process, so in-process CPU figures are not
touched by another section's threads, and a section that fails is reported, not fatal.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, PYTHON, REPO, machine, versions

SECTIONS: dict[str, tuple[str, str, float]] = {
    # name: (module, title, time limit in seconds for the full run)
    "poll": ("s1_poll_cpu", "1. Per-peer poll CPU", 240),
    "admin": ("s2_admin_probe", "2. Admin-call probe", 180),
    "fleet": ("s3_fleet", "3. Fleet scale", 420),
    "load": ("s4_etcd_load", "4. Load on a real etcd", 120),
    "smoke": ("s5_smoke", "5. Smoke gate", 180),
    "micro": ("s6_micro", "6. Micro-benchmarks (bench_parse.py, bench_tripwire.py)", 180),
    "render": ("s7_render", "7. /metrics render", 240),
    "scrape": ("scrape_load", "8. Probe latency under scrape load", 300),
}


def run_section(name: str, quick: bool, out: Path) -> None:
    """Run one section in this process and write its JSON (the child side)."""
    module = importlib.import_module(SECTIONS[name][0])
    started = time.monotonic()
    try:
        result = module.run(quick)
        result["ok"] = True
    except Exception as err:
        result = {"ok": False, "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc()}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    out.write_text(json.dumps(result, indent=1, default=str))


def spawn_section(name: str, quick: bool) -> dict[str, Any]:
    limit = SECTIONS[name][2] * (0.6 if quick else 1.0)
    with tempfile.TemporaryDirectory(prefix=f"wdbench-{name}-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [PYTHON, str(Path(__file__).resolve()), "--section", name, "--section-out",
               str(out)] + (["--quick"] if quick else [])
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=str(REPO), start_new_session=True)
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return {"ok": False, "error": f"time limit of {limit:.0f}s exceeded",
                    "elapsed_s": round(time.monotonic() - started, 1)}
        if not out.exists():
            return {"ok": False, "error": f"section process exited with {proc.returncode}",
                    "elapsed_s": round(time.monotonic() - started, 1)}
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (about 6 minutes)")
    parser.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--section", choices=sorted(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--section-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.section:
        run_section(args.section, args.quick, args.section_out)
        return 0

    names = list(SECTIONS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(SECTIONS))
        if unknown:
            parser.error(f"unknown section(s): {', '.join(unknown)}")
    started = time.monotonic()
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "started_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": machine(),
        "versions": versions(),
        "command": "python bench/run.py" + (" --quick" if args.quick else "")
                   + (f" --only {args.only}" if args.only else ""),
    }
    print(f"watchdog benchmarks ({meta['mode']}) on {meta['machine']['nproc']} cores, "
          f"{meta['machine']['cpu_model']}, load {meta['machine']['loadavg']}", flush=True)
    results: dict[str, Any] = {}
    if args.only and args.json.exists():  # keep the other sections of the last run
        try:
            results = json.loads(args.json.read_text()).get("sections", {})
        except ValueError:
            results = {}
    for name in names:
        print(f"== {SECTIONS[name][1]}", flush=True)
        results[name] = spawn_section(name, args.quick)
        state = "ok" if results[name].get("ok") else f"FAILED: {results[name].get('error')}"
        print(f"   {state} ({results[name].get('elapsed_s')} s)", flush=True)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    data = {"meta": meta, "sections": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    from report import render

    args.doc.write_text(render(data))
    print(f"wrote {args.doc} and {args.json} in {meta['elapsed_s']} s", flush=True)
    return 0 if all(results[n].get("ok") for n in names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
