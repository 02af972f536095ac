"""The HELP text of a metric says what docs/metrics.md says about it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from watchdog.config import load_config
from watchdog.metrics import SnapshotCollector
from watchdog.reducer import initial

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented(name: str) -> str:
    """The meaning column of `name`'s row, without its trailing link in parentheses."""
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].split("`")[1:2] == [name]:
            return re.sub(r"\s*\(\[[^]]*\]\([^)]*\)\)$", "", cells[3])
    raise AssertionError(f"{name} is not in {DOC}")


@pytest.mark.parametrize("name", ["watchdog_gateway_config_lag_revisions"])
def test_help_matches_the_metrics_doc(tmp_path: Path, name: str) -> None:
    config_file = tmp_path / "c.yml"
    config_file.write_text("etcd: {endpoints: ['http://127.0.0.1:2379']}\n"
                           "gateways: [{name: gw-1, admin_url: 'http://127.0.0.1:9180'}]\n")
    snap = initial(load_config(config_file), 0.0)
    helps = {m.name: m.documentation for m in SnapshotCollector(lambda: snap).collect()}
    assert helps[name] == documented(name)
