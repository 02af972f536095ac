"""`watchdog lab up` and `demo` on another server: `--backend NAME` or `--etcd-bin PATH`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.backends import RUNNABLE, require
from tests.helpers import all_samples, http_get, sample, wait_until
from tests.integration.test_lab import processes_under, start, stop
from watchdog.lab.cluster import free_port
from watchdog.lab.servers import ServerChoice, ServerNotFoundError, resolve

pytestmark = pytest.mark.integration
KINE = next(b for b in RUNNABLE if b.kind == "kine" and not b.needs)
ETCD_37 = next(b for b in RUNNABLE if b.kind == "etcd" and b.version.startswith("3.7."))


def run_demo(args: list[str], tmp_path: Path) -> tuple[str, str, str]:
    """Run `watchdog demo ARGS` until it has polled, then Ctrl-C: (its output, /metrics,
    the status page)."""
    tmp, log = tmp_path / "tmp", tmp_path / "demo.log"
    port = free_port()
    proc = start(["demo", *args, "--web.listen-address", f"127.0.0.1:{port}"], tmp, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and http_get(url + "/readyz", 2)[0] == 200,
                   timeout=60, what=f"demo ready ({log})")

        def polled() -> str | None:
            text = http_get(url + "/metrics")[1]
            return text if sample(text, "watchdog_etcd_peer_up") is not None else None

        text = wait_until(polled, timeout=30, what="the first poll")
        page = http_get(url + "/")[1]
    finally:
        code = stop(proc)
    output = log.read_text()
    assert code == 0, output
    assert "Traceback" not in output
    wait_until(lambda: not processes_under(tmp), timeout=10, what="no lab process left")
    assert list(tmp.iterdir()) == [], "the lab directory was removed"
    return output, text, page


def test_demo_on_kine(tmp_path: Path) -> None:
    """kine on SQLite, watched through gRPC and its own metrics page; no gateway (the
    simulator, like APISIX, needs the JSON gateway)."""
    require(KINE)
    output, text, page = run_demo(["--backend", "kine"], tmp_path)
    assert "not available on kine" in page
    assert f"kine {KINE.version}, 1 member(s), plain HTTP" in output
    assert "no simulated gateways" in output
    info = [labels for labels, _ in all_samples(text, "watchdog_etcd_peer_info")]
    assert [i["backend"] for i in info] == ["kine"], info
    assert sample(text, "watchdog_etcd_peer_up") == 1
    assert sample(text, "watchdog_etcd_metrics_up") == 1  # its page, from the lab's config
    assert all(v == 0 for _, v in all_samples(text, "watchdog_etcd_probe_failures_total"))


def test_demo_on_etcd_37_with_a_gateway(tmp_path: Path) -> None:
    """A new etcd line from the build cache, with the gateway simulator on it."""
    require(ETCD_37)
    output, text, page = run_demo(["--backend", "etcd-3.7", "--members", "1", "--no-tls",
                                   "--gateways", "1"], tmp_path)
    assert f"etcd {ETCD_37.version}, 1 member(s)" in output
    info = [labels for labels, _ in all_samples(text, "watchdog_etcd_peer_info")]
    assert [(i["backend"], i["version"]) for i in info] == [("etcd", ETCD_37.version)], info
    assert sample(text, "watchdog_etcd_peer_up") == 1
    assert "gw-1" in page


def test_etcd_bin_is_the_binary_run(tmp_path: Path) -> None:
    """`--etcd-bin PATH` runs that binary (the same Lab path as `--backend etcd-3.x`)."""
    require(ETCD_37)
    assert resolve(None, str(ETCD_37.server)) == ServerChoice("etcd", str(ETCD_37.server))
    with pytest.raises(ServerNotFoundError, match="not both"):
        resolve("kine", str(ETCD_37.server))


@pytest.mark.parametrize(("args", "said"), [
    (["--backend", "etcd-3.7"], "scripts/servers/build.sh"),
    (["--backend", "kine", "--gateways", "2"], "no simulated gateway runs on kine"),
])
def test_a_server_that_cannot_run_exits_2(args: list[str], said: str, tmp_path: Path) -> None:
    log = tmp_path / "lab.log"
    # An empty build cache, except for kine (to reach the gateway check).
    cache = tmp_path / "cache"
    (cache / "servers").mkdir(parents=True)
    if KINE.server is not None and KINE.server.exists():
        (cache / "servers" / KINE.server.parent.name).symlink_to(KINE.server.parent)
    started = time.monotonic()
    proc = start(["lab", "up", *args], tmp_path / "tmp", log, env={"WATCHDOG_CACHE": str(cache)})
    assert proc.wait(timeout=30) == 2, log.read_text()
    assert said in log.read_text() and "Traceback" not in log.read_text()
    assert time.monotonic() - started < 30
