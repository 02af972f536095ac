"""Which server the lab runs (`--etcd-bin PATH` or `--backend NAME`), and the etcd shims.

etcd releases and the shims come from the build cache that the project's
`scripts/servers/build.sh` fills (`$WATCHDOG_CACHE/servers`, default
`~/.cache/watchdog/servers`); Debian's etcd 3.4 from /usr/bin. kine runs on SQLite and
antietcd as three members (its raft elects no leader with one), both on loopback, plain
HTTP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.etcd.client import b64
from watchdog.lab.cluster import EtcdNotFoundError, etcd_version, find_etcd, free_port

BACKEND_NAMES = ("etcd", "etcd-3.4", "etcd-3.5", "etcd-3.6", "etcd-3.7", "kine", "antietcd")
BUILD_HINT = ("build it from a checkout with scripts/servers/build.sh (it caches servers in "
              "$WATCHDOG_CACHE/servers, default ~/.cache/watchdog/servers), or give "
              "--etcd-bin PATH for an etcd binary")
READY_TIMEOUT = 60.0
HTTP_TIMEOUT = 2.0


class ServerNotFoundError(EtcdNotFoundError):
    """The server the lab was asked for is not installed or built here."""


@dataclass(frozen=True)
class ServerChoice:
    """What the lab runs: an etcd binary, or a shim ("kine", "antietcd") and its program."""

    kind: str  # etcd, kine or antietcd
    binary: str


def cache_dir() -> Path:
    base = os.environ.get("WATCHDOG_CACHE") or str(Path.home() / ".cache" / "watchdog")
    return Path(base) / "servers"


def _newest(paths: list[Path]) -> Path | None:
    def key(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    usable = [p for p in paths if ".tmp" not in str(p) and os.access(p, os.X_OK | os.R_OK)]
    return max(usable, key=key) if usable else None


def resolve(backend: str | None, etcd_bin: str | None) -> ServerChoice:
    """The server for `--backend` / `--etcd-bin` (neither: etcd as find_etcd() finds it).
    Raises ServerNotFoundError saying how to get it."""
    if etcd_bin is not None:
        if backend not in (None, "etcd"):
            raise ServerNotFoundError("give --etcd-bin or --backend, not both")
        if not (os.path.isfile(etcd_bin) and os.access(etcd_bin, os.X_OK)):
            raise ServerNotFoundError(f"--etcd-bin {etcd_bin} is not an executable file")
        return ServerChoice("etcd", etcd_bin)
    if backend in (None, "etcd"):
        return ServerChoice("etcd", find_etcd())
    if backend not in BACKEND_NAMES:
        raise ServerNotFoundError(f"--backend {backend}: not one of {', '.join(BACKEND_NAMES)}")
    cache = cache_dir()
    found: Path | None
    if backend == "kine":
        found = _newest(list(cache.glob("kine-*/kine")))
    elif backend == "antietcd":
        found = _newest(list(cache.glob("antietcd-*/node_modules/antietcd/antietcd-app.js")))
        if found is not None and shutil.which("node") is None:
            raise ServerNotFoundError("--backend antietcd needs Node.js (`node`) on PATH")
    else:
        line = backend.removeprefix("etcd-")
        found = _newest(list(cache.glob(f"etcd-{line}.*/etcd")))
        debian = Path("/usr/bin/etcd")
        if found is None and debian.exists() and etcd_version(str(debian)).startswith(line + "."):
            found = debian
    if found is None:
        raise ServerNotFoundError(f"--backend {backend}: not found under {cache}; "
                                  f"{BUILD_HINT}")
    return ServerChoice("etcd" if backend.startswith("etcd") else backend, str(found))


@dataclass
class ShimMember:
    """One shim process on loopback."""

    name: str
    client_url: str
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class ShimCluster:
    """kine (one process, SQLite) or antietcd (three members) on loopback, plain HTTP.
    Shaped like EtcdCluster where the lab uses it: members, version, tls_files, stop()."""

    choice: ServerChoice
    workdir: Path
    members: list[ShimMember] = field(default_factory=list)
    metrics_url: str | None = None  # kine's own page (--metrics-bind-address)
    tls_files: None = None
    root_password: str = ""

    @property
    def version(self) -> str:
        # The cache folder names the version: kine-0.17.5/kine, antietcd-1.3.1/node_modules/...
        folder = Path(self.choice.binary).parents[2 if self.choice.kind == "antietcd" else 0]
        found = re.search(r"-(\d[\w.]*)$", folder.name)
        return f"{self.choice.kind} {found.group(1) if found else '(version unknown)'}"

    def start(self) -> ShimCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.choice.kind == "kine":
                self._start_kine()
            else:
                self._start_antietcd()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def _start_kine(self) -> None:
        port, mport = free_port(), free_port()
        member = ShimMember("kine-0", f"http://127.0.0.1:{port}")
        self.members.append(member)
        member.proc = self._spawn([self.choice.binary, "--endpoint",
                                   f"sqlite://{self.workdir}/kine.db", "--listen-address",
                                   f"127.0.0.1:{port}", "--metrics-bind-address",
                                   f"127.0.0.1:{mport}"], member.name)
        self.metrics_url = f"http://127.0.0.1:{mport}/metrics"
        url = self.metrics_url
        self._wait(lambda: tcp_open(port) and _http(url, None)[0] == 200)

    def _start_antietcd(self) -> None:
        ports = [free_port() for _ in range(3)]
        cluster = ",".join(f"antietcd-{i}=http://127.0.0.1:{p}" for i, p in enumerate(ports))
        node = shutil.which("node") or "node"
        for i, port in enumerate(ports):
            member = ShimMember(f"antietcd-{i}", f"http://127.0.0.1:{port}")
            self.members.append(member)
            member.proc = self._spawn(
                [node, self.choice.binary, "--ip", "127.0.0.1", "--port", str(port),
                 "--data", str(self.workdir / f"{member.name}.gz"), "--persist_interval",
                 "100", "--node_id", member.name, "--cluster_key", "watchdog-lab",
                 "--cluster", cluster], member.name)

        def ready() -> bool:
            # 503 until a leader is elected and every member follows it; then a write.
            seen = set()
            for m in self.members:
                status, body = _http(m.client_url + "/v3/maintenance/status", {})
                answer = json.loads(body) if status == 200 else {}
                if answer.get("raftState") not in ("leader", "follower"):
                    return False
                seen.add((answer.get("leader"), answer.get("raftTerm")))
            put = {"key": b64("/watchdog-lab/ready"), "value": b64("1")}
            return len(seen) == 1 and _http(self.members[0].client_url + "/v3/kv/put",
                                            put)[0] == 200

        self._wait(ready)

    def _wait(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    log = (self.workdir / f"{m.name}.log").read_text(errors="replace")
                    raise RuntimeError(f"{m.name} exited with {m.proc.returncode}: "
                                       f"{' | '.join(log.strip().splitlines()[-3:])}")
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.choice.kind} not ready after {READY_TIMEOUT:g}s "
                           f"(logs in {self.workdir})")

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
                try:
                    m.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait(timeout=10)


def tcp_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _http(url: str, body: object) -> tuple[int, bytes]:
    """One loopback call: (status, body); GET without a body, POST with JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
