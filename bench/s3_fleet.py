"""Section 3: the real agent watching a fleet: 200 etcd peers + 200 gateway admin APIs at a 5 s
interval, then 1,000 peers (+ 1,000 gateways, the whole fleet x5).

The fleet is `replay_server.py` in its own process (real etcd pages and JSON-gateway answers,
APISIX's admin 404). The agent is the real `watchdog run` (`fleet_agent.py`: watchdog's CLI
with timing hooks), config `grpc_probes: false` (the replay speaks HTTP only) and
`discover_members: false`. Blocks of each size alternate (200, 1000, 200, 1000 in a full run),
each with a fresh replay server and agent; the first two cycles of a block are warm-up.

Measured from outside the agent with psutil (utime+stime, RSS) between the ends of
consecutive etcd cycles, so a window is whole intervals with everything the agent does in
them: the etcd job, 200/1,000 gateway jobs, the state job, and one `/metrics` scrape every
third cycle (15 s, as Prometheus would). Cycle wall time, the socket-table snapshot and the
`/metrics` render come from the hooks.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml
from common import (
    ADMIN_KEY,
    BENCH,
    PYTHON,
    REPO,
    Children,
    free_port,
    median,
    proc_cpu,
    ratio,
    scalar_samples,
    summary,
)

KEY_ENV = "WATCHDOG_BENCH_ADMIN_KEY"
INTERVAL = 5.0
TIMEOUT = 4.0  # the longest the config allows under a 5 s interval: 1,000 peers need it


def wait_file(path: Path, proc: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written after {timeout}s")
        time.sleep(0.05)


class Records:
    """Reads the agent's JSON lines as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.rows: list[dict[str, Any]] = []

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self.pos)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.pos += len(complete.encode())
        self.rows += [json.loads(line) for line in complete.splitlines() if line.strip()]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == kind]


def write_config(path: Path, peers: list[int], gateways: list[int], state: Path) -> None:
    config = {
        "etcd": {
            "endpoints": [f"http://127.0.0.1:{p}" for p in peers],
            "discover_members": False, "grpc_probes": False,
            "interval": f"{INTERVAL:g}s", "timeout": f"{TIMEOUT:g}s",
        },
        "gateways": [{"name": f"gw-{i:04d}", "admin_url": f"http://127.0.0.1:{p}",
                      "admin_key_env": KEY_ENV} for i, p in enumerate(gateways)],
        "state_dir": str(state),
    }
    path.write_text(yaml.safe_dump(config))


def scrape(url: str) -> tuple[float, bytes]:
    w0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
    return time.perf_counter() - w0, body


def tcp_sockets_by_state() -> dict[str, int]:
    """All TCP sockets of the host by state (from /proc/net/tcp and tcp6)."""
    names = {"01": "ESTABLISHED", "06": "TIME_WAIT", "0A": "LISTEN"}
    counts: dict[str, int] = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            state = names.get(line.split()[3], "other")
            counts[state] = counts.get(state, 0) + 1
    return counts


def compare_snapshots(runs: int = 5) -> dict[str, Any]:
    """The socket-table snapshot both ways, in this process, with the fleet's sockets up:
    psutil.net_connections (the old path, still the fallback) and the netlink dump."""
    from watchdog.etcd import sockets

    def timed(fn: Any) -> dict[str, Any]:
        cpu, wall = [], []
        for _ in range(runs):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu.append((time.process_time() - c0) * 1000)
            wall.append((time.perf_counter() - w0) * 1000)
        return {"cpu_ms": median(cpu), "wall_ms": median(wall)}

    out = {"host_tcp_sockets": tcp_sockets_by_state(),
           "psutil": timed(lambda: sockets.SocketTable.from_connections(
               psutil.net_connections(kind="tcp")))}
    if hasattr(sockets, "_netlink_table"):
        out["netlink"] = timed(sockets._netlink_table)
    return out


