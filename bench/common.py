"""Shared helpers of the benchmark runner: machine facts, statistics, child processes and the
real servers the sections compare against (Prometheus, blackbox_exporter, simulated gateways).

Every child process is started through `Children`, which ends exactly the processes it started
(by pid, TERM then KILL) however the section ends.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PYTHON = sys.executable
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from watchdog.lab.cluster import free_port  # noqa: E402

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"
ADMIN_KEY = "edd1c9f034335f136f87ad84b625c8f1"  # the simulator's default (APISIX <= 3.9)


def fixtures_dir() -> Path:
    """The etcd fixtures, found the way tests/conftest.py finds them."""
    shared = REPO.parent / "shared" / "fixtures" / "etcd"
    return shared if shared.exists() else REPO / "tests" / "fixtures" / "etcd"


# -- statistics ------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and count of a list of numbers (None when empty)."""
    data = [v for v in values if v is not None]
    if not data:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(data), "median": statistics.median(data), "min": min(data),
            "max": max(data)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# -- the machine ------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _version_from(line: str) -> str:
    match = re.search(r"version (\S+)", line)
    return match.group(1) if match else line


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str]:
    import aiohttp
    import prometheus_client  # noqa: F401

    import watchdog
    from watchdog.lab.cluster import etcd_version, find_etcd

    try:
        from importlib.metadata import version as dist_version

        prom_client = dist_version("prometheus_client")
    except Exception:
        prom_client = "unknown"
    return {
        "python": platform.python_version(),
        "watchdog": watchdog.__version__,
        "etcd": etcd_version(find_etcd()),
        "prometheus": _version_from(_first_line([PROMETHEUS, "--version"])),
        "blackbox_exporter": _version_from(_first_line([BLACKBOX, "--version"])),
        "aiohttp": aiohttp.__version__,
        "prometheus_client": prom_client,
        "psutil": psutil.__version__,
    }


# -- CPU accounting ---------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads, 10 ms ticks)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# -- child processes --------------------------------------------------------------------------


@dataclass
class Children:
    """Processes this section started; `close()` ends each of them by pid."""

    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(cmd, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_get(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            http_get(url, timeout=2.0)
            return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not answering after {timeout}s") from None
            time.sleep(0.1)


def scalar_samples(text: str, name: str) -> list[tuple[str, float]]:
    """(label text, value) of every sample named exactly `name` on a Prometheus page."""
    out: list[tuple[str, float]] = []
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest[:1] not in ("{", " "):
            continue
        labels = ""
        if rest.startswith("{"):
            end = rest.rfind("}")
            labels, rest = rest[1:end], rest[end + 1:]
        try:
            out.append((labels, float(rest.split()[0])))
        except (IndexError, ValueError):
            continue
    return out


def sample_sum(text: str, name: str, contains: str = "") -> float:
    return sum(v for labels, v in scalar_samples(text, name) if contains in labels)


class _ServerProcess:
    """What Prometheus and Blackbox share: a child process, its temporary directory, its CPU."""

    children: Children
    port: int
    proc: subprocess.Popen[Any] | None
    workdir: Path | None

    def _prepare(self, prefix: str, config_name: str, config: str) -> Path:
        """A new temporary directory holding the config file; its path."""
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        (self.workdir / config_name).write_text(config)
        return self.workdir / config_name

    def _spawn(self, argv: list[str], ready_path: str) -> None:
        """Start argv on a free loopback port, logging to the workdir, and wait for ready_path."""
        assert self.workdir is not None
        self.port = free_port()
        log = open(self.workdir / "log", "wb")
        self.proc = self.children.start([
            *argv, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
        ], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_http(f"http://127.0.0.1:{self.port}{ready_path}", proc=self.proc)

    def cpu(self) -> float:
        assert self.proc is not None
        return proc_cpu(self.proc.pid)

    def close(self) -> None:
        if self.proc is not None:
            self.children.stop(self.proc)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Prometheus(_ServerProcess):
    """A real Prometheus with a given scrape config, its TSDB in a temporary directory."""

    children: Children
    config: str
    name: str = "prometheus"
    port: int = 0
    proc: subprocess.Popen[Any] | None = None
    workdir: Path | None = None

    def start(self) -> Prometheus:
        config = self._prepare(f"wdbench-{self.name}-", "prometheus.yml", self.config)
        self._spawn([PROMETHEUS, f"--config.file={config}",
                     f"--storage.tsdb.path={config.parent / 'data'}"], "/-/ready")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return http_get(f"{self.url}/metrics").decode()


@dataclass
class Blackbox(_ServerProcess):
    """A real blackbox_exporter with the given modules file."""

    children: Children
    modules: str
    port: int = 0
    proc: subprocess.Popen[Any] | None = None
    workdir: Path | None = None

    def start(self) -> Blackbox:
        config = self._prepare("wdbench-blackbox-", "blackbox.yml", self.modules)
        self._spawn([BLACKBOX, f"--config.file={config}"], "/metrics")
        return self

    def probe_url(self, target: str, module: str) -> str:
        from urllib.parse import urlencode

        return f"http://127.0.0.1:{self.port}/probe?" + urlencode(
            {"target": target, "module": module})


def start_sim(children: Children, etcd_url: str, name: str, *extra: str,
              timeout: float = 30.0) -> dict[str, Any]:
    """A simulated APISIX gateway in its own process; returns its ready line (URLs, pid)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"wdbench-sim-{name}-"))
    ready = workdir / "ready.json"
    log = open(workdir / "log", "wb")
    proc = children.start([PYTHON, "-m", "watchdog.lab.gateway_sim", "--etcd", etcd_url,
                           "--name", name, "--ready-file", str(ready), *extra],
                          stdout=subprocess.DEVNULL, stderr=log, cwd=str(REPO))
    log.close()
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"gateway_sim {name} exited: {(workdir / 'log').read_text()[-500:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gateway_sim {name} not ready after {timeout}s")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    info["proc"] = proc
    return info


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
