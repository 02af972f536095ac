"""docs/compatibility.md is what scripts/servers/compat_report.py renders from the matrix's
results (kept as docs/compatibility.json), for the servers tests/backends.py pins."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from tests.backends import BACKENDS, FEATURES

REPO = Path(__file__).resolve().parents[2]


def report_module() -> ModuleType:
    path = REPO / "scripts" / "servers" / "compat_report.py"
    spec = importlib.util.spec_from_file_location("compat_report", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_is_rendered_from_the_results() -> None:
    data = json.loads((REPO / "docs" / "compatibility.json").read_text())
    page = (REPO / "docs" / "compatibility.md").read_text()
    assert report_module().render(data) == page, "regenerate: scripts/servers/compat_report.py"


def test_results_cover_the_pinned_servers() -> None:
    data = json.loads((REPO / "docs" / "compatibility.json").read_text())
    recorded = [(b["name"], b["version"]) for b in data["backends"]]
    assert recorded == [(b.name, b.version) for b in BACKENDS], (
        "a pin changed: run the matrix and scripts/servers/compat_report.py")
    assert data["features"] == [[key, title] for key, title in FEATURES.items()]
    for backend in BACKENDS:
        if backend.unavailable:
            continue
        row = data["cells"].get(backend.name, {})
        assert set(row) == set(FEATURES), f"{backend.name}: not every feature was run"


def test_render_marks_what_was_not_run() -> None:
    data = {"features": [["starts", "starts"]], "updated": "x",
            "backends": [{"name": "s-1", "kind": "etcd", "version": "1", "origin": "o",
                          "unavailable": ""}], "cells": {}}
    page = report_module().render(data)
    assert "| starts | not run |" in page
