"""`watchdog run --web.config.file`: TLS, client certificates and basic auth on the real
daemon, with trustme certificates. /healthz stays open (without credentials, never without
TLS when TLS is on); every other path needs them."""

from __future__ import annotations

import base64
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme
import yaml

from tests.conftest import REPO
from tests.helpers import wait_until
from watchdog.lab.cluster import EtcdCluster, free_port

pytestmark = pytest.mark.integration

PASSWORD = "scrape-" + os.urandom(6).hex()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="watchdog web tests")


@pytest.fixture
def tls_dir(tmp_path: Path, ca: trustme.CA) -> Path:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    (tmp_path / "key.pem").chmod(0o600)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return tmp_path


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start(etcd_single: EtcdCluster, tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    procs: list[subprocess.Popen[bytes]] = []
    config = tmp_path / "watchdog.yml"
    config.write_text(yaml.safe_dump({
        "etcd": {"endpoints": etcd_single.endpoints, "discover_members": False,
                 "interval": "1s", "timeout": "500ms"},
        "state_dir": str(tmp_path / "state")}))

    def run(web: dict[str, object] | str) -> Daemon:
        web_file = tmp_path / f"web-{len(procs)}.yml"
        web_file.write_text(web if isinstance(web, str) else yaml.safe_dump(web))
        port = free_port()
        log = tmp_path / f"watchdog-{len(procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "watchdog", "run", "--config", str(config),
                 "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file",
                 str(web_file)], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=REPO)
        procs.append(proc)
        return Daemon(proc, port, log)

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def get(url: str, context: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None
        ) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url)
    if auth:
        raw = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {raw}")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def wait_serving(daemon: Daemon, context: ssl.SSLContext) -> None:
    def up() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"watchdog exited {daemon.proc.returncode}: {daemon.output()}")
        try:
            return get(f"https://127.0.0.1:{daemon.port}/healthz", context)[0] == 200
        except OSError:
            return False

    wait_until(up, timeout=20, what="https /healthz")


def stop(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=15) == 0
    assert "Traceback" not in daemon.output()


@pytest.mark.fault(
    "scrape without credentials, with a wrong password, or as an unknown user",
    reports="401 with `WWW-Authenticate: Basic` on `/metrics`, `/` and `/readyz`; `/healthz` "
            "answers without credentials; password and hash in no log line",
    within="at once")
@pytest.mark.fault(
    "plain HTTP to the TLS web port; a client that does not trust the CA",
    reports="no answer (the connection fails); the handshake is refused",
    within="at once")
def test_tls_and_basic_auth(start: Callable[..., Daemon], tls_dir: Path) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(6)).decode()
    daemon = start({"tls_server_config": {"cert_file": str(tls_dir / "cert.pem"),
                                          "key_file": str(tls_dir / "key.pem")},
                    "http_server_config": {"headers": {
                        "Strict-Transport-Security": "max-age=31536000"}},
                    "basic_auth_users": {"prometheus": hashed}})
    ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    wait_serving(daemon, ctx)
    base = f"https://127.0.0.1:{daemon.port}"

    status, headers, body = get(base + "/healthz", ctx)  # no credentials needed
    assert (status, body) == (200, "ok\n")
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    for path in ("/metrics", "/", "/readyz"):
        status, headers, _ = get(base + path, ctx)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), path
        assert get(base + path, ctx, ("prometheus", "wrong"))[0] == 401, path
        assert get(base + path, ctx, ("grafana", PASSWORD))[0] == 401, path
    wait_until(lambda: get(base + "/readyz", ctx, ("prometheus", PASSWORD))[0] == 200,
               timeout=10, what="/readyz with credentials")
    status, _, text = get(base + "/metrics", ctx, ("prometheus", PASSWORD))
    assert status == 200 and "watchdog_etcd_peer_up" in text

    # Plain HTTP on the TLS port gets nowhere, and an unknown CA is refused.
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{daemon.port}/healthz")
    with pytest.raises(urllib.error.URLError):
        get(base + "/healthz", ssl.create_default_context())
    assert "tls=on" in daemon.output() and "basic_auth_users=1" in daemon.output()
    assert PASSWORD not in daemon.output() and hashed not in daemon.output()
    stop(daemon)


@pytest.mark.fault(
    "web client without a certificate, or with one from another CA (`RequireAndVerifyClientCert`)",
    reports="the TLS handshake is refused; a client with a certificate from the CA gets `/metrics`",
    within="at once")
def test_client_certificates_required(start: Callable[..., Daemon], tls_dir: Path,
                                      ca: trustme.CA) -> None:
    daemon = start({"tls_server_config": {
        "cert_file": "cert.pem", "key_file": "key.pem", "client_ca_file": "ca.pem",
        "client_auth_type": "RequireAndVerifyClientCert", "min_version": "TLS12"}})
    with_cert = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    ca.issue_cert("prometheus.monitoring.svc").configure_cert(with_cert)
    wait_serving(daemon, with_cert)
    base = f"https://127.0.0.1:{daemon.port}"
    status, _, text = get(base + "/metrics", with_cert)
    assert status == 200 and "watchdog_build_info" in text

    anonymous = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    with pytest.raises((OSError, ssl.SSLError)):
        get(base + "/healthz", anonymous)
    stranger = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
    trustme.CA().issue_cert("mallory").configure_cert(stranger)
    with pytest.raises((OSError, ssl.SSLError)):
        get(base + "/metrics", stranger)
    stop(daemon)


@pytest.mark.fault(
    "invalid web config (unknown key, plaintext password, missing certificate, YAML syntax error)",
    reports="exit 2, `invalid web config` naming the key; no traceback, no password",
    within="at start (20 s bound)")
@pytest.mark.parametrize(("web", "expected"), [
    ({"tls_server_config": {"cert_file": "cert.pem", "key_file": "key.pem",
                            "client_auth": "RequireAndVerifyClientCert"}},
     "tls_server_config.client_auth: unknown key"),
    ({"basic_auth_users": {"prometheus": "hunter2"}},
     "basic_auth_users: user 'prometheus': not a bcrypt hash"),
    ({"tls_server_config": {"cert_file": "missing.pem", "key_file": "key.pem"}},
     "tls_server_config.cert_file: "),
    ("tls_server_config: {cert_file: [", "YAML syntax error"),
])
def test_bad_web_config_exits_2(start: Callable[..., Daemon], tls_dir: Path,
                                web: dict[str, object] | str, expected: str) -> None:
    daemon = start(web)
    assert daemon.proc.wait(timeout=20) == 2
    out = daemon.output()
    assert "invalid web config" in out and expected in out, out
    assert "Traceback" not in out and "hunter2" not in out
