"""The command line as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import yaml

from watchdog.lab.cluster import free_port


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


def config_file(tmp_path: Path, data: dict[str, object] | None = None) -> Path:
    path = tmp_path / "watchdog.yml"
    path.write_text(yaml.safe_dump(data or {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}))
    return path


def test_every_subcommand_answers_version() -> None:
    from click.testing import CliRunner

    from watchdog import __version__
    from watchdog.cli import main

    def commands(group: click.Group, prefix: list[str]) -> list[list[str]]:
        out = []
        for name, command in group.commands.items():
            out.append([*prefix, name])
            if isinstance(command, click.Group):
                out += commands(command, [*prefix, name])
        return out

    every = commands(main, [])
    assert ["run"] in every and ["lab", "storm"] in every and ["check-config"] in every
    for args in [[], *every]:
        done = CliRunner().invoke(main, [*args, "--version"])
        assert done.exit_code == 0, (args, done.output)
        assert done.output == f"watchdog, version {__version__}\n", args


def test_config_comes_from_config_file_flag_or_env(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("etcd: {endpoints: []}\n")
    for args, env in ((["run", "--config.file", str(bad)], {}),
                      (["smoke"], {"WATCHDOG_CONFIG": str(bad)})):
        done = subprocess.run([sys.executable, "-m", "watchdog", *args, "--log.level", "warn"],
                              capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, env={**os.environ, **env})
        assert done.returncode == 2, (args, done.stderr)
        assert "etcd.endpoints" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_bad_telemetry_path_and_duration_exit_2(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    done = watchdog("run", "--config", str(path), "--web.telemetry-path", "metrics")
    assert done.returncode == 2 and "--web.telemetry-path" in done.stderr
    done = watchdog("smoke", "--config", str(path), "--timeout", "soon")
    assert done.returncode == 2 and "invalid duration 'soon'" in done.stderr, done.stderr


def test_smoke_one_gateway_ignores_another_gateways_unset_key(tmp_path: Path) -> None:
    """gw-2's admin key variable is unset: a gate for gw-1 alone still runs (and, with
    nothing listening, fails by its deadline: exit 1, given as a duration)."""
    dead = f"http://127.0.0.1:{free_port()}"
    path = config_file(tmp_path, {
        "etcd": {"endpoints": [dead]},
        "gateways": [
            {"name": "gw-1", "admin_url": dead, "data_url": dead},
            {"name": "gw-2", "admin_url": dead, "data_url": dead,
             "admin_key_env": "WATCHDOG_TEST_UNSET_KEY"}]})
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_TEST_UNSET_KEY"}

    def smoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "watchdog", "smoke", "--config", str(path),
                               *args], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, env=env)

    done = smoke("--gateway", "gw-1", "--timeout", "1500ms")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL gw-1" in done.stdout and "gw-2" not in done.stdout
    done = smoke("--timeout", "1s")  # gw-2 selected too: its key is needed
    assert done.returncode == 2
    assert "gateways[1]" in done.stderr and "WATCHDOG_TEST_UNSET_KEY" in done.stderr


def test_demo_without_the_lab_extra_says_what_to_install() -> None:
    # As after `pipx install .`: the lab extra's trustme is not importable.
    code = ("import sys; sys.modules['trustme'] = None; sys.argv = ['watchdog', 'demo']; "
            "from watchdog.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert "install the lab extra: pipx install 'apisix-etcd-watchdog[lab]'" in done.stderr
    assert "Traceback" not in done.stderr
