"""`watchdog lab storm` on real servers: failures counted by status, etcd auth, loopback only."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.backends import READER, READER_PASSWORD, RUNNABLE, ServerPool
from watchdog.lab.storm import StormError, loopback_only

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ANTIETCD = next(b for b in RUNNABLE if b.kind == "antietcd")
ETCD = next(b for b in RUNNABLE if b.kind == "etcd" and b.version.startswith("3.6."))


@pytest.fixture(scope="module", autouse=True)
def _stop_servers_after_this_module(server_pool: ServerPool) -> Iterator[None]:
    """The servers started here are not left running beside the rest of the suite."""
    yield
    server_pool.close()


def storm(*args: str, timeout: float = 40) -> tuple[int, str, dict[str, object] | None]:
    """Run `watchdog lab storm`; (exit code, all output, the closing summary or None)."""
    done = subprocess.run([sys.executable, "-m", "watchdog", "lab", "storm", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    output = done.stdout + done.stderr
    summary = None
    for line in done.stdout.splitlines():
        if line.startswith("closed all watches: "):
            summary = json.loads(line.removeprefix("closed all watches: "))
    return done.returncode, output, summary


def test_non_2xx_answers_count_as_failed_and_exit_1(server_pool: ServerPool) -> None:
    """antietcd has no HTTP watch (404 "Supported APIs: ...", then 503 "Unsupported API"):
    every watch is counted failed by its status, none created, exit 1."""
    server = server_pool.get(ANTIETCD)
    code, output, summary = storm("--endpoint", server.client_url, "--watches", "5",
                                  "--duration", "1")
    assert code == 1, output
    assert summary is not None, output
    assert summary["created"] == 0 and summary["failed"] == 5, summary
    by_status = summary["failed_by_status"]
    assert isinstance(by_status, dict) and sum(by_status.values()) == 5, summary
    assert set(by_status) <= {"404", "503"}, summary
    assert "no watch was opened" in output and "Traceback" not in output


def test_auth_as_a_reader(server_pool: ServerPool, tmp_path: Path) -> None:
    """With auth on, watches need a token: without credentials none opens (exit 1); the
    reader's user and password file open them all (exit 0), and the password is not shown."""
    server = server_pool.get(ETCD, auth=True)
    args = ("--endpoint", server.client_url, "--watches", "3", "--duration", "1")
    code, output, summary = storm(*args)
    assert code == 1 and summary is not None and summary["created"] == 0, output
    assert summary["failed"] == 3 and "user name is empty" in output, summary
    password = tmp_path / "password"
    password.write_text(READER_PASSWORD + "\n")
    code, output, summary = storm(*args, "--user", READER, "--password-file", str(password))
    assert code == 0, output
    assert summary is not None and summary["created"] == 3 and summary["failed"] == 0, summary
    assert READER_PASSWORD not in output
    # The same credentials from a watchdog config's etcd.auth.
    config = tmp_path / "watchdog.yml"
    config.write_text(yaml.safe_dump({"etcd": {"endpoints": [server.client_url], "auth": {
        "username": READER, "password_file": str(password)}}}))
    code, output, summary = storm(*args, "--config", str(config))
    assert code == 0 and summary is not None and summary["created"] == 3, output
    password.write_text("wrong\n")
    code, output, _ = storm(*args, "--user", READER, "--password-file", str(password))
    assert code == 1 and f"refused to authenticate user '{READER}'" in output, output
    assert "Traceback" not in output


def test_remote_endpoint_refused_without_allow_remote() -> None:
    code, output, summary = storm("--endpoint", "http://10.0.0.1:2379", "--watches", "1",
                                  "--duration", "1")
    assert code == 2, output
    assert "not a loopback address" in output and "--allow-remote" in output
    assert summary is None and "Traceback" not in output


def test_loopback_addresses_pass() -> None:
    for endpoint in ("http://127.0.0.1:2379", "https://127.8.9.10:1", "http://[::1]:2379",
                     "http://localhost:2379"):
        loopback_only(endpoint)
    for endpoint in ("http://0.0.0.0:2379", "https://etcd.example:2379",
                     "http://[2001:db8::1]:2379", "http://10.0.0.1:2379"):
        with pytest.raises(StormError, match="--allow-remote"):
            loopback_only(endpoint)
