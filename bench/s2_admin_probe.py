"""Section 2: the admin-call probe against blackbox_exporter probing the same endpoint.

One real etcd member and two simulated APISIX gateways in their own processes: `fast` (no
fault) and `slow` (fault slow-admin with admin_delay = the injected delay). Both tools ask
for the same missing route (`GET /apisix/admin/routes/watchdog-probe-absent`, 404 "Key not
found", X-API-KEY sent), each on a new connection:

- watchdog: `AdminClient.get_missing_route` in this process, latency = `result.duration`;
- blackbox_exporter: `/probe?module=admin_404&target=...` (http prober, valid_status_codes
  [404], body must match "Key not found"), latency = its `probe_duration_seconds`.

Probes are strictly sequential and interleaved (the order flips every round). CPU per probe:
watchdog = `time.process_time()` of this process around a batch; blackbox = utime+stime
delta of its process around a batch of /probe requests (that includes serving /probe and
rendering its answer, which is how blackbox is used).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from typing import Any

import aiohttp
from common import ADMIN_KEY, Blackbox, Children, ratio, scalar_samples, start_sim, summary

from watchdog.config import config_from_dict
from watchdog.gateway.admin import PROBE_ROUTE_ID, AdminClient
from watchdog.httpprobe import make_session
from watchdog.lab.cluster import EtcdCluster

KEY_ENV = "WATCHDOG_BENCH_ADMIN_KEY"
MODULES = f"""modules:
  admin_404:
    prober: http
    timeout: 5s
    http:
      method: GET
      valid_status_codes: [404]
      no_follow_redirects: true
      preferred_ip_protocol: ip4
      headers:
        X-API-KEY: "{ADMIN_KEY}"
      fail_if_body_not_matches_regexp: ["Key not found"]
