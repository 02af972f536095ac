"""Alerts delivered: watchdog -> Prometheus (alerts/*.rules.yml) -> Alertmanager (the route
and inhibit rules of deploy/alertmanager/alertmanager.yml) -> a webhook receiver in this test.

One run on a three-member TLS etcd 3.5.1 cluster:
1. a storm of 263 HTTP watches on member 0 stalls its JSON gateway (250-stream limit) and
   trips its watch wire: EtcdJsonGatewayStalled and EtcdWatchConnectionsTripWire arrive with
   the peer label, a summary naming the peer (and the streams) and a runbook_url whose anchor
   is a section of docs/runbook.md;
2. the storm ends and member 2 is killed at the same moment: member 0's two alerts arrive
   resolved, EtcdPeerDown arrives for member 2, and member 2's EtcdPeerProbesFailing, which
   Prometheus does fire, is held back by the inhibit rule (Alertmanager reports it suppressed
   by EtcdPeerDown and the receiver never sees it).

Test overrides, so that this fits in about a minute: every `for:` is 1s and every range
window 20s in a copy of the rules (the promtool unit tests in alerts/tests/ prove the real
windows), and the Alertmanager timers are seconds instead of minutes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, WatchdogProcess
from tests.helpers import http_get, require_tool, stop_process
from tests.integration.test_prometheus_e2e import Prometheus, prometheus, wait_for
from tests.unit.test_alerts import RUNBOOK_URL, runbook_anchors
from watchdog.lab.cluster import EtcdCluster, free_port
from watchdog.lab.storm import Storm

pytestmark = pytest.mark.integration
__all__ = ["prometheus"]  # the fixture, imported so that this module can use it

SHIPPED = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
WATCHES = 263
BASELINE = 6  # watches open before watchdog starts: the steady state the wire learns
STALLED, TRIPWIRE = "EtcdJsonGatewayStalled", "EtcdWatchConnectionsTripWire"
PEER_DOWN, PROBES_FAILING = "EtcdPeerDown", "EtcdPeerProbesFailing"


class Receiver:
    """A webhook receiver on loopback that keeps every notification Alertmanager posts."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                with receiver._lock:
                    receiver.notifications.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification so far, in arrival order."""
        with self._lock:
            return [a for n in self.notifications for a in n["alerts"]]

    def seen(self, name: str, peer: str, status: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"]["alertname"] == name
                and a["labels"].get("peer") == peer and a["status"] == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def am_config(shipped: dict[str, Any], url: str) -> dict[str, Any]:
    """The shipped config with every receiver pointed at `url` and the timers in seconds;
    route tree, matchers, grouping and inhibit rules stay as shipped."""
    config = json.loads(json.dumps(shipped))
    for receiver in config["receivers"]:
        hooks = receiver.get("webhook_configs") or []
        assert hooks, f"receiver {receiver['name']}: the test replaces webhook receivers only"
        for hook in hooks:
            hook["url"] = url
            hook["send_resolved"] = True

    def shorten(route: dict[str, Any]) -> None:
        # group_wait above the few seconds between EtcdPeerDown and the probe alerts of the
        # same peer, so that a group is first flushed with both (as with the shipped 30s)
        route.update(group_wait="4s", group_interval="1s", repeat_interval="1h")
        for child in route.get("routes", []):
            shorten(child)
    shorten(config["route"])
    return config


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[str]:
    """A real Alertmanager (Debian's binary is prometheus-alertmanager) on a free loopback
    port, without its cluster gossip listener; yields its base URL."""
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(am_config(yaml.safe_load(SHIPPED.read_text()),
                                                 receiver.url)))
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get(url + "/-/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc, timeout=15)


def am_alerts(url: str, name: str) -> list[dict[str, Any]]:
    """Alertmanager's view (API v2) of the alerts with this name, silenced and inhibited too."""
    query = urllib.parse.urlencode({"filter": f'alertname="{name}"'})
    status, body = http_get(f"{url}/api/v2/alerts?{query}", timeout=5)
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def check_runbook_url(alert: dict[str, Any]) -> None:
    url = alert["annotations"]["runbook_url"]
    assert url.startswith(RUNBOOK_URL), url
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == alert["labels"]["alertname"].lower()
    assert anchor in runbook_anchors(), f"docs/runbook.md has no section #{anchor}"


@pytest.mark.fault(
    "263-watch storm on TLS etcd 3.5.1, seen through Prometheus and Alertmanager",
    reports="`EtcdJsonGatewayStalled` and `EtcdWatchConnectionsTripWire` firing at the webhook "
            "receiver (`250 watch streams open`); no probe-failure alert (gRPC stays healthy); both "
            "resolved after the storm",
    within="60 s each way (asserted)")
@pytest.mark.fault(
    "a member killed while Alertmanager routes the alerts",
    reports="`EtcdPeerDown` delivered; the same peer's probe-failure alert fires in Prometheus but "
            "is inhibited (suppressed), never delivered",
    within="30 s; inhibited within 10 s (asserted)")
async def test_alerts_reach_alertmanager_resolve_and_inhibit(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], prometheus: Callable[..., Prometheus],
    alertmanager: str, receiver: Receiver,
) -> None:
    cluster = make_cluster(size=3, tls=True, name_prefix="am")
    assert cluster.tls_files is not None
    ca = str(cluster.tls_files.ca_file)
    stormed, killed = cluster.members[0].name, cluster.members[2].name
    baseline = Storm(cluster.endpoints[0], ca_file=ca)
    storm = Storm(cluster.endpoints[0], ca_file=ca)
    try:
        await baseline.start(BASELINE)
        await wait_for(lambda: baseline.created >= BASELINE, 20, "baseline watches created")
        proc = run_watchdog(write_config({
            "etcd": {"endpoints": [cluster.endpoints[0]], "interval": "1s", "timeout": "800ms",
                     "tls": {"ca_file": ca}},
            "tripwire": {"warmup": "3s", "hold": "2s", "min_streams": 10},
        }))
        prom = prometheus(proc.url.removeprefix("http://"),
                          alertmanager=alertmanager.removeprefix("http://"), window="20s")
        await wait_for(lambda: prom.query(
            f'watchdog_etcd_watch_streams_steady_state{{peer="{stormed}"}} > 0'), 30,
            "the stormed peer's steady state learned and scraped")
        await wait_for(lambda: len(prom.query("watchdog_etcd_peer_up == 1")) == 3, 20,
                       "three peers up")

        # 1. the storm: both alerts reach the receiver, with what an operator needs
        await storm.start(WATCHES - BASELINE)
        await wait_for(lambda: receiver.seen(STALLED, stormed, "firing")
                       and receiver.seen(TRIPWIRE, stormed, "firing"), 60,
                       f"{STALLED} and {TRIPWIRE} for {stormed} at the receiver")
        stalled = receiver.seen(STALLED, stormed, "firing")[0]
        summary = stalled["annotations"]["summary"]
        assert stormed in summary and "250 watch streams open" in summary, summary
        assert stalled["labels"]["severity"] == "warning"
        for alert in (stalled, receiver.seen(TRIPWIRE, stormed, "firing")[0]):
            check_runbook_url(alert)
        assert not receiver.seen(PROBES_FAILING, stormed, "firing"), "gRPC stayed healthy"

        # 2. the storm ends and another member dies: resolved, delivered, inhibited
        await storm.stop()
        await asyncio.to_thread(cluster.kill_member, 2)
        await wait_for(lambda: receiver.seen(STALLED, stormed, "resolved")
                       and receiver.seen(TRIPWIRE, stormed, "resolved"), 60,
                       f"{STALLED} and {TRIPWIRE} for {stormed} resolved at the receiver")
        await wait_for(lambda: receiver.seen(PEER_DOWN, killed, "firing"), 30,
                       f"{PEER_DOWN} for {killed} at the receiver")

        def probes_failing() -> list[dict[str, Any]]:
            return [a for a in am_alerts(alertmanager, PROBES_FAILING)
                    if a["labels"].get("peer") == killed]
        # Prometheus does fire it (so the silence below is the inhibit rule's doing) ...
        await wait_for(probes_failing, 30, f"{PROBES_FAILING} for {killed} in Alertmanager")
        # ... and Alertmanager holds it back because of EtcdPeerDown on the same peer
        held = await wait_for(lambda: [a for a in probes_failing() if a["status"]["inhibitedBy"]],
                              10, f"{PROBES_FAILING} for {killed} inhibited")
        assert held[0]["status"]["state"] == "suppressed"
        await asyncio.sleep(3)  # more than one group_interval: nothing slips through later
        assert not receiver.seen(PROBES_FAILING, killed, "firing"), receiver.alerts()
        check_runbook_url(receiver.seen(PEER_DOWN, killed, "firing")[0])
    finally:
        await storm.stop()
        await baseline.stop()
