"""Section 4: the load one watchdog poll cycle puts on a real etcd member.

One real etcd 3.5.1 member; watchdog reaches it through a counting TCP proxy in this process,
so every byte is seen on the wire (`discover_members: false` and the proxy URL as the
endpoint, otherwise discovery would hand out the member's own URL; a 1-member cluster polls
the same member either way). Default poll settings: /metrics, JSON range + status, gRPC
range + status, and the member list of discovery.

- watchdog's side (the proxy): HTTP/1.1 connections by request path (one request each:
  watchdog closes every HTTP connection after one call), request and response bytes; the gRPC
  connection is one long-lived HTTP/2 connection, its bytes counted per cycle;
- etcd's side: deltas of `grpc_server_handled_total` (the JSON gateway turns each call into
  an in-process gRPC call, so these count JSON and gRPC calls together),
  `promhttp_metric_handler_requests_total`, `etcd_network_client_grpc_*_bytes_total`, and
  the etcd process's CPU per cycle next to its CPU per plain /metrics scrape.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from typing import Any

from common import proc_cpu, scalar_samples

from watchdog.config import config_from_dict
from watchdog.daemon import Daemon
from watchdog.lab.cluster import EtcdCluster


class CountingProxy:
    """A TCP proxy that classifies each connection by its first bytes and counts bytes."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conns: list[dict[str, Any]] = []
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)

    async def settle(self, timeout: float = 3.0) -> None:
        """Wait until every HTTP connection has closed (each carries one request)."""
        deadline = time.monotonic() + timeout
        while any(r["open"] and r["kind"] != "grpc" for r in self.conns):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec: dict[str, Any] = {"kind": None, "path": None, "up": 0, "down": 0, "open": True}
        self.conns.append(rec)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            rec["open"] = False
            return
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    if key == "up" and rec["kind"] is None:
                        if data.startswith(b"PRI * HTTP/2.0"):
                            rec["kind"], rec["path"] = "grpc", "gRPC (HTTP/2)"
                        else:
                            line = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
                            rec["kind"] = "http"
                            rec["path"] = f"{line[0]} {line[1]}" if len(line) > 1 else "?"
                    rec[key] += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    if dst.can_write_eof():
                        dst.write_eof()
                except (OSError, RuntimeError):
                    pass

        await asyncio.gather(pipe(reader, up_writer, "up"), pipe(up_reader, writer, "down"))
        for w in (writer, up_writer):
            w.close()
        rec["open"] = False

    def snapshot(self) -> dict[str, Any]:
        """Closed HTTP connections so far (by path) and the gRPC byte totals."""
        http: dict[str, Counter[str]] = defaultdict(Counter)
        grpc = Counter()
        for rec in self.conns:
            if rec["kind"] == "grpc":
                grpc["connections"] += 1
                grpc["up"] += rec["up"]
                grpc["down"] += rec["down"]
            elif rec["kind"] == "http" and not rec["open"]:
                http[rec["path"]]["requests"] += 1
                http[rec["path"]]["up"] += rec["up"]
                http[rec["path"]]["down"] += rec["down"]
        return {"http": {k: dict(v) for k, v in http.items()}, "grpc": dict(grpc)}


def etcd_counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for labels, value in scalar_samples(text, "grpc_server_handled_total"):
        parts = dict(p.split("=", 1) for p in labels.split(","))
        key = f"{parts['grpc_service'].strip(chr(34))}/{parts['grpc_method'].strip(chr(34))}"
        out[f"grpc:{key}"] = out.get(f"grpc:{key}", 0.0) + value
    out["promhttp_requests"] = sum(v for _, v in scalar_samples(
        text, "promhttp_metric_handler_requests_total"))
    for name in ("etcd_network_client_grpc_received_bytes_total",
                 "etcd_network_client_grpc_sent_bytes_total"):
        out[name] = sum(v for _, v in scalar_samples(text, name))
    return out


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = diff(value, before.get(key, {}))
        else:
            out[key] = value - before.get(key, 0)
    return out


def scale(data: dict[str, Any], by: float) -> dict[str, Any]:
    return {k: scale(v, by) if isinstance(v, dict) else v / by for k, v in data.items()}


