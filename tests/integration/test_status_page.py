"""The status page as a person sees it: headless Chromium, JavaScript off."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, WatchdogProcess
from tests.helpers import require_tool, sample
from watchdog.lab.cluster import EtcdCluster
from watchdog.lab.storm import Storm

pytestmark = pytest.mark.integration
ARTIFACTS = REPO / "test-artifacts"


def chromium() -> str:
    return require_tool("chromium", "chromium-browser", "google-chrome")


def browse(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1500,900", *extra, url],
        capture_output=True, text=True, timeout=60,
    )


async def test_status_page_shows_peers_and_tripped_wire(
    make_cluster: Callable[..., EtcdCluster], write_config: Callable[..., Path],
    run_watchdog: Callable[..., WatchdogProcess], tmp_path: Path,
) -> None:
    browser = chromium()
    cluster = make_cluster(size=1, name_prefix="page")
    endpoint = cluster.endpoints[0]
    steady, surge = Storm(endpoint), Storm(endpoint)
    try:
        await steady.start(12)
        for _ in range(200):
            if steady.created == 12:
                break
            await asyncio.sleep(0.05)
        proc = run_watchdog(write_config({
            "etcd": {"endpoints": [endpoint], "interval": "500ms", "timeout": "400ms"},
            "tripwire": {"warmup": "2s", "hold": "10s"},
        }))
        for _ in range(200):
            if sample(await asyncio.to_thread(proc.metrics),
                      "watchdog_etcd_watch_streams_steady_state") == 12:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no steady state of 12 streams learned")
        await surge.start(20)
        for _ in range(200):
            if sample(await asyncio.to_thread(proc.metrics), "watchdog_etcd_watch_tripwire") == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the wire did not trip")

        status, raw = proc.get("/")
        assert status == 200 and "<script" not in raw.lower(), "the page needs no JavaScript"
        assert "http://" not in raw.replace(endpoint, "").replace(proc.url, ""), \
            "no external assets"
        dom = await asyncio.to_thread(browse, proc.url + "/", tmp_path / "p1", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert "page-0" in page and endpoint in page
        assert "TRIPPED" in page and "trip wire: page-0" in page
        assert "<svg" in page and 'class="streams"' in page
        assert "12.0" in page, "the steady state is shown"

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        shot.unlink(missing_ok=True)
        # Rendered with JavaScript off (--dump-dom needs it itself; the screenshot does not).
        done = await asyncio.to_thread(browse, proc.url + "/", tmp_path / "p2",
                                       "--disable-javascript",
                                       f"--screenshot={shot}")
        assert done.returncode == 0 and shot.exists() and shot.stat().st_size > 10_000, \
            done.stderr[-2000:]
        assert browser
    finally:
        await surge.stop()
        await steady.stop()
