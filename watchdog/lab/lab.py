"""`watchdog lab up` and `watchdog demo`: real etcd plus simulated gateways on loopback."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from watchdog.lab.cluster import EtcdCluster, free_port
from watchdog.lab.gateway_sim import GatewaySim, SimConfig
from watchdog.lab.servers import ServerChoice, ShimCluster

# Why no simulated gateway runs on a shim: APISIX (lua-resty-etcd), and so the simulator,
# talk to etcd through the JSON gateway with HTTP watch long-polls.
NO_GATEWAYS_ON = {
    "kine": "kine serves gRPC only, no JSON gateway",
    "antietcd": "antietcd has no HTTP watch (POST /v3/watch)",
}


@dataclass
class LabSpec:
    """What the lab starts."""

    members: int = 3
    tls: bool = True
    auth: bool = False
    gateways: int = 2
    workers: int = 2
    sync_mode: str = "legacy"
    faults: dict[str, set[str]] = field(default_factory=dict)  # gateway name -> faults
    apisix_version: str = "3.9.1"
    listen: str = "127.0.0.1:9817"
    # Demo-friendly timings (production defaults are in the config reference).
    interval: str = "5s"
    timeout: str = "2s"
    warmup: str = "1m"
    hold: str = "30s"
    smoke_interval: str = "30s"
    server: ServerChoice | None = None  # None: etcd as find_etcd() finds it


class Lab:
    """The cluster, the gateways and a ready watchdog config, all in one temp directory."""

    def __init__(self, spec: LabSpec, workdir: Path | None = None) -> None:
        self.spec = spec
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="watchdog-lab-"))
        self.cluster: EtcdCluster | ShimCluster | None = None
        self.sims: list[GatewaySim] = []
        self.admin_key = secrets.token_hex(16)
        self.config_path = self.workdir / "watchdog.yml"

    @property
    def gateway_names(self) -> list[str]:
        return [f"gw-{i + 1}" for i in range(self.spec.gateways)]

    async def start(self) -> Lab:
        spec = self.spec
        try:
            choice = spec.server
            if choice is None or choice.kind == "etcd":
                self.cluster = EtcdCluster(size=spec.members, tls=spec.tls, auth=spec.auth,
                                           binary=choice.binary if choice else None,
                                           workdir=self.workdir / "etcd")
            else:
                if spec.gateways:
                    raise ValueError(f"no simulated gateway runs on {choice.kind}: "
                                     f"{NO_GATEWAYS_ON[choice.kind]}; use --gateways 0")
                # Plain HTTP, no etcd auth: what the lab sets up for the shims.
                spec.tls = spec.auth = False
                self.cluster = ShimCluster(choice, self.workdir / choice.kind)
            await asyncio.to_thread(self.cluster.start)
            key_file = self.workdir / "admin.key"
            key_file.write_text(self.admin_key + "\n")
            key_file.chmod(0o600)
            for i, name in enumerate(self.gateway_names):
                # Each gateway talks to one member, so its fan-out lands on that peer (one
                # watch per worker: the simulator has no privileged agent, docs/lab.md).
                member = self.cluster.members[i % len(self.cluster.members)]
                sim = GatewaySim(SimConfig(
                    name=name, etcd_endpoints=[member.client_url],
                    ca_file=self._ca_file(), admin_key=self.admin_key, workers=spec.workers,
                    sync_mode=spec.sync_mode,  # type: ignore[arg-type]
                    faults=set(spec.faults.get(name, set())), version=spec.apisix_version,
                    etcd_user="root" if spec.auth else None,
                    etcd_password=self.cluster.root_password if spec.auth else None,
                ))
                await sim.start()
                self.sims.append(sim)
            self.write_config()
        except BaseException:
            await self.stop()
            raise
        return self

    def _ca_file(self) -> str | None:
        if self.cluster and self.cluster.tls_files:
            return str(self.cluster.tls_files.ca_file)
        return None

    def config_dict(self) -> dict[str, Any]:
        assert self.cluster is not None
        spec = self.spec
        etcd: dict[str, Any] = {
            "endpoints": [self.cluster.members[0].client_url],
            "interval": spec.interval, "timeout": spec.timeout,
        }
        if isinstance(self.cluster, ShimCluster):
            # antietcd has no member list to discover the others from.
            etcd["endpoints"] = [m.client_url for m in self.cluster.members]
            if self.cluster.metrics_url:
                etcd["metrics_urls"] = {self.cluster.members[0].client_url:
                                        self.cluster.metrics_url}
        if spec.tls:
            etcd["tls"] = {"ca_file": self._ca_file()}
        if spec.auth:
            password_file = self.workdir / "etcd-password"
            password_file.write_text(self.cluster.root_password + "\n")
            password_file.chmod(0o600)
            etcd["auth"] = {"username": "root", "password_file": str(password_file)}
        gateways = []
        for i, sim in enumerate(self.sims):
            gateways.append({
                "name": sim.config.name, "admin_url": sim.admin_url,
                "admin_key_file": str(self.workdir / "admin.key"),
                "data_url": sim.data_url, "status_url": sim.status_url,
                "metrics_url": sim.metrics_url, "workers": spec.workers,
                "sync_mode": spec.sync_mode,
                "etcd_endpoint": self.cluster.members[i % len(self.cluster.members)].client_url,
            })
        return {
            "etcd": etcd, "gateways": gateways,
            "tripwire": {"warmup": spec.warmup, "hold": spec.hold},
            "smoke": {"interval": spec.smoke_interval, "timeout": "20s"},
            "state_dir": str(self.workdir / "state"),
            "web": {"listen_address": spec.listen},
        }

    def write_config(self) -> Path:
        self.config_path.write_text(
            "# Written by `watchdog lab up`: a ready config for this lab.\n"
            + yaml.safe_dump(self.config_dict(), sort_keys=False)
        )
        return self.config_path

    def describe(self) -> list[str]:
        """Every endpoint, for a person to copy."""
        assert self.cluster is not None
        lines = [f"lab directory: {self.workdir}"]
        tls = " (TLS, CA " + str(self._ca_file()) + ")" if self.spec.tls else ""
        if isinstance(self.cluster, ShimCluster):
            lines.append(f"{self.cluster.version}, {len(self.cluster.members)} member(s), plain "
                         f"HTTP (no simulated gateways: "
                         f"{NO_GATEWAYS_ON[self.cluster.choice.kind]}):")
        else:
            lines.append(f"etcd {self.cluster.version}, {self.spec.members} member(s){tls}:")
        lines += [f"  {m.name}: {m.client_url}" for m in self.cluster.members]
        if self.sims:
            lines.append(f"gateways ({self.spec.sync_mode} sync, {self.spec.workers} workers "
                         f"each; admin key in {self.workdir / 'admin.key'}):")
        for sim in self.sims:
            faults = f" faults={','.join(sorted(sim.faults))}" if sim.faults else ""
            lines.append(f"  {sim.config.name}: admin {sim.admin_url}  data {sim.data_url}  "
                         f"status {sim.status_url}  metrics {sim.metrics_url}{faults}")
        lines.append(f"watchdog config: {self.config_path}")
        return lines

    async def stop(self) -> None:
        for sim in self.sims:
            try:
                await sim.stop()
            except Exception:
                pass
        self.sims.clear()
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def pick_listen(preferred: str) -> str:
    """The preferred HOST:PORT, or the same host on a free port when it is taken."""
    import socket

    host, _, port = preferred.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host or "127.0.0.1", int(port)))
            return preferred
        except OSError:
            return f"{host or '127.0.0.1'}:{free_port(host or '127.0.0.1')}"


def parse_faults(values: tuple[str, ...], names: list[str]) -> dict[str, set[str]]:
    """`--fault gw-2=stale` (or `--fault stale` for every gateway) into a mapping."""
    from watchdog.lab.gateway_sim import check_faults

    faults: dict[str, set[str]] = {}
    for value in values:
        target, sep, fault = value.rpartition("=")
        targets = [target] if sep else names
        for name in targets:
            if name not in names:
                raise ValueError(f"--fault {value}: no gateway {name!r} (have {', '.join(names)})")
            check_faults([fault])
            faults.setdefault(name, set()).add(fault)
    return faults


async def run_lab(spec: LabSpec, with_watchdog: bool, out: Any = print,
                  stop: asyncio.Event | None = None) -> None:
    """Start the lab (and watchdog on it), print where everything is, run until a signal."""
    import signal

    from watchdog.config import load_config
    from watchdog.daemon import serve

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lab = Lab(spec)
    try:
        out("starting the lab: the etcd server and simulated gateways ...")
        await lab.start()
        for line in lab.describe():
            out(line)
        if with_watchdog:
            config = load_config(lab.config_path)
            host, _, port = spec.listen.rpartition(":")
            server = asyncio.create_task(serve(config, spec.listen, stop))
            out("")
            out(f"watchdog status page: http://{host}:{port}/")
            out(f"watchdog metrics:     http://{host}:{port}/metrics")
            out(f"watchdog readiness:   http://{host}:{port}/readyz")
            out("try a fault: curl -X PUT -H 'X-API-KEY: '$(cat "
                f"{lab.workdir / 'admin.key'}) -d '{{\"faults\":[\"watch-leak\"]}}' "
                f"{lab.sims[0].admin_url}/__sim/faults" if lab.sims else "")
            out("Ctrl-C stops everything and removes the lab directory.")
            await server
        else:
            out(f"\nrun watchdog on it:  watchdog run --config {lab.config_path}")
            out("Ctrl-C stops everything and removes the lab directory.")
            await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        out("stopping the lab ...")
        await lab.stop()
        out("lab stopped and cleaned up")
