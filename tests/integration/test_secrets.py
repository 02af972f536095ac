"""Secrets stay secret: the etcd password and the APISIX admin key, read from files or the
environment, never reach the log, /metrics, the status page, /readyz, or a smoke report,
whether the credentials work or are rejected."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, WatchdogProcess, gateway_sim_process
from tests.helpers import sample, wait_until
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration

ETCD_PASSWORD = "etcd-pw-" + secrets.token_hex(8)
ADMIN_KEY = "admin-key-" + secrets.token_hex(8)
WRONG_ADMIN_KEY = "wrong-admin-key-" + secrets.token_hex(8)
WRONG_PASSWORD = "wrong-etcd-pw-" + secrets.token_hex(8)
ALL_SECRETS = (ETCD_PASSWORD, ADMIN_KEY, WRONG_ADMIN_KEY, WRONG_PASSWORD)


def secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def assert_no_secret(where: str, text: str) -> None:
    for secret in ALL_SECRETS:
        assert secret not in text, f"a secret ({secret[:8]}...) leaked into {where}"
        # also not in a recognisable piece (a prefix long enough to be useful)
        assert secret[-16:] not in text, f"a secret's tail leaked into {where}"


def watchdog_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchdog", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=REPO,
                          env={**os.environ, **env})


@pytest.fixture
def auth_lab(make_cluster: Callable[..., EtcdCluster], tmp_path: Path
             ) -> Iterator[tuple[EtcdCluster, dict[str, Any]]]:
    """etcd with auth on (root's password is ETCD_PASSWORD) and one simulated gateway whose
    admin key is ADMIN_KEY."""
    cluster = make_cluster(size=1, auth=True, root_password=ETCD_PASSWORD, name_prefix="sec")
    with gateway_sim_process(
        tmp_path, "--etcd", cluster.endpoints[0], "--etcd-user", "root", "--name", "gw-secret",
        "--admin-key", ADMIN_KEY, "--workers", "1",
        env={"WATCHDOG_SIM_ETCD_PASSWORD": ETCD_PASSWORD},
    ) as info:
        yield cluster, info


@pytest.mark.fault(
    "wrong etcd password (daemon)",
    reports="`probe_failures_total{api=\"json\"|\"grpc\",reason=\"auth\"}`; the password in no log "
            "line, page or series",
    within="10 s (asserted)")
@pytest.mark.fault(
    "wrong admin key given to `watchdog smoke`",
    reports="exit 1, `auth` in the report (text and JSON); the key never echoed",
    within="the 5 s gate deadline")
def test_secrets_never_logged_exported_or_reported(
    auth_lab: tuple[EtcdCluster, dict[str, Any]], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    cluster, sim = auth_lab
    password = secret_file(tmp_path / "etcd-password", ETCD_PASSWORD)
    key_file = secret_file(tmp_path / "admin-key", ADMIN_KEY)
    gateway = {"name": "gw-secret", "admin_url": sim["admin_url"], "data_url": sim["data_url"],
               "status_url": sim["status_url"], "metrics_url": sim["metrics_url"]}
    etcd = {"endpoints": cluster.endpoints, "interval": "1s", "timeout": "800ms",
            "auth": {"username": "root", "password_file": str(password)}}
    env = {"WATCHDOG_LOG_LEVEL": "debug", "WD_TEST_ADMIN_KEY": ADMIN_KEY}

    # The daemon: the admin key from the environment, the password from a file.
    config = write_config({"etcd": etcd,
                           "gateways": [{**gateway, "admin_key_env": "WD_TEST_ADMIN_KEY"}],
                           "smoke": {"interval": "2s", "timeout": "10s"}})
    proc = run_watchdog(config, env=env)
    proc.wait_ready()

    def all_working() -> bool:
        text = proc.metrics()
        return (sample(text, "watchdog_gateway_smoke_success", gateway="gw-secret") == 1.0
                and sample(text, "watchdog_gateway_admin_success", gateway="gw-secret") == 1.0
                and sample(text, "watchdog_etcd_probe_success", api="json", op="range") == 1.0
                and sample(text, "watchdog_etcd_probe_success", api="grpc", op="range") == 1.0
                and sample(text, "watchdog_gateway_config_lag_revisions") is not None)

    wait_until(all_working, timeout=20, what="auth, admin calls and smoke all working")
    for path in ("/metrics", "/", "/readyz", "/healthz"):
        status, body = proc.get(path)
        assert status == 200, (path, body)
        assert_no_secret(path, body)
    proc.stop()
    assert "level=debug" in proc.output()  # the most talkative level was on
    assert_no_secret("the daemon log", proc.output())

    # The deploy gate, key from a file this time, both output formats, debug logging.
    gate_config = write_config({"etcd": etcd,
                                "gateways": [{**gateway, "admin_key_file": str(key_file)}]},
                               name="gate.yml")
    for output in ("json", "text"):
        done = watchdog_cli("smoke", "--config", str(gate_config), "--timeout", "20",
                            "--output", output, "--log.level", "debug", env={})
        assert done.returncode == 0, done.stdout + done.stderr
        assert_no_secret(f"smoke --output {output}", done.stdout + done.stderr)
    read_only = watchdog_cli("smoke", "--config", str(gate_config), "--timeout", "20",
                             "--read-only", "--output", "json", env={})
    assert read_only.returncode == 0, read_only.stdout + read_only.stderr
    assert_no_secret("smoke --read-only", read_only.stdout + read_only.stderr)

    # Rejected credentials are reported as auth failures, without echoing them.
    wrong_key = secret_file(tmp_path / "wrong-admin-key", WRONG_ADMIN_KEY)
    wrong_gate = write_config({"etcd": etcd,
                               "gateways": [{**gateway, "admin_key_file": str(wrong_key)}]},
                              name="wrong-gate.yml")
    for output in ("json", "text"):
        done = watchdog_cli("smoke", "--config", str(wrong_gate), "--timeout", "5",
                            "--output", output, "--log.level", "debug", env={})
        assert done.returncode == 1, done.stdout + done.stderr
        assert "auth" in done.stdout
        assert_no_secret(f"failed smoke --output {output}", done.stdout + done.stderr)

    wrong_pw = secret_file(tmp_path / "wrong-password", WRONG_PASSWORD)
    bad = run_watchdog(write_config({
        "etcd": {**etcd, "auth": {"username": "root", "password_file": str(wrong_pw)}},
        "state_dir": str(tmp_path / "state-wrong")}, name="wrong-pw.yml"),
        env={"WATCHDOG_LOG_LEVEL": "debug"})
    wait_until(lambda: (sample(bad.metrics(), "watchdog_etcd_probe_failures_total",
                               api="json", op="range", reason="auth") or 0) >= 1,
               timeout=10, what="wrong password: auth failures")
    wait_until(lambda: (sample(bad.metrics(), "watchdog_etcd_probe_failures_total",
                               api="grpc", op="range", reason="auth") or 0) >= 1,
               timeout=10, what="wrong password: gRPC auth failures")
    for path in ("/metrics", "/", "/readyz"):
        assert_no_secret(path, bad.get(path)[1])
    bad.stop()
    assert_no_secret("the daemon log (wrong password)", bad.output())


@pytest.mark.fault(
    "world-readable etcd password file",
    reports="check-config warns naming the file and `chmod o-r`; exit 0; the secret not shown",
    within="at once")
def test_world_readable_secret_file_warns(tmp_path: Path) -> None:
    password = secret_file(tmp_path / "etcd-password", ETCD_PASSWORD, mode=0o644)
    key = secret_file(tmp_path / "admin-key", ADMIN_KEY, mode=0o600)
    config = tmp_path / "watchdog.yml"
    config.write_text(yaml.safe_dump({
        "etcd": {"endpoints": ["http://127.0.0.1:2379"],
                 "auth": {"username": "root", "password_file": str(password)}},
        "gateways": [{"name": "gw-1", "admin_url": "http://127.0.0.1:9180",
                      "admin_key_file": str(key)}],
    }))
    done = watchdog_cli("check-config", str(config), env={})
    assert done.returncode == 0, done.stderr
    assert "world-readable" in done.stderr and str(password) in done.stderr, done.stderr
    assert f"chmod o-r {password}" in done.stderr
    assert str(key) not in done.stderr  # 0600: no warning for it
    assert "password loaded" in done.stdout
    assert_no_secret("check-config", done.stdout + done.stderr)


@pytest.mark.fault(
    "admin API quoting the wrong key in its 401 body",
    reports="smoke reports, daemon log and pages say `auth` and `<redacted>`, never the key",
    within="the failed smoke: 3 s gate, 15 s in the daemon (asserted)")
def test_an_admin_api_that_echoes_the_key_never_gets_it_relayed(
    etcd_single: EtcdCluster, write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    """A 401 body quoting the wrong key it was sent (simulator fault echo-key): the smoke
    report, the log and the status page carry the failure, never the key."""
    wrong_key = secret_file(tmp_path / "wrong-admin-key", WRONG_ADMIN_KEY)
    with gateway_sim_process(
        tmp_path, "--etcd", etcd_single.endpoints[0], "--name", "gw-echo", "--admin-key",
        ADMIN_KEY, "--workers", "1", "--fault", "echo-key",
    ) as sim:
        gateway = {"name": "gw-echo", "admin_url": sim["admin_url"],
                   "data_url": sim["data_url"], "admin_key_file": str(wrong_key)}
        etcd = {"endpoints": etcd_single.endpoints, "interval": "1s", "timeout": "800ms",
                "grpc_probes": False}
        # The echo is real: the simulator quotes the key (what the scrubber is up against).
        request = urllib.request.Request(f"{sim['admin_url']}/apisix/admin/routes",
                                         headers={"X-API-KEY": WRONG_ADMIN_KEY})
        with pytest.raises(urllib.error.HTTPError) as echoed:
            urllib.request.urlopen(request, timeout=5)
        assert WRONG_ADMIN_KEY in echoed.value.read().decode()

        proc = run_watchdog(write_config({"etcd": etcd, "gateways": [gateway],
                                          "smoke": {"interval": "1s", "timeout": "3s"}}),
                            env={"WATCHDOG_LOG_LEVEL": "debug"})
        gate = write_config({"etcd": etcd, "gateways": [gateway]}, name="gate.yml")
        for output in ("json", "text"):
            done = watchdog_cli("smoke", "--config", str(gate), "--timeout", "3",
                                "--output", output, "--log.level", "debug", env={})
            assert done.returncode == 1, done.stdout + done.stderr
            assert "auth" in done.stdout and "<redacted>" in done.stdout, done.stdout
            assert_no_secret(f"smoke --output {output}", done.stdout + done.stderr)
        wait_until(lambda: "smoke failed gateway=gw-echo" in proc.output(), timeout=15,
                   what="a failed periodic smoke in the daemon log")
        for path in ("/", "/metrics", "/readyz"):
            assert_no_secret(path, proc.get(path)[1])
        assert proc.stop() == 0
        assert "<redacted>" in proc.output()
        assert_no_secret("the daemon log", proc.output())