def block(peers: int, gateways: int, cycles: int, tmp: Path) -> dict[str, Any]:
    tag = f"{peers}p{gateways}g-{time.monotonic_ns()}"
    ready = tmp / f"replay-{tag}.json"
    records_path = tmp / f"records-{tag}.jsonl"
    with Children() as children:
        replay = children.start([PYTHON, str(BENCH / "replay_server.py"), "--peers", str(peers),
                                 "--gateways", str(gateways), "--ready-file", str(ready)])
        wait_file(ready, replay)
        info = json.loads(ready.read_text())
        config = tmp / f"watchdog-{tag}.yml"
        write_config(config, info["peer_ports"], info["gateway_ports"], tmp / f"state-{tag}")
        port = free_port()
        env = {**os.environ, KEY_ENV: ADMIN_KEY}
        log = open(tmp / f"agent-{tag}.log", "wb")
        agent = children.start([PYTHON, str(BENCH / "fleet_agent.py"), str(records_path), "--",
                                "run", "--config", str(config), "--web.listen-address",
                                f"127.0.0.1:{port}", "--log.level", "warning"],
                               env=env, stdout=log, stderr=log, cwd=str(REPO))
        log.close()
        records = Records(records_path)
        agent_ps, replay_ps = psutil.Process(agent.pid), psutil.Process(replay.pid)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        samples: list[dict[str, Any]] = []  # one per cycle end after warm-up
        scrapes: list[dict[str, Any]] = []
        deadline = time.monotonic() + INTERVAL * (cycles + 4) + 60
        warmup = 2
        while len(records.of("cycle")) < warmup + cycles + 1:
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with {agent.returncode}: "
                                   f"{(tmp / f'agent-{tag}.log').read_text()[-800:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{peers} peers: cycles did not come in time")
            seen = len(records.of("cycle"))
            records.poll()
            done = len(records.of("cycle"))
            if done > seen and done >= warmup:
                samples.append({"cycle": done, "t": time.monotonic(),
                                "agent_cpu": proc_cpu(agent.pid),
                                "replay_cpu": proc_cpu(replay.pid),
                                "rss": agent_ps.memory_info().rss})
                if (done - warmup) % 3 == 1 and done < warmup + cycles + 1:
                    wall, body = scrape(metrics_url)
                    scrapes.append({"wall": wall, "bytes": len(body)})
            time.sleep(0.05)
        wall, body = scrape(metrics_url)
        text = body.decode()
        up = sum(1 for _, v in scalar_samples(text, "watchdog_etcd_peer_up") if v == 1.0)
        admin_ok = sum(1 for _, v in scalar_samples(text, "watchdog_gateway_admin_success")
                       if v == 1.0)
        fails = sum(v for lbl, v in scalar_samples(text, "watchdog_job_runs_total")
                    if 'outcome="timeout"' in lbl or 'outcome="error"' in lbl)
        probe_sum = sum(v for lbl, v in scalar_samples(
            text, "watchdog_etcd_probe_duration_seconds_sum") if 'api="json"' in lbl)
        probe_count = sum(v for lbl, v in scalar_samples(
            text, "watchdog_etcd_probe_duration_seconds_count") if 'api="json"' in lbl)
        poll_seconds = [v for _, v in scalar_samples(text, "watchdog_etcd_poll_duration_seconds")]
        admin_sum = sum(v for _, v in scalar_samples(
            text, "watchdog_gateway_admin_duration_seconds_sum"))
        admin_count = sum(v for _, v in scalar_samples(
            text, "watchdog_gateway_admin_duration_seconds_count"))
        rss_peak = max(s["rss"] for s in samples)
        replay_rss = replay_ps.memory_info().rss
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{info['control_port']}/__stats",
                                        timeout=10) as resp:
                served = json.loads(resp.read())
        except OSError:
            served = {}
        snapshot_paths = compare_snapshots()
        children.stop(agent, timeout=30)
        records.poll()
    cycle_rows = records.of("cycle")[warmup:]
    snaps = records.of("snapshot")[warmup:]
    renders = records.of("render")
    per_cycle = []
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        per_cycle.append({"wall_s": dt, "agent_cpu_pct": 100 * (b["agent_cpu"] - a["agent_cpu"]) / dt,
                          "replay_cpu_pct": 100 * (b["replay_cpu"] - a["replay_cpu"]) / dt})
    first, last = samples[0], samples[-1]
    span = last["t"] - first["t"]
    return {
        "peers": peers, "gateways": gateways, "cycles_measured": len(per_cycle),
        "window_s": span,
        "agent_cpu_pct": 100 * (last["agent_cpu"] - first["agent_cpu"]) / span,
        "agent_cpu_pct_per_cycle": summary([c["agent_cpu_pct"] for c in per_cycle]),
        "replay_cpu_pct": 100 * (last["replay_cpu"] - first["replay_cpu"]) / span,
        "cycle_wall_s": summary([c["wall"] for c in cycle_rows]),
        "cycle_wall_all_s": [c["wall"] for c in records.of("cycle")],
        "rss_mib": last["rss"] / 2**20, "rss_peak_mib": rss_peak / 2**20,
        "replay_rss_mib": replay_rss / 2**20,
        "snapshot_wall_ms": summary([s["wall"] * 1000 for s in snaps]),
        "snapshot_cpu_ms": summary([s["cpu"] * 1000 for s in snaps]),
        "snapshot_established": summary([s["established"] for s in snaps]),
        "snapshot_listening": summary([s["listening"] for s in snaps]),
        "render_cpu_ms": summary([r["cpu"] * 1000 for r in renders]),
        "render_wall_ms": summary([r["wall"] * 1000 for r in renders]),
        "scrape_wall_ms": summary([s["wall"] * 1000 for s in scrapes] + [wall * 1000]),
        "metrics_bytes": len(body), "metrics_lines": text.count("\n"),
        "peers_up": up, "gateways_admin_ok": admin_ok,
        "json_probe_mean_ms": 1000 * probe_sum / probe_count if probe_count else None,
        "admin_call_mean_ms": 1000 * admin_sum / admin_count if admin_count else None,
        "poll_duration_median_ms": 1000 * median(poll_seconds) if poll_seconds else None,
        "job_timeouts_or_errors": fails,
        "replay_served": served,
        "snapshot_paths": snapshot_paths,
    }


