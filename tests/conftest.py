"""Fixtures that start real servers on free loopback ports and always clean up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

# The fault-matrix marker and its --fault-matrix-json recorder (docs/reliability.md).
from tests.faultmatrix import pytest_addoption, pytest_configure  # noqa: F401
from tests.helpers import GiveUp, http_get, stop_process, wait_until
from watchdog.lab.cluster import EtcdCluster, free_port

REPO = Path(__file__).resolve().parent.parent
# Real responses captured from real etcd and APISIX servers (copied from the project's
# shared reference material, with their source notes), so a clone tests on its own.
FIXTURES = REPO / "tests" / "fixtures"


@contextmanager
def gateway_sim_process(workdir: Path, *args: str, env: dict[str, str] | None = None
                        ) -> Iterator[dict[str, Any]]:
    """A gateway simulator subprocess (`python -m watchdog.lab.gateway_sim *args`), its
    stderr in workdir/sim.log; yields the ready file's contents and stops it at the end."""
    ready = workdir / "sim-ready.json"
    with open(workdir / "sim.log", "wb") as log:
        sim = subprocess.Popen(
            [sys.executable, "-m", "watchdog.lab.gateway_sim", *args, "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, **(env or {})})
    try:
        wait_until(ready.exists, timeout=20, what="gateway simulator ready")
        yield json.loads(ready.read_text())
    finally:
        stop_process(sim, timeout=10)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def etcd_single() -> Iterator[EtcdCluster]:
    """One plain-HTTP member shared by the whole run (tests must not break it)."""
    with EtcdCluster(size=1, name_prefix="single") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """A three-member cluster shared by the run (read-only use; see make_cluster)."""
    with EtcdCluster(size=3, name_prefix="member") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd_tls() -> Iterator[EtcdCluster]:
    """One member serving TLS with a CA generated for this run."""
    with EtcdCluster(size=1, tls=True, name_prefix="tls") as cluster:
        yield cluster


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., EtcdCluster]]:
    """Factory for clusters a test may break; all are stopped at teardown."""
    made: list[EtcdCluster] = []

    def make(**kwargs: Any) -> EtcdCluster:
        cluster = EtcdCluster(**kwargs)
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write a config dict as YAML; state_dir defaults into tmp_path."""

    def write(data: dict[str, Any], name: str = "watchdog.yml") -> Path:
        data = dict(data)
        data.setdefault("state_dir", str(tmp_path / "state"))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


class WatchdogProcess:
    """A real `watchdog run` process."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.config = config
        self._env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WatchdogProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchdog", "run", "--config", str(self.config),
                 "--web.listen-address", f"127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env,
                cwd=REPO,
            )
        wait_until(self._healthy, timeout=20, what=f"watchdog /healthz (log {self.log})")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise GiveUp(f"watchdog exited {self.proc.returncode}: {self.log.read_text()}")
        try:
            return http_get(self.url + "/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, body
        return body

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url + path)

    def wait_ready(self, timeout: float = 20) -> None:
        wait_until(lambda: self.get("/readyz")[0] == 200, timeout=timeout, what="/readyz")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise AssertionError(f"watchdog did not stop within {timeout}s") from None
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def run_watchdog(tmp_path: Path) -> Iterator[Callable[..., WatchdogProcess]]:
    """Start `watchdog run` on a config file; stopped at teardown."""
    procs: list[WatchdogProcess] = []

    def run(config: Path, env: dict[str, str] | None = None) -> WatchdogProcess:
        proc = WatchdogProcess(config, tmp_path / f"watchdog-{len(procs)}.log", env)
        procs.append(proc)
        return proc.start()

    yield run
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(timeout=5)


def pytest_report_header(config: pytest.Config) -> str:
    from watchdog.lab.cluster import EtcdNotFoundError, etcd_version, find_etcd

    try:
        binary = find_etcd()
        return f"etcd: {binary} ({etcd_version(binary)})"
    except EtcdNotFoundError as err:
        return f"etcd: {err}"


