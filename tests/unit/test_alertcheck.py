"""tests/alertcheck.py, the matrix's "no alert fires on a healthy run" check, can fail: a
peer down and a failing state save (a growing counter) fire their alerts."""

from __future__ import annotations

from pathlib import Path

from tests.alertcheck import Target, firing
from tests.helpers import require_tool

PAGE = """# TYPE watchdog_etcd_peer_up gauge
watchdog_etcd_peer_up{peer="p"} UP
# TYPE watchdog_state_save_failures_total counter
watchdog_state_save_failures_total SAVES
"""


def page(up: int, saves: float) -> str:
    return PAGE.replace("UP", str(up)).replace("SAVES", str(saves))


def test_a_sick_run_fires_and_a_healthy_one_does_not(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    sick = Target("watchdog", "wd:9817", [page(0, 1), page(0, 1.1)])
    fired = {f.split(" ")[0] for f in firing([sick], 1.0, promtool, tmp_path)}
    assert fired == {"EtcdPeerDown", "EtcdInsufficientMembers", "WatchdogStateSaveFailing"}
    healthy = Target("watchdog", "wd:9817", [page(1, 1), page(1, 1)])
    assert firing([healthy], 1.0, promtool, tmp_path) == []