def run(quick: bool) -> dict[str, Any]:
    cycles = 3 if quick else 5
    plan = [(200, 200), (1000, 1000)] if quick else \
        [(200, 200), (1000, 200), (1000, 1000)] * 2
    blocks = []
    with tempfile.TemporaryDirectory(prefix="wdbench-s3-") as tmp:
        for peers, gateways in plan:
            row = block(peers, gateways, cycles, Path(tmp))
            blocks.append(row)
            print(f"  s3 {peers}+{gateways}: cycle {row['cycle_wall_s']['median']:.3f} s, "
                  f"cpu {row['agent_cpu_pct']:.1f} %, rss {row['rss_mib']:.0f} MiB, "
                  f"snapshot {row['snapshot_cpu_ms']['median']:.1f} ms, up {row['peers_up']}",
                  flush=True)
    sizes: dict[str, dict[str, Any]] = {}
    for key in sorted({(b["peers"], b["gateways"]) for b in blocks}):
        rows = [b for b in blocks if (b["peers"], b["gateways"]) == key]
        sizes[f"{key[0]}+{key[1]}"] = {
            "peers": key[0], "gateways": key[1], "blocks": len(rows),
            "cycle_wall_s": median(r["cycle_wall_s"]["median"] for r in rows),
            "cycle_wall_max_s": max(r["cycle_wall_s"]["max"] for r in rows),
            "agent_cpu_pct": median(r["agent_cpu_pct"] for r in rows),
            "replay_cpu_pct": median(r["replay_cpu_pct"] for r in rows),
            "rss_mib": median(r["rss_mib"] for r in rows),
            "rss_peak_mib": max(r["rss_peak_mib"] for r in rows),
            "snapshot_cpu_ms": median(r["snapshot_cpu_ms"]["median"] for r in rows),
            "snapshot_wall_ms": median(r["snapshot_wall_ms"]["median"] for r in rows),
            "snapshot_established": median(r["snapshot_established"]["median"] for r in rows),
            "psutil_snapshot_cpu_ms": median(r["snapshot_paths"]["psutil"]["cpu_ms"]
                                             for r in rows),
            "psutil_snapshot_wall_ms": median(r["snapshot_paths"]["psutil"]["wall_ms"]
                                              for r in rows),
            "netlink_snapshot_cpu_ms": median(r["snapshot_paths"].get("netlink", {}).get(
                "cpu_ms") for r in rows),
            "host_tcp_sockets": rows[-1]["snapshot_paths"]["host_tcp_sockets"],
            "render_cpu_ms": median(r["render_cpu_ms"]["median"] for r in rows),
            "scrape_wall_ms": median(r["scrape_wall_ms"]["median"] for r in rows),
            "metrics_bytes": median(r["metrics_bytes"] for r in rows),
            "metrics_lines": median(r["metrics_lines"] for r in rows),
            "peers_up": min(r["peers_up"] for r in rows),
            "json_probe_mean_ms": median(r["json_probe_mean_ms"] for r in rows),
            "admin_call_mean_ms": median(r["admin_call_mean_ms"] for r in rows),
            "poll_duration_median_ms": median(r["poll_duration_median_ms"] for r in rows),
            "gateways_admin_ok": min(r["gateways_admin_ok"] for r in rows),
            "job_timeouts_or_errors": max(r["job_timeouts_or_errors"] for r in rows),
        }
    small = sizes.get("200+200")
    targets: dict[str, bool | None] = {}
    growth: dict[str, float | None] = {}
    if small:
        targets = {
            "cycle_wall_lt_1s": small["cycle_wall_s"] < 1.0,
            # issue #17: the whole fleet x5 on a third of a core, in 120 MiB
            "cpu_1000_1000_le_33pct": None if "1000+1000" not in sizes
            else sizes["1000+1000"]["agent_cpu_pct"] <= 33.0,
            "rss_1000_1000_le_120mib": None if "1000+1000" not in sizes
            else sizes["1000+1000"]["rss_peak_mib"] <= 120.0,
            "cpu_lt_25pct": small["agent_cpu_pct"] < 25.0,
            "rss_lt_120mib": small["rss_peak_mib"] < 120.0,
        }
        for key in ("1000+200", "1000+1000"):
            big = sizes.get(key)
            if big is None:
                continue
            growth[key] = ratio(big["agent_cpu_pct"], small["agent_cpu_pct"])
            # Only a clean comparison when the big fleet was fully polled (timeouts are cheap).
            targets[f"cpu_growth_{key}_le_5_5x"] = (growth[key] or 99) <= 5.5 and \
                big["peers_up"] == big["peers"]
    return {"settings": {"interval_s": INTERVAL, "timeout_s": TIMEOUT, "cycles_per_block": cycles,
                         "warmup_cycles": 2, "plan": plan},
            "sizes": sizes, "cpu_growth_over_200": growth,
            "rss_growth_over_200": {k: ratio(sizes[k]["rss_mib"], small["rss_mib"])
                                    for k in growth} if small else {},
            "targets": targets, "blocks": blocks}
