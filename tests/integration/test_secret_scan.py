"""The secret scan (issue #14, acceptance): every secret watchdog can be given is set to a
unique marker, and every text watchdog lets out is searched for it.

Secrets: the etcd password, the admin key (a right one and a wrong one that the admin API
echoes back in its 401 body), the web server's basic-auth password (a right one and a wrong
one, sent by clients), and credentials in URL userinfo (refused by the config, so only the
refusal can carry them). Outputs: the daemon log at debug in both formats, /metrics, every
page, `watchdog smoke` (text and JSON, passed and failed), `watchdog doctor`,
`watchdog check-config`, and the error paths (wrong etcd password, refused admin key, wrong
basic-auth password, TLS spoken to a plain listener). Real etcd with auth, the real gateway
simulator, real processes; the CLI runs go in parallel to keep the module near 40 s."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from tests.conftest import REPO, WatchdogProcess, gateway_sim_process
from tests.helpers import all_samples, sample, wait_until
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration


def marker(what: str) -> str:
    return f"MARK{what}{secrets.token_hex(10)}"


ETCD_PASSWORD = marker("etcdpw")
WRONG_ETCD_PASSWORD = marker("wrongetcdpw")
ADMIN_KEY = marker("adminkey")
ECHOED_KEY = marker("echoedkey")  # configured for a gateway that refuses it and quotes it
BASIC_PASSWORD = marker("basicpw")
WRONG_BASIC_PASSWORD = marker("wrongbasicpw")
URL_PASSWORD = marker("urlpw")
MARKERS = (ETCD_PASSWORD, WRONG_ETCD_PASSWORD, ADMIN_KEY, ECHOED_KEY, BASIC_PASSWORD,
           WRONG_BASIC_PASSWORD, URL_PASSWORD)
BASIC_HASH = bcrypt.hashpw(BASIC_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
PAGES = ("/", "/metrics", "/api/v1/findings", "/readyz", "/-/ready", "/healthz",
         "/-/healthy")


def scan(where: str, text: str) -> None:
    """No marker, nor its random half (a truncated or re-quoted one), nor the hash."""
    for secret in MARKERS:
        assert secret not in text, f"{secret[:14]}... leaked into {where}"
        assert secret[-20:] not in text, f"the tail of {secret[:14]}... leaked into {where}"
    assert BASIC_HASH not in text, f"the basic-auth hash leaked into {where}"


def secret_file(path: Path, value: str) -> str:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def cli(*args: str) -> tuple[int, str]:
    """A watchdog command; its exit code and everything it printed."""
    done = subprocess.run([sys.executable, "-m", "watchdog", *args], capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL, cwd=REPO,
                          env={**os.environ, "WATCHDOG_LOG_LEVEL": "debug"})
    return done.returncode, done.stdout + done.stderr


def get(url: str, password: str | None = None) -> tuple[int, str]:
    headers = {}
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


class Daemon(WatchdogProcess):
    """`watchdog run` with extra flags (web config, log format)."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        super().__init__(config, log, env={"WATCHDOG_LOG_LEVEL": "debug"})
        self.extra = extra

    def start(self) -> Daemon:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watchdog", "run", "--config", str(self.config),
                 "--web.listen-address", f"127.0.0.1:{self.port}", *self.extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env, cwd=REPO)
        wait_until(self._healthy, timeout=20, what=f"watchdog /healthz (log {self.log})")
        return self

    def metrics(self) -> str:
        status, body = get(self.url + "/metrics", BASIC_PASSWORD)
        assert status == 200, body
        return body


@pytest.fixture
def lab(make_cluster: Callable[..., EtcdCluster], tmp_path: Path
        ) -> Iterator[tuple[EtcdCluster, dict[str, Any]]]:
    """etcd with auth (root's password ETCD_PASSWORD) and one simulated gateway whose admin
    key is ADMIN_KEY and which quotes a wrong key in its 401 body."""
    cluster = make_cluster(size=1, auth=True, root_password=ETCD_PASSWORD, name_prefix="scan")
    with gateway_sim_process(
        tmp_path, "--etcd", cluster.endpoints[0], "--etcd-user", "root", "--name", "gw-ok",
        "--admin-key", ADMIN_KEY, "--workers", "1", "--fault", "echo-key",
        env={"WATCHDOG_SIM_ETCD_PASSWORD": ETCD_PASSWORD},
    ) as info:
        yield cluster, info