async def measure(cluster: EtcdCluster, cycles: int, state_dir: str) -> dict[str, Any]:
    member = cluster.members[0]
    url = member.client_url
    proxy = CountingProxy("127.0.0.1", member.client_port)
    port = await proxy.start()
    config = config_from_dict({
        "etcd": {"endpoints": [f"http://127.0.0.1:{port}"], "discover_members": False,
                 "interval": "15s", "timeout": "5s"},
        "state_dir": state_dir,
    })
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    try:
        await daemon.poll_etcd()  # warm-up: the gRPC channel is opened here
        await proxy.settle()
        # etcd's idle CPU over a second, then its CPU over the cycles.
        c0 = proc_cpu(member.pid)
        await asyncio.sleep(2.0)
        idle_per_s = (proc_cpu(member.pid) - c0) / 2.0
        before_w = proxy.snapshot()
        before_e = await loop.run_in_executor(None, etcd_counters, url)
        c0, t0 = proc_cpu(member.pid), time.monotonic()
        for _ in range(cycles):
            await daemon.poll_etcd()
        await proxy.settle()  # let the proxy see every connection close
        wall = time.monotonic() - t0
        cpu = proc_cpu(member.pid) - c0 - idle_per_s * wall
        after_e = await loop.run_in_executor(None, etcd_counters, url)
        after_w = proxy.snapshot()
        # etcd's CPU for a plain /metrics scrape (what Prometheus costs it), same method.
        scrapes = cycles * 4

        def scrape_many() -> None:
            for _ in range(scrapes):
                with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
                    resp.read()

        c1, t1 = proc_cpu(member.pid), time.monotonic()
        await loop.run_in_executor(None, scrape_many)
        scrape_cpu = proc_cpu(member.pid) - c1 - idle_per_s * (time.monotonic() - t1)
        page = await daemon.etcd.http.metrics_page(url, 5.0)
    finally:
        await daemon.stop()
        await proxy.close()
    etcd = diff(after_e, before_e)
    etcd["promhttp_requests"] -= 1  # our own "before" read
    etcd = {k: v for k, v in etcd.items() if v}
    wd = diff(after_w, before_w)
    return {
        "cycles": cycles,
        "watchdog_side_per_cycle": scale(wd, cycles),
        "etcd_side_per_cycle": scale(etcd, cycles),
        "etcd_cpu_ms_per_cycle": 1000 * cpu / cycles,
        "etcd_cpu_ms_per_plain_scrape": 1000 * scrape_cpu / scrapes,
        "etcd_idle_cpu_ms_per_s": 1000 * idle_per_s,
        "metrics_page_bytes_decoded": len(page[1] or b""),
    }


async def per_member(cluster: EtcdCluster, cycles: int, state_dir: str) -> dict[str, Any]:
    """A 3-member cluster, default settings (every member discovered from the endpoints):
    what each member is asked per cycle, from etcd's own counters."""
    config = config_from_dict({"etcd": {"endpoints": cluster.endpoints, "interval": "15s",
                                        "timeout": "5s"}, "state_dir": state_dir})
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    urls = {m.name: m.client_url for m in cluster.members}
    try:
        await daemon.poll_etcd()
        before = {n: await loop.run_in_executor(None, etcd_counters, u) for n, u in urls.items()}
        for _ in range(cycles):
            await daemon.poll_etcd()
        after = {n: await loop.run_in_executor(None, etcd_counters, u) for n, u in urls.items()}
    finally:
        await daemon.stop()
    out = {}
    for name in urls:
        d = diff(after[name], before[name])
        d["promhttp_requests"] -= 1
        out[name] = {k: v / cycles for k, v in d.items() if v}
    return {"cycles": cycles, "members": out, "peers_polled": len(daemon.snapshot().peers)}


def run(quick: bool) -> dict[str, Any]:
    cycles = 5 if quick else 10
    with EtcdCluster(size=1, name_prefix="s4") as cluster, \
            tempfile.TemporaryDirectory(prefix="wdbench-s4-") as state:
        result = asyncio.run(measure(cluster, cycles, state))
    with EtcdCluster(size=3, name_prefix="s4m") as cluster, \
            tempfile.TemporaryDirectory(prefix="wdbench-s4m-") as state:
        result["three_members"] = asyncio.run(per_member(cluster, cycles, state))
    per = result["watchdog_side_per_cycle"]
    http_requests = sum(v.get("requests", 0) for v in per["http"].values())
    http_up = sum(v.get("up", 0) for v in per["http"].values())
    http_down = sum(v.get("down", 0) for v in per["http"].values())
    grpc = per.get("grpc", {})
    result["totals_per_cycle"] = {
        "http_requests": http_requests,
        "grpc_calls": sum(v for k, v in result["etcd_side_per_cycle"].items()
                          if k.startswith("grpc:")) - http_requests + per["http"].get(
            "GET /metrics", {}).get("requests", 0),
        "bytes_to_etcd": http_up + grpc.get("up", 0),
        "bytes_from_etcd": http_down + grpc.get("down", 0),
        "metrics_page_bytes_on_wire": per["http"].get("GET /metrics", {}).get("down", 0),
    }
    for interval in (5, 15):
        result["totals_per_cycle"][f"bytes_per_s_at_{interval}s"] = (
            result["totals_per_cycle"]["bytes_to_etcd"]
            + result["totals_per_cycle"]["bytes_from_etcd"]) / interval
    return result
