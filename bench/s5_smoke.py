"""Section 5: the smoke gate, timed by an independent witness.

One real etcd member, two healthy simulated gateways (own processes) and `smoke_watcher.py`
(own process): an etcd watch on the canary prefix and data-plane pollers every 3 ms. All
timestamps are CLOCK_MONOTONIC, shared by the processes.

A. In-process gate (`gate_all`, what `watchdog smoke` runs under asyncio.run), repeated. The
   canary nonces are fixed in advance (the gate's `new_nonce` is swapped for a list),
   so the witness polls each gateway's canary path *before* the write and sees the first 302
   to within its poll interval. Recorded: the admin PUT (start, end), the etcd PUT event, the
   first 302 at each data plane (witness), the 302 the gate saw (its `fetch`), the gate's
   exit (gate_all returned: verdicts made, canaries deleted), the etcd DELETE event.
   Gate exit - first served uses the later of the two gateways (the gate cannot finish before
   both are served).
B. The real `watchdog smoke --output json` process, a few times: the witness learns each
   canary path from the etcd watch, then polls; process exit (waitpid) against the report's
   `served_at` and the witness's first 302 (which here can only be late, never early).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from common import ADMIN_KEY, BENCH, PYTHON, REPO, Children, median, start_sim, summary

import watchdog.gateway.admin as admin_module
import watchdog.gateway.smoke as smoke_module
from watchdog.config import config_from_dict
from watchdog.gateway.gate import gate_all
from watchdog.lab.cluster import EtcdCluster

KEY_ENV = "WATCHDOG_BENCH_ADMIN_KEY"
WITNESS_INTERVAL = 0.001  # pause between the witness's polls (plus one request, ~1-2 ms)
PREFIX = "/apisix/routes/watchdog-canary-"


class Witness:
    def __init__(self, children: Children, etcd: str, interval: float) -> None:
        self.proc = children.start(
            [PYTHON, str(BENCH / "smoke_watcher.py"), "--etcd", etcd, "--prefix", PREFIX,
             "--interval", str(interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
        assert json.loads(self.read()).get("ready")

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("smoke_watcher exited")
        return line

    def quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=10)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.read())


def gate_config(sims: list[dict[str, Any]], etcd: str, state: str) -> dict[str, Any]:
    return {
        "etcd": {"endpoints": [etcd]},
        "gateways": [{"name": s["name"], "admin_url": s["admin_url"], "admin_key_env": KEY_ENV,
                      "data_url": s["data_url"], "status_url": s["status_url"]} for s in sims],
        "state_dir": state,
    }


async def set_faults(session: aiohttp.ClientSession, sims: list[dict[str, Any]],
                     faults: list[str]) -> None:
    async def one(sim: dict[str, Any]) -> None:
        async with session.put(f"{sim['admin_url']}/__sim/faults", json={"faults": faults},
                               headers={"X-API-KEY": ADMIN_KEY}) as resp:
            resp.raise_for_status()
    await asyncio.gather(*(one(sim) for sim in sims))


async def in_process_gate(config_data: dict[str, Any], witness: Witness, reps: int,
                          sims: list[dict[str, Any]], delayed: bool) -> list[dict[str, Any]]:
    """`delayed`: the gateways are made stale (they stop applying config) before the gate and
    released 60-250 ms after both canaries are written, so propagation takes that long and
    the gate's own poll interval shows in its detection lag."""
    config = config_from_dict(config_data)
    gateways = list(config.gateways)
    marks: dict[str, dict[str, float]] = {}
    original_fetch, original_request = smoke_module.fetch, admin_module.timed_request

    async def fetch(session, url, timeout):  # type: ignore[no-untyped-def]
        served = await original_fetch(session, url, timeout)
        if served.status == 302:
            marks.setdefault(url, {}).setdefault("gate_302", time.monotonic())
        return served

    async def timed_request(session, method, url, **kw):  # type: ignore[no-untyped-def]
        start = time.monotonic()
        result = await original_request(session, method, url, **kw)
        if method in ("PUT", "DELETE") and "/routes/watchdog-canary-" in url:
            marks.setdefault(url, {})[f"{method}_start"] = start
            marks[url][f"{method}_end"] = time.monotonic()
        return result

    rows = []
    smoke_module.fetch = fetch
    admin_module.timed_request = timed_request
    original_secrets = smoke_module.secrets
    control = aiohttp.ClientSession()
    rng = random.Random(11)

    async def release(hold: float) -> float:
        while sum(1 for k, v in marks.items() if "PUT_end" in v) < len(gateways):
            await asyncio.sleep(0.002)
        await asyncio.sleep(hold)
        released = time.monotonic()
        await set_faults(control, sims, [])
        return released

    try:
        for rep in range(reps):
            marks.clear()
            releaser = None
            if delayed:
                await set_faults(control, sims, ["stale"])
                releaser = asyncio.create_task(release(rng.uniform(0.06, 0.25)))
            nonces = [f"{int(time.time())}-{rep:02x}{i:02x}{secrets.token_hex(4)}"
                      for i in range(len(gateways))]
            smoke_module.new_nonce = lambda queue=list(nonces): queue.pop(0)
            paths = {gw.name: smoke_module.canary(n)[2] for gw, n in zip(gateways, nonces,
                                                                           strict=True)}
            witness.ask(cmd="poll", targets=[{"name": gw.name, "url": gw.data_url + paths[gw.name]}
                                             for gw in gateways])
            await asyncio.sleep(0.05)
            started = time.monotonic()
            results, interrupted = await gate_all(config, gateways, 30.0, False, None)
            exited = time.monotonic()
            released = await releaser if releaser is not None else None
            await asyncio.sleep(0.3)  # the witness sees the DELETE and the canary gone
            seen = witness.ask(cmd="report")
            row: dict[str, Any] = {"rep": rep, "delayed": delayed, "released": released,
                                   "started": started, "exited": exited,
                                   "ok": all(r.ok for r in results) and not interrupted,
                                   "gateways": {}}
            for gw, nonce, result in zip(gateways, nonces, results, strict=True):
                route_id, _, path, _ = smoke_module.canary(nonce)
                key = f"/apisix/routes/{route_id}"
                put = next((e for e in seen["events"] if e["key"] == key and e["type"] == "PUT"),
                           None)
                delete = next((e for e in seen["events"] if e["key"] == key
                               and e["type"] == "DELETE"), None)
                poll = seen["polls"].get(gw.name, {})
                admin_url = f"{gw.admin_url}/apisix/admin/routes/{route_id}"
                mark = marks.get(admin_url, {})
                gate_302 = marks.get(gw.data_url + path, {}).get("gate_302")
                first = poll.get("first_302", {}).get("mono")
                row["gateways"][gw.name] = {
                    "ok": result.ok, "sync_seconds": result.sync_seconds,
                    "admin_write_seconds": result.admin_write_seconds,
                    "put_start": mark.get("PUT_start"), "put_end": mark.get("PUT_end"),
                    "etcd_put": put["mono"] if put else None,
                    "etcd_delete": delete["mono"] if delete else None,
                    "first_served": first,
                    "first_served_lower": (poll.get("last_before") or {}).get("mono"),
                    "witness_polls": poll.get("n"),
                    "gate_saw_302": gate_302,
                    "canary_gone": poll.get("gone", {}).get("mono"),
                }
            rows.append(row)
            g = row["gateways"]
            seen_all = all(v["first_served"] is not None for v in g.values())
            last_served = max(v["first_served"] for v in g.values()) if seen_all else None
            lag = f"{(exited - last_served) * 1000:6.1f} ms" if last_served else "  (missed)"
            print(f"  s5 {'delayed' if delayed else 'healthy'} rep {rep}: exit - last first 302 "
                  f"{lag}, sync "
                  + ", ".join(f"{n} {v['sync_seconds'] * 1000:.0f} ms" for n, v in g.items()
                              if v["sync_seconds"] is not None), flush=True)
    finally:
        await control.close()
        smoke_module.fetch = original_fetch
        admin_module.timed_request = original_request
        smoke_module.secrets = original_secrets
    return rows