@pytest.mark.fault(
    "TLS spoken to a plain etcd listener and to a plain admin API, secrets configured",
    reports="probe failures for that peer, `admin_failures_total{reason=\"tls\"}`; no secret in any "
            "output",
    within="30 s (asserted)")
@pytest.mark.fault(
    "every secret set to a unique marker under every failure at once",
    reports="no marker in either debug log format, any page, `/metrics`, smoke, doctor or "
            "check-config",
    within="whole run")
def test_no_secret_leaves_the_process_by_any_output(
    lab: tuple[EtcdCluster, dict[str, Any]], tmp_path: Path,
) -> None:
    cluster, sim = lab
    # Positive control: the echo is real, so a missing scrubber would fail this test.
    request = urllib.request.Request(f"{sim['admin_url']}/apisix/admin/routes",
                                     headers={"X-API-KEY": ECHOED_KEY})
    with pytest.raises(urllib.error.HTTPError) as echoed:
        urllib.request.urlopen(request, timeout=5)
    assert ECHOED_KEY in echoed.value.read().decode()

    def write(name: str, data: dict[str, Any]) -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return str(path)

    password = secret_file(tmp_path / "etcd-pw", ETCD_PASSWORD)
    wrong_password = secret_file(tmp_path / "wrong-etcd-pw", WRONG_ETCD_PASSWORD)
    key = secret_file(tmp_path / "admin-key", ADMIN_KEY)
    echoed_key = secret_file(tmp_path / "echoed-key", ECHOED_KEY)
    gw = {"admin_url": sim["admin_url"], "data_url": sim["data_url"],
          "status_url": sim["status_url"], "metrics_url": sim["metrics_url"]}
    gw_ok = {"name": "gw-ok", **gw, "admin_key_file": key}
    gw_echo = {"name": "gw-echo", **gw, "admin_key_file": echoed_key}
    etcd = {"endpoints": cluster.endpoints, "interval": "2s", "timeout": "1500ms",
            "auth": {"username": "root", "password_file": password}}
    web = write("web.yml", {"basic_auth_users": {"prometheus": BASIC_HASH}})

    good = write("good.yml", {"etcd": etcd, "gateways": [gw_ok, gw_echo],
                              "smoke": {"interval": "2s", "timeout": "5s"},
                              "state_dir": str(tmp_path / "state-good")})
    # Every failure at once: a wrong etcd password, TLS spoken to etcd's plain listener,
    # a refused (and echoed) admin key, and TLS spoken to the admin API's plain listener.
    plain = cluster.endpoints[0].replace("http://", "https://")
    failing = write("failing.yml", {
        "etcd": {**etcd, "endpoints": [cluster.endpoints[0], plain], "discover_members": False,
                 "auth": {"username": "root", "password_file": wrong_password}},
        "gateways": [gw_echo, {**gw_ok, "name": "gw-tls",
                               "admin_url": sim["admin_url"].replace("http://", "https://")}],
        "smoke": {"interval": "2s", "timeout": "3s"},
        "state_dir": str(tmp_path / "state-failing")})
    with_userinfo = write("userinfo.yml", {
        "etcd": {"endpoints": [cluster.endpoints[0].replace(
            "http://", f"http://root:{URL_PASSWORD}@")]},
        "gateways": [{**gw_ok, "admin_url": sim["admin_url"].replace(
            "http://", f"http://admin:{URL_PASSWORD}@")}],
        "state_dir": str(tmp_path / "state-userinfo")})

    daemons = [Daemon(Path(good), tmp_path / "good.log", "--web.config.file", web,
                      "--log.format", "json"),
               Daemon(Path(failing), tmp_path / "failing.log", "--web.config.file", web,
                      "--log.format", "logfmt")]
    gate = ("smoke", "--config", good, "--timeout", "20", "--gateway", "gw-ok", "--gateway",
            "gw-echo")  # one passes, one fails: both kinds of report in each output
    commands = {
        "smoke (text)": (*gate, "--output", "text"),
        "smoke (json, json log)": (*gate, "--output", "json", "--log.format", "json"),
        "doctor --smoke, every failure": ("doctor", "--config", failing, "--duration", "2s",
                                          "--smoke"),
        "doctor --smoke (json, json log)": ("doctor", "--config", good, "--duration", "2s",
                                            "--smoke", "--output", "json", "--log.format",
                                            "json"),
        "check-config": ("check-config", good),
        "check-config userinfo": ("check-config", with_userinfo),
        "run userinfo": ("run", "--config", with_userinfo, "--web.listen-address",
                         "127.0.0.1:0"),
    }
    try:
        # Two cores: the daemons first, then the one-shot commands four at a time while the
        # daemons run their smoke probes.
        with ThreadPoolExecutor(len(daemons)) as pool:
            list(pool.map(Daemon.start, daemons))
        with ThreadPoolExecutor(3) as pool:
            outputs = dict(zip(commands, pool.map(lambda a: cli(*a), commands.values()),
                               strict=True))
        ok, failed = daemons

        def ok_working() -> bool:
            text = ok.metrics()
            return (sample(text, "watchdog_gateway_smoke_success", gateway="gw-ok") == 1.0
                    and sample(text, "watchdog_gateway_smoke_success", gateway="gw-echo") == 0
                    and sample(text, "watchdog_etcd_probe_success", api="grpc",
                               op="range") == 1.0)

        wait_until(ok_working, timeout=20, what="auth, admin calls and smoke working")
        wait_until(lambda: (sample(failed.metrics(), "watchdog_etcd_probe_failures_total",
                                   peer=cluster.endpoints[0], api="json", op="range",
                                   reason="auth") or 0) >= 1,
                   timeout=30, what="the wrong etcd password refused")
        for daemon in daemons:
            assert get(daemon.url + "/metrics", WRONG_BASIC_PASSWORD)[0] == 401
            assert get(daemon.url + "/metrics")[0] == 401
            for path in PAGES:
                status, body = get(daemon.url + path, BASIC_PASSWORD)
                assert status in (200, 503), (path, status, body)
                scan(f"{path} of {daemon.config.name}", body)
        failed_text = failed.metrics()
        assert (sample(failed_text, "watchdog_gateway_admin_failures_total", gateway="gw-echo",
                       call="get_missing_route", reason="auth") or 0) >= 1, failed_text
        assert (sample(failed_text, "watchdog_gateway_admin_failures_total", gateway="gw-tls",
                       call="get_missing_route", reason="tls") or 0) >= 1, failed_text
        # (whatever reason the handshake gets: the path matters here, not its label)
        assert sum(v for _, v in all_samples(failed_text, "watchdog_etcd_probe_failures_total",
                                             peer=plain)) >= 1, failed_text
    finally:
        codes = [d.stop() if d.proc is not None else None for d in daemons]
    assert codes == [0, 0]

    good_log, failing_log = (d.output() for d in daemons)
    assert '"level": "debug"' in good_log or '"level":"debug"' in good_log, good_log[-2000:]
    assert "level=debug" in failing_log, failing_log[-2000:]
    assert "smoke failed gateway=gw-echo" in failing_log
    scan("the daemon log (json, debug)", good_log)
    scan("the daemon log (logfmt, debug, every failure)", failing_log)

    expected = {"smoke (text)": 1, "smoke (json, json log)": 1, "doctor --smoke, every failure": 1,
                "doctor --smoke (json, json log)": 1, "check-config": 0,
                "check-config userinfo": 2, "run userinfo": 2}
    for name, (code, text) in outputs.items():
        assert code == expected[name], (name, text)
        scan(name, text)
    text_report, json_report = outputs["smoke (text)"][1], outputs["smoke (json, json log)"][1]
    assert "gw-ok" in text_report and "<redacted>" in text_report  # the echo arrived, scrubbed
    assert '"reason": "auth"' in json_report or '"reason":"auth"' in json_report, json_report
    assert "credentials in a URL are not accepted" in outputs["check-config userinfo"][1]
    assert "credentials in a URL are not accepted" in outputs["run userinfo"][1]
