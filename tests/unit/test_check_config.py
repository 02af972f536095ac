"""`watchdog check-config` as a user runs it: real processes, real files and permissions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ETCD = "http://127.0.0.1:2379"


def check_config(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                 user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m watchdog check-config ARGS`, as another uid when `user` is given."""
    return run_all([check_config_command(args, env, cwd, user)])[0]


Command = tuple[list[str], dict[str, str], Path | None]


def check_config_command(args: tuple[str, ...] | list[str], env: dict[str, str] | None = None,
                         cwd: Path | None = None, user: int | None = None) -> Command:
    command = [sys.executable, "-m", "watchdog", "check-config", *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    base = {k: v for k, v in os.environ.items() if k != "WATCHDOG_CONFIG"}
    return command, {**base, **(env or {})}, cwd


def run_all(commands: list[Command]) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands side by side (each pays the interpreter's start-up) and collect
    them in order; every wait is bounded."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, env=env, cwd=cwd)
             for cmd, env, cwd in commands]
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return done


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def problems(stderr: str) -> dict[str, str]:
    """The `  key: problem` lines of an invalid-config report."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith("  "):
            key, _, problem = line.strip().partition(": ")
            found[key] = problem
    return found


def test_file_flag_and_environment_variable(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yml", {"etcd": {"endpoints": [ETCD]}, "state_dir": "state"})
    bad = write(tmp_path / "bad.yml", {"etcd": {"endpoints": ["http://127.0.0.2"]}})
    valid = [(["--config", str(good)], {}), (["--config.file", str(good)], {}),
             ([], {"WATCHDOG_CONFIG": str(good)}),
             ([str(good)], {"WATCHDOG_CONFIG": str(bad)})]  # FILE beats the variable
    invalid = [([], {"WATCHDOG_CONFIG": str(bad)}), ([], {}),
               ([str(good), "--config", str(bad)], {})]
    results = run_all([check_config_command(args, env) for args, env in valid + invalid])
    for (args, env), done in zip(valid, results, strict=False):
        assert done.returncode == 0, (args, env, done.stderr)
        assert done.stdout.startswith(f"{good}: valid\n")
        assert f"state_dir: {tmp_path / 'state'}" in done.stdout  # relative to the file
    from_env, nothing, both = results[len(valid):]
    assert from_env.returncode == 2
    assert "etcd.endpoints[0]: http://127.0.0.2 has no port" in from_env.stderr
    assert nothing.returncode == 2
    assert "no config file: give FILE, --config FILE or set WATCHDOG_CONFIG" in nothing.stderr
    assert both.returncode == 2 and "two config files given" in both.stderr


@pytest.mark.fault(
    "an etcd endpoint without a port",
    reports="check-config and run both exit 2 with the same message naming `etcd.endpoints[0]`",
    within="at start")
def test_check_config_and_run_agree_on_an_endpoint_without_port(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yml", {"etcd": {"endpoints": ["http://127.0.0.2"]},
                                      "state_dir": str(tmp_path / "state")})
    run = [sys.executable, "-m", "watchdog", "run", "--config", str(path),
           "--web.listen-address", "127.0.0.1:0"]
    checked, ran = run_all([check_config_command([str(path)]), (run, dict(os.environ), None)])
    assert (checked.returncode, ran.returncode) == (2, 2), ran.stderr
    expected = ("http://127.0.0.2 has no port: etcd serves clients on 2379 by default, so "
                "write http://127.0.0.2:2379 (or the port your etcd listens on)")
    assert problems(checked.stderr) == problems(ran.stderr) == {"etcd.endpoints[0]": expected}
    assert "Traceback" not in checked.stderr + ran.stderr


def test_every_problem_in_one_pass_and_no_secret_shown(tmp_path: Path) -> None:
    fifo = tmp_path / "password.fifo"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would block for good
    bad_key = tmp_path / "admin.key"
    bad_key.write_bytes(b"\xfe\xedsecret-tail\n")
    gw = {"name": "gw-1", "admin_url": "http://127.0.0.1:9180"}
    path = write(tmp_path / "c.yml", {
        "etcd": {"endpoints": ["https://watchdog:pw-in-url-31337@127.0.0.1:2379"],
                 "interval": "5s", "timeout": "5s",
                 "tls": {"insecure_skip_verify": True},
                 "auth": {"username": "watchdog", "password_file": fifo.name}},
        "gateways": [{**gw, "admin_key_file": "admin.key"}, {**gw, "workers": 0}],
        "smoke": {"interval": "5ms"},
    })
    done = check_config(str(path))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    found = problems(done.stderr)
    assert set(found) == {"etcd.endpoints[0]", "etcd.timeout", "etcd.tls.insecure_skip_verify",
                          "etcd.auth.password_file", "gateways[0].admin_key_file",
                          "gateways[1].workers", "gateways[1].name", "smoke.interval"}
    assert found["etcd.auth.password_file"] == f"{fifo} is a FIFO: give the path of a regular file"
    assert found["gateways[0].admin_key_file"] == f"{bad_key} is not UTF-8 text"
    assert found["smoke.interval"] == "5ms is below the 1s minimum (did you mean 5m?; 0 disables)"
    for secret in ("pw-in-url-31337", "secret-tail", "xfe", "0xfe"):
        assert secret not in done.stderr


def test_warnings_go_to_stderr_and_keep_exit_0(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    key.write_text("the-admin-key\nleftover-line\n")
    key.chmod(0o644)
    path = write(tmp_path / "c.yml", {
        "etcd": {"endpoints": [ETCD]}, "state_dir": "state",
        "gateways": [{"name": "gw-blind", "admin_url": "http://127.0.0.1:9180",
                      "admin_key_file": "admin.key"}]})
    done = check_config(str(path))
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert warnings == [
        f"watchdog: warning: gateways[0].admin_key_file: secret file {key} is world-readable "
        f"(fix: chmod o-r {key})",
        f"watchdog: warning: gateways[0].admin_key_file: only the first line of {key} is used; "
        "its 1 other non-empty line(s) are ignored",
        "watchdog: warning: gateways[0]: gateway gw-blind has no data_url: the periodic smoke "
        "probe (smoke.interval 5m) skips it and `watchdog smoke` cannot check it without "
        "--read-only; set data_url",
    ]
    assert "gw-blind: admin http://127.0.0.1:9180 (admin key loaded)" in done.stdout
    assert "the-admin-key" not in done.stdout + done.stderr
    assert "leftover-line" not in done.stdout + done.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder another user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="watchdog-check-config-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run as another user")
def test_root_only_files_are_found_when_running_as_another_user(shared_dir: Path) -> None:
    nobody = 65534
    for name in ("ca.pem", "client.pem", "client-key.pem", "etcd-password", "admin.key"):
        (shared_dir / name).write_text(f"root-only-{name}\n")
        (shared_dir / name).chmod(0o400)  # root-owned: root can read it, nobody cannot
    (shared_dir / "state").mkdir(mode=0o755)  # root-owned: nobody cannot write there
    (shared_dir / "private").mkdir(mode=0o700)  # nobody cannot even look inside
    path = write(shared_dir / "c.yml", {
        "etcd": {"endpoints": ["https://127.0.0.1:2379"],
                 "tls": {"ca_file": "ca.pem", "cert_file": "client.pem",
                         "key_file": "client-key.pem"},
                 "auth": {"username": "root", "password_file": "etcd-password"}},
        "gateways": [{"name": "gw-1", "admin_url": "http://127.0.0.1:9180",
                      "data_url": "http://127.0.0.1:9080", "admin_key_file": "admin.key"}],
        "state_dir": "state"})
    path.chmod(0o644)
    hidden = write(shared_dir / "hidden.yml", {"etcd": {"endpoints": ["http://127.0.0.1:2379"]},
                                               "state_dir": "private/state"})
    hidden.chmod(0o644)
    as_root, done, in_private = run_all([
        check_config_command([str(path)], cwd=shared_dir),
        check_config_command([str(path)], cwd=shared_dir, user=nobody),
        check_config_command([str(hidden)], cwd=shared_dir, user=nobody)])
    assert as_root.returncode == 0, as_root.stderr
    assert in_private.returncode == 2, in_private.stdout + in_private.stderr
    assert problems(in_private.stderr) == {"state_dir": (
        f"{shared_dir / 'private' / 'state'} cannot be reached: "
        f"{shared_dir / 'private' / 'state'}: Permission denied")}
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    denied = "Permission denied"
    assert problems(done.stderr) == {
        "etcd.tls.ca_file": f"cannot read {shared_dir / 'ca.pem'}: {denied}",
        "etcd.tls.cert_file": f"cannot read {shared_dir / 'client.pem'}: {denied}",
        "etcd.tls.key_file": f"cannot read {shared_dir / 'client-key.pem'}: {denied}",
        "etcd.auth.password_file": f"cannot read {shared_dir / 'etcd-password'}: {denied}",
        "gateways[0].admin_key_file": f"cannot read {shared_dir / 'admin.key'}: {denied}",
        "state_dir": f"{shared_dir / 'state'} is not writable by this user (uid {nobody})",
    }