def real_process(config_path: Path, sims: list[dict[str, Any]], witness: Witness, runs: int
                 ) -> list[dict[str, Any]]:
    rows = []
    env = {**os.environ, KEY_ENV: ADMIN_KEY}
    for _ in range(runs):
        witness.ask(cmd="auto", data_urls={s["name"]: s["data_url"] for s in sims})
        spawned_wall = time.time()
        proc = subprocess.Popen([PYTHON, "-m", "watchdog", "smoke", "--config", str(config_path),
                                 "--output", "json"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, cwd=str(REPO))
        assert proc.stdout is not None
        out = proc.stdout.read1(1 << 20)  # the report is printed at once, at the very end
        printed_wall = time.time()
        out += proc.stdout.read()
        proc.wait(timeout=60)
        exited_wall = time.time()
        proc.stdout.close()
        proc.stdout = None  # type: ignore[assignment]
        time.sleep(0.3)
        seen = witness.ask(cmd="report")
        report = json.loads(out)
        served = [g["served_at"] for g in report["gateways"] if g.get("served_at")]
        first = [p for p in seen["polls"].values() if "first_302" in p]
        own = []  # each gateway's own canary, as the witness saw it served there
        for g in report["gateways"]:
            route = g.get("canary_route") or ""
            nonce = route.removeprefix("watchdog-canary-")
            path = smoke_module.canary(nonce)[2] if nonce else None
            rec = seen["polls"].get(f"{g['gateway']} {path}")
            if rec and "first_302" in rec:
                own.append(rec["first_302"]["wall"])
        rows.append({
            "exit_code": proc.returncode, "ok": report.get("ok"),
            "process_wall_s": exited_wall - spawned_wall,
            "report_elapsed_s": report.get("elapsed"),
            "exit_after_last_served_at_ms": (exited_wall - max(served)) * 1000 if served else None,
            "report_printed_after_last_served_at_ms": (printed_wall - max(served)) * 1000
            if served else None,
            "exit_after_report_printed_ms": (exited_wall - printed_wall) * 1000,
            "exit_after_witness_first_302_ms": (exited_wall - max(own)) * 1000 if own else None,
            "witness_first_302_minus_served_at_ms": (max(own) - max(served)) * 1000
            if own and served else None,
            "sync_seconds": [g.get("sync_seconds") for g in report["gateways"]],
            "witness_samples": len(first),
        })
    return rows


def run(quick: bool) -> dict[str, Any]:
    reps, runs = (3, 3) if quick else (8, 5)
    os.environ[KEY_ENV] = ADMIN_KEY
    with EtcdCluster(size=1, name_prefix="s5") as cluster, Children() as children, \
            tempfile.TemporaryDirectory(prefix="wdbench-s5-") as tmp:
        etcd = cluster.endpoints[0]
        sims = [start_sim(children, etcd, name, "--workers", "2") for name in ("gw-a", "gw-b")]
        witness = Witness(children, etcd, WITNESS_INTERVAL)
        data = gate_config(sims, etcd, str(Path(tmp) / "state"))
        config_path = Path(tmp) / "watchdog.yml"
        config_path.write_text(yaml.safe_dump(data))
        healthy = asyncio.run(in_process_gate(data, witness, reps, sims, delayed=False))
        delayed = asyncio.run(in_process_gate(data, witness, reps, sims, delayed=True))
        proc_rows = real_process(config_path, sims, witness, runs)
        witness.quit()
    out = summarize(healthy, proc_rows)
    out["delayed"] = summarize(delayed, [])
    out["target_met"] = out["target_met"] and out["delayed"]["target_met"]
    return out


def summarize(rows: list[dict[str, Any]], proc_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The first-served moment T of a canary at a gateway is bracketed by the witness: after
    the last non-302 request was sent (or the etcd PUT event, if the very first poll got a
    302) and before the first 302 answer came back. The gate's delay after the later gateway
    is then within [exit - latest upper, exit - latest lower]: the midpoint is the estimate,
    the upper end the conservative figure the target is judged on."""
    est, upper, missed = [], [], 0
    per_gw: dict[str, list[float]] = {"detect_lag_ms": [], "sync_ms": [],
                                      "independent_propagation_ms": [],
                                      "put_answer_to_first_served_ms": [],
                                      "put_to_etcd_event_ms": [], "admin_put_ms": [],
                                      "first_served_uncertainty_ms": [],
                                      "release_to_first_served_ms": []}
    for row in rows:
        g = list(row["gateways"].values())
        if not row["ok"]:
            continue
        if any(v["first_served"] is None for v in g):
            missed += 1  # the canary was served too briefly for the witness to see it
            continue
        lows = [v["first_served_lower"] if v["first_served_lower"] is not None
                else (v["etcd_put"] or v["first_served"]) for v in g]
        highs = [v["first_served"] for v in g]
        lo, hi = max(lows), max(highs)
        est.append((row["exited"] - (lo + hi) / 2) * 1000)
        upper.append((row["exited"] - lo) * 1000)
        for v, low in zip(g, lows, strict=True):
            mid = (low + v["first_served"]) / 2
            per_gw["detect_lag_ms"].append((v["gate_saw_302"] - mid) * 1000)
            per_gw["sync_ms"].append(v["sync_seconds"] * 1000)
            per_gw["first_served_uncertainty_ms"].append((v["first_served"] - low) * 1000)
            if v["etcd_put"] is not None:
                per_gw["independent_propagation_ms"].append((mid - v["etcd_put"]) * 1000)
                if v["put_start"] is not None:
                    per_gw["put_to_etcd_event_ms"].append((v["etcd_put"] - v["put_start"]) * 1000)
            if v["put_start"] is not None and v["put_end"] is not None:
                per_gw["admin_put_ms"].append((v["put_end"] - v["put_start"]) * 1000)
                per_gw["put_answer_to_first_served_ms"].append((mid - v["put_end"]) * 1000)
            if row.get("released") is not None:
                per_gw["release_to_first_served_ms"].append((mid - row["released"]) * 1000)
    stats = {k: summary(v) for k, v in per_gw.items()}
    exit_stats = summary(est)
    upper_stats = summary(upper)
    return {
        "settings": {"reps": len(rows), "witness_interval_ms": WITNESS_INTERVAL * 1000,
                     "gate_poll_interval_ms": 50.0, "gateways": 2},
        "gate_exit_after_first_served_ms": exit_stats,
        "gate_exit_after_first_served_upper_ms": upper_stats,
        "witness_missed": missed,
        "per_gateway": stats,
        "sync_vs_independent_ms": {
            "watchdog_sync_seconds_ms": stats["sync_ms"]["median"],
            "independent_put_event_to_first_302_ms": stats["independent_propagation_ms"]["median"],
            "independent_put_answer_to_first_302_ms":
                stats["put_answer_to_first_served_ms"]["median"],
        },
        "real_process": proc_rows,
        "real_process_exit_after_served_at_ms": median(
            r["exit_after_last_served_at_ms"] for r in proc_rows),
        "real_process_wall_s": median(r["process_wall_s"] for r in proc_rows),
        "real_process_report_after_served_at_ms": median(
            r["report_printed_after_last_served_at_ms"] for r in proc_rows),
        "real_process_exit_after_report_ms": median(
            r["exit_after_report_printed_ms"] for r in proc_rows),
        "reps_ok": sum(1 for r in rows if r["ok"]),
        "rows": rows,
        "target": "gate exits <= 100 ms after the canary is first served",
        "target_met": upper_stats["n"] > 0 and upper_stats["max"] <= 100.0,
    }