"""


def blackbox_probe(bb: Blackbox, target: str) -> tuple[float, bool]:
    with urllib.request.urlopen(bb.probe_url(target, "admin_404"), timeout=10) as resp:
        text = resp.read().decode()
    duration = scalar_samples(text, "probe_duration_seconds")[0][1]
    success = scalar_samples(text, "probe_success")[0][1] == 1.0
    return duration, success


async def measure(sims: dict[str, dict[str, Any]], bb: Blackbox, rounds: int, batch: int,
                  batches: int) -> dict[str, Any]:
    os.environ[KEY_ENV] = ADMIN_KEY
    config = config_from_dict({
        "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
        "gateways": [{"name": name, "admin_url": sim["admin_url"], "admin_key_env": KEY_ENV}
                     for name, sim in sims.items()],
        "state_dir": "/tmp/wdbench-unused",
    })
    session = make_session(connector=aiohttp.TCPConnector(force_close=True, limit=0),
                           timeout=aiohttp.ClientTimeout(total=None))
    clients = {gw.name: AdminClient(gw, session) for gw in config.gateways}
    targets = {name: f"{sim['admin_url']}/apisix/admin/routes/{PROBE_ROUTE_ID}"
               for name, sim in sims.items()}
    loop = asyncio.get_running_loop()
    lat: dict[str, dict[str, list[float]]] = {t: {"watchdog": [], "blackbox": []} for t in sims}
    pairs: dict[str, list[float]] = {t: [] for t in sims}  # watchdog - blackbox, same round
    failures = {"watchdog": 0, "blackbox": 0}

    async def wd(name: str) -> float | None:
        result = await clients[name].get_missing_route(5.0)
        if result.ok:
            lat[name]["watchdog"].append(result.duration * 1000)
            return result.duration * 1000
        failures["watchdog"] += 1
        return None

    async def bbx(name: str) -> float | None:
        duration, ok = await loop.run_in_executor(None, blackbox_probe, bb, targets[name])
        if ok:
            lat[name]["blackbox"].append(duration * 1000)
            return duration * 1000
        failures["blackbox"] += 1
        return None

    try:
        for _ in range(3):  # warm-up: connections, imports, the sims' etcd paths
            for name in sims:
                await wd(name)
                await bbx(name)
        for name in sims:
            lat[name] = {"watchdog": [], "blackbox": []}
        failures.update(watchdog=0, blackbox=0)
        for r in range(rounds):
            for name in sims:
                if r % 2 == 0:
                    a, b = await wd(name), await bbx(name)
                else:
                    b, a = await bbx(name), await wd(name)
                if a is not None and b is not None:
                    pairs[name].append(a - b)
        # CPU per probe, against the fast gateway, batches interleaved.
        cpu: dict[str, list[float]] = {"watchdog": [], "blackbox": []}
        for _ in range(batches):
            c0 = time.process_time()
            for _ in range(batch):
                await clients["fast"].get_missing_route(5.0)
            cpu["watchdog"].append((time.process_time() - c0) / batch * 1000)
            b0 = bb.cpu()
            for _ in range(batch):
                await loop.run_in_executor(None, blackbox_probe, bb, targets["fast"])
            cpu["blackbox"].append((bb.cpu() - b0) / batch * 1000)
    finally:
        await session.close()
    return {"latency_ms": lat, "paired_diff_ms": pairs, "failures": failures,
            "cpu_ms_per_probe": cpu}


def run(quick: bool) -> dict[str, Any]:
    delay = 0.100
    rounds, batch, batches = (15, 100, 2) if quick else (40, 150, 3)
    with EtcdCluster(size=1, name_prefix="s2") as cluster, Children() as children:
        url = cluster.endpoints[0]
        sims = {
            "fast": start_sim(children, url, "bench-fast", "--workers", "1"),
            "slow": start_sim(children, url, "bench-slow", "--workers", "1",
                              "--fault", "slow-admin", "--admin-delay", str(delay)),
        }
        bb = Blackbox(children, MODULES).start()
        try:
            raw = asyncio.run(measure(sims, bb, rounds, batch, batches))
        finally:
            bb.close()
    lat = raw["latency_ms"]
    med = {gw: {tool: summary(v) for tool, v in tools.items()} for gw, tools in lat.items()}

    def m(gw: str, tool: str) -> float:
        return med[gw][tool]["median"]

    rows = {}
    for gw in ("fast", "slow"):
        rows[gw] = {"watchdog_ms": m(gw, "watchdog"), "blackbox_ms": m(gw, "blackbox"),
                    "diff_ms": m(gw, "watchdog") - m(gw, "blackbox"),
                    "paired_diff_ms": summary(raw["paired_diff_ms"][gw])["median"]}
    recovered = {tool: m("slow", tool) - m("fast", tool) for tool in ("watchdog", "blackbox")}
    cpu = {tool: summary(v) for tool, v in raw["cpu_ms_per_probe"].items()}
    within_bb = all(abs(rows[gw]["diff_ms"]) <= 2.0 for gw in rows)
    delay_err = recovered["watchdog"] - delay * 1000
    return {
        "settings": {"injected_delay_ms": delay * 1000, "rounds": rounds,
                     "cpu_batch": batch, "cpu_batches": batches},
        "latency": med,
        "rows": rows,
        "recovered_ms": recovered,
        "recovered_error_ms": {t: v - delay * 1000 for t, v in recovered.items()},
        "cpu_ms_per_probe": cpu,
        "cpu_ratio_watchdog_over_blackbox": ratio(cpu["watchdog"]["median"],
                                                  cpu["blackbox"]["median"]),
        "failures": raw["failures"],
        "raw": {"latency_ms": lat, "paired_diff_ms": raw["paired_diff_ms"],
                "cpu_ms_per_probe": raw["cpu_ms_per_probe"]},
        "target_within_2ms_of_blackbox": within_bb,
        "target_delay_recovered_2ms": abs(delay_err) <= 2.0,
    }
