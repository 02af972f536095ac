"""Scale-out on real servers: shards split 30 real etcd peers with no overlap and no gap,
also after resharding; an HA pair scraped by one real Prometheus alerts once per peer.

The 30 peers are one real 3-member etcd cluster behind 30 loopback ports: each port is a
plain TCP forwarder to one member (port i to member i mod 3), so every peer answers with a
real etcd's JSON gateway, gRPC and /metrics page. The member list names the real URLs, so
the watchdogs run with `discover_members: false` on the 30 forwarded endpoints.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, WatchdogProcess
from tests.helpers import http_get, require_tool, wait_until
from tests.integration.test_prometheus_e2e import Prometheus, shortened_rules
from tests.promql import metric_names
from tests.unit.test_dashboards import all_expressions, substitute
from watchdog.lab.cluster import EtcdCluster, free_port
from watchdog.lab.gateway_sim import GatewaySim, SimConfig
from watchdog.shard import Shard

pytestmark = pytest.mark.integration
PEERS = 30


class Forwarder:
    """Loopback TCP ports that each relay to one upstream host:port, on their own loop."""

    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.upstreams = upstreams
        self.ports: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[asyncio.base_events.Server] = []

    def start(self) -> Forwarder:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        for host, port in self.upstreams:
            server = await asyncio.start_server(
                lambda r, w, h=host, p=port: self._relay(r, w, h, p), "127.0.0.1", 0)
            self.servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     host: str, port: int) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=5)
        except (OSError, TimeoutError, asyncio.CancelledError):
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            writer.close()
            up_writer.close()

    def stop(self) -> None:
        async def close() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def thirty_peers(etcd_cluster3: EtcdCluster) -> Iterator[list[str]]:
    members = []
    for url in etcd_cluster3.endpoints:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        members.append((host, int(port)))
    forwarder = Forwarder([members[i % 3] for i in range(PEERS)]).start()
    yield [f"http://127.0.0.1:{port}" for port in forwarder.ports]
    forwarder.stop()


def series(text: str, metric: str) -> dict[str, float]:
    """peer label -> value of `metric` in one exposition."""
    out = {}
    for m in re.finditer(rf'^{metric}\{{[^}}]*peer="([^"]+)"[^}}]*\}} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Callable[..., list[WatchdogProcess]]]:
    """Start several `watchdog run` processes at once (their imports overlap, and a busy
    machine gets a minute for them); killed at teardown if still running."""
    started: list[WatchdogProcess] = []

    def start(configs: list[tuple[Path, dict[str, str]]]) -> list[WatchdogProcess]:
        procs = []
        for config, env in configs:
            proc = WatchdogProcess(config, tmp_path / f"watchdog-{len(started)}.log", env)
            with open(proc.log, "ab") as out:
                proc.proc = subprocess.Popen(
                    [sys.executable, "-m", "watchdog", "run", "--config", str(config),
                     "--web.listen-address", f"127.0.0.1:{proc.port}"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, **env}, cwd=REPO)
            started.append(proc)
            procs.append(proc)
        for proc in procs:
            wait_until(proc._healthy, timeout=60, what=f"watchdog /healthz ({proc.log})")
        return procs

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=5)


def start_shards(count: int, peers: list[str], write_config: Callable[..., Path],
                 fleet: Callable[..., list[WatchdogProcess]], tmp_path: Path
                 ) -> list[WatchdogProcess]:
    configs = []
    for index in range(count):
        config = write_config({
            "etcd": {"endpoints": peers, "discover_members": False, "interval": "2s",
                     "timeout": "1500ms"},
            "state_dir": str(tmp_path / f"state-{count}-{index}"),
        }, name=f"shard-{count}-{index}.yml")
        configs.append((config, {"WATCHDOG_SHARD": f"{index}/{count}"}))
    return fleet(configs)


def polled_by(procs: list[WatchdogProcess], peers: list[str]) -> dict[str, list[int]]:
    """Which shards export each peer (and have probed it: a busy machine may time a probe
    out, so up may be 0 in a scrape; being polled is what counts here)."""
    owners: dict[str, list[int]] = {p: [] for p in peers}
    for index, proc in enumerate(procs):
        text = proc.metrics()
        up = series(text, "watchdog_etcd_peer_up")
        probes = series(text, r'watchdog_etcd_probe_duration_seconds_count')
        for peer in up:
            owners.setdefault(peer, []).append(index)
            assert probes.get(peer, 0) > 0, (index, peer, "exported but never probed")
        assert f'watchdog_shard_info{{connections="auto",count="{len(procs)}",' \
               f'index="{index}"}} 1.0' in text
    return owners


def check_split(procs: list[WatchdogProcess], peers: list[str]) -> dict[str, list[int]]:
    for proc in procs:
        proc.wait_ready(timeout=30)
    owners: dict[str, list[int]] = {}

    def settled() -> bool:
        nonlocal owners
        owners = polled_by(procs, peers)
        return all(len(o) == 1 for o in owners.values())

    wait_until(settled, timeout=20, what="every peer polled by exactly one shard")
    assert sorted(owners) == sorted(peers)  # none lost, none invented
    for peer, (index,) in owners.items():
        assert Shard(index, len(procs)).owns_peer(peer)  # the documented hash decides
    return owners


def test_three_shards_then_two_poll_every_peer_exactly_once(
    thirty_peers: list[str], write_config: Callable[..., Path],
    fleet: Callable[..., list[WatchdogProcess]], tmp_path: Path,
) -> None:
    peers = thirty_peers
    shards = start_shards(3, peers, write_config, fleet, tmp_path)
    check_split(shards, peers)
    for proc in shards:
        assert proc.stop() == 0

    # Resharding 3 -> 2: every peer again polled by exactly one of the two.
    shards = start_shards(2, peers, write_config, fleet, tmp_path)
    check_split(shards, peers)
    for proc in shards:
        assert proc.stop() == 0


# --- HA: two replicas of one shard, one real Prometheus ------------------------------------

ADMIN_KEY = "ha-admin-key-5d1e"
# Series whose value is the same from any replica (state of etcd or of the gateway, not a
# replica's own timing): with one replica or two, a dashboard query over them must agree.
STABLE = {"watchdog_etcd_peer_up", "watchdog_etcd_peer_has_leader",
          "watchdog_etcd_peer_is_leader", "watchdog_etcd_peer_info", "watchdog_etcd_stream_limit_exposed",
          "watchdog_etcd_expected_watch_streams", "watchdog_gateway_smoke_success",
          "watchdog_gateway_ready", "watchdog_gateway_etcd_reachable"}


def start_prometheus(tmp_path: Path, targets: list[str]
                     ) -> tuple[subprocess.Popen[bytes], Prometheus]:
    binary = require_tool("prometheus")
    rules = shortened_rules(tmp_path / "rules", "20s")
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "900ms"},
        "rule_files": [str(r) for r in rules],
        "scrape_configs": [{"job_name": "watchdog", "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = Prometheus(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            return http_get(prom.url + "/-/ready", timeout=1)[0] == 200
        except OSError:
            return False
    wait_until(ready, timeout=30, what="prometheus ready")
    return proc, prom


def query_at(prom: Prometheus, expr: str, at: float) -> dict[str, float]:
    """Result of an instant query at `at`: label set (without instance) -> value."""
    out = {}
    for sample in prom.api("query", query=expr, time=f"{at:.3f}")["result"]:
        labels = {k: v for k, v in sample["metric"].items() if k != "instance"}
        out[json.dumps(labels, sort_keys=True)] = float(sample["value"][1])
    return out


async def test_ha_pair_alerts_once_per_peer_and_dashboards_match_one_replica(
    etcd_cluster3: EtcdCluster, write_config: Callable[..., Path],
    fleet: Callable[..., list[WatchdogProcess]], tmp_path: Path,
) -> None:
    live = etcd_cluster3.endpoints[0]
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a peer that is down
    sim = GatewaySim(SimConfig(name="gw-ha", etcd_endpoints=[live], admin_key=ADMIN_KEY,
                               workers=2, admin_delay=0.0))
    await sim.start()
    key_file = tmp_path / "admin.key"
    key_file.write_text(ADMIN_KEY)
    key_file.chmod(0o600)
    prom_proc: subprocess.Popen[bytes] | None = None
    try:
        configs = []
        for name in ("a", "b"):
            config = write_config({
                "etcd": {"endpoints": [live, dead], "discover_members": False,
                         "interval": "1s", "timeout": "800ms"},
                "gateways": [{"name": "gw-ha", "admin_url": sim.admin_url,
                              "admin_key_file": str(key_file), "data_url": sim.data_url,
                              "status_url": sim.status_url, "workers": 2}],
                "smoke": {"interval": "1s", "timeout": "5s"},
                "state_dir": str(tmp_path / f"state-{name}"),
            }, name=f"ha-{name}.yml")
            configs.append((config, {}))
        replicas = await asyncio.to_thread(fleet, configs)
        a, b = (r.url.removeprefix("http://") for r in replicas)
        prom_proc, prom = await asyncio.to_thread(start_prometheus, tmp_path, [a, b])

        def peer_down_alerts() -> list[dict[str, Any]]:
            alerts = prom.api("alerts")["alerts"]
            down = [x for x in alerts if x["labels"]["alertname"] == "EtcdPeerDown"]
            return down if any(x["state"] == "firing" for x in down) else []
        down = await asyncio.to_thread(wait_until, peer_down_alerts, 40, 0.5,
                                       "EtcdPeerDown firing")
        # Both replicas report the dead peer: the alert is there once, for that peer.
        raw = await asyncio.to_thread(prom.query, "watchdog_etcd_peer_up == 0")
        assert {s["metric"]["instance"] for s in raw} == {a, b}
        assert len(down) == 1 and down[0]["labels"]["peer"] == dead, down
        assert "instance" not in down[0]["labels"]
        # No alert about a peer or a gateway is duplicated per replica.
        alerts = await asyncio.to_thread(prom.api, "alerts")
        for alert in alerts["alerts"]:
            if not alert["labels"]["alertname"].startswith("Watchdog"):
                assert "instance" not in alert["labels"], alert

        # Both replicas ran smoke canaries against the one gateway, side by side: none failed.
        def smoked() -> bool:
            ran = prom.query("watchdog_gateway_last_smoke_timestamp_seconds > 0")
            return {s["metric"]["instance"] for s in ran} == {a, b}
        await asyncio.to_thread(wait_until, smoked, 30, 0.5, "both replicas smoke-tested")
        failures = await asyncio.to_thread(
            prom.query, "watchdog_gateway_smoke_failures_total > 0")
        assert not failures, (failures, [r.output()[-3000:] for r in replicas])
        ok = await asyncio.to_thread(prom.query, "watchdog_gateway_smoke_success == 1")
        assert {s["metric"]["instance"] for s in ok} == {a, b}

        # Every dashboard query: with both replicas selected, the same series as with one
        # (none doubled); over replica-independent series, the same numbers.
        def compare() -> list[str]:
            at = time.time() - 1
            problems = []
            for board, where, expr in all_expressions():
                if where.startswith("annotation"):
                    continue
                one = query_at(prom, substitute(expr.replace("$instance", a)), at)
                two = query_at(prom, substitute(expr.replace("$instance", f"{a}|{b}")), at)
                if set(one) != set(two):
                    problems.append(f"{board} {where}: series {sorted(one)} vs {sorted(two)}")
                elif metric_names(expr) <= STABLE and one != two:
                    problems.append(f"{board} {where}: {expr}: {one} vs {two}")
            return problems
        problems: list[str] = []

        def agree() -> bool:
            nonlocal problems
            try:
                problems = compare()
            except Exception as exc:  # a query Prometheus refused: say which
                problems = [f"query failed: {exc!r}"]
            return not problems
        try:
            await asyncio.to_thread(wait_until, agree, 20, 1.0, "dashboards agree")
        except AssertionError:
            raise AssertionError("\n".join(problems)) from None
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            prom_proc.wait(timeout=15)
        await sim.stop()


# --- per-host: an agent beside the member, a central replica for the rest -------------------

def families(text: str) -> set[str]:
    """Names of the series that have a sample (a family without one is no series)."""
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.M)}


def test_per_host_agent_and_central_replica_export_no_series_twice(
    etcd_cluster3: EtcdCluster, write_config: Callable[..., Path],
    fleet: Callable[..., list[WatchdogProcess]], tmp_path: Path,
) -> None:
    member = etcd_cluster3.endpoints[0]  # listens on this host: its connections are countable
    timing = {"interval": "1s", "timeout": "800ms"}
    local = write_config({"etcd": {"endpoints": [member], "discover_members": False,
                                   "connections": "local", **timing},
                          "state_dir": str(tmp_path / "state-local")}, name="local.yml")
    central = write_config({"etcd": {"endpoints": etcd_cluster3.endpoints,
                                     "connections": "off", **timing},
                            "state_dir": str(tmp_path / "state-central")}, name="central.yml")
    agent, hub = fleet([(local, {}), (central, {})])
    agent.wait_ready(timeout=30)
    hub.wait_ready(timeout=30)

    def both() -> tuple[str, str] | None:
        a, h = agent.metrics(), hub.metrics()
        return (a, h) if "watchdog_etcd_client_connections{" in a and \
            "watchdog_etcd_peer_up{" in h else None
    a, h = wait_until(both, timeout=20, what="the agent's connections and the hub's polls")
    target = {f for f in families(a) | families(h)
              if f.startswith(("watchdog_etcd_", "watchdog_gateway_", "watchdog_finding"))}
    assert not {f for f in families(a) & families(h) if f in target}, \
        families(a) & families(h) & target
    assert "watchdog_etcd_peer_up" not in families(a)
    assert "watchdog_etcd_client_connections" not in families(h)
    # The agent names its member as the hub does, so the two join on peer.
    [peer] = series(a, "watchdog_etcd_client_connections")
    assert peer in series(h, "watchdog_etcd_peer_up")
    assert 'watchdog_shard_info{connections="local",count="1",index="0"} 1.0' in a
