"""The command line as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def watchdog(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchdog", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_check_config_valid_prints_what_it_watches(tmp_path: Path) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(yaml.safe_dump({"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}))
    done = watchdog("check-config", str(path))
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and "endpoint http://127.0.0.1:2379" in done.stdout


def test_check_config_typo_exits_2_naming_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yml"
    path.write_text("etcd:\n  endpoints: [http://127.0.0.1:2379]\n  discover_member: false\n")
    done = watchdog("check-config", str(path))
    assert done.returncode == 2
    assert "etcd.discover_member: unknown key" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_check_config_missing_file_one_line(tmp_path: Path) -> None:
    done = watchdog("check-config", str(tmp_path / "nope.yml"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read config file" in lines[0], done.stderr


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("etcd: {endpoints: []}\n")
    done = watchdog("run", "--config", str(path))
    assert done.returncode == 2
    assert "etcd.endpoints" in done.stderr and "Traceback" not in done.stderr


def test_run_with_bad_flag_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(yaml.safe_dump({"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}))
    done = watchdog("run", "--config", str(path), "--web.listen-address", "nowhere")
    assert done.returncode == 2 and "HOST:PORT" in done.stderr


def test_help_explains() -> None:
    done = watchdog("--help")
    assert done.returncode == 0
    for command in ("run", "check-config"):
        assert command in done.stdout
    run_help = watchdog("run", "--help").stdout
    assert "--web.listen-address" in run_help and "SIGTERM" in run_help
