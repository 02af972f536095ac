"""docs/reliability.md's fault matrix is exactly what the tests' fault markers say."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.faultmatrix import DOC, REPO, MarkerError, collect, collect_file, committed_table, render, unproven


def test_the_committed_matrix_matches_the_markers() -> None:
    rows = collect()
    committed = committed_table(DOC.read_text(encoding="utf-8"))
    assert committed is not None, "docs/reliability.md lost its BEGIN/END fault matrix lines"
    assert committed == render(rows), "stale fault matrix: run python scripts/fault_matrix.py"
    assert len(rows) >= 80, f"the matrix has {len(rows)} rows, the issue listed 82 faults"


def test_every_row_names_an_existing_test_once_per_fault() -> None:
    rows = collect()
    tests: dict[str, set[str]] = {}
    for row in rows:
        path = row.test.partition("::")[0]
        if path not in tests:
            tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
            tests[path] = {n.name for n in tree.body
                           if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        assert row.function.startswith("test_") and row.function in tests[path], row.test
    keys = [(row.fault, row.test) for row in rows]
    assert len(keys) == len(set(keys)), "a fault is listed twice for one test"


def test_markers_must_be_literal_one_line_strings(tmp_path: Path) -> None:
    example = tmp_path / "test_example.py"
    example.write_text(
        "import pytest\n"
        "@pytest.mark.fault('a | b', reports='r', within='1 s')\n"
        "@pytest.mark.slow\n"
        "def test_one():\n    pass\n")
    [row] = collect_file(example)
    assert (row.fault, row.reports, row.within, row.test) == ("a | b", "r", "1 s",
                                                               "test_example.py::test_one")
    assert "| a \\| b | r | 1 s | `test_example.py::test_one` |" in render([row])
    for bad in ("NAME, reports='r', within='w'", "'f', reports='r'", "'f', reports='', within='w'",
                "'f', reports='r', within='w', extra='x'"):
        example.write_text(f"import pytest\n@pytest.mark.fault({bad})\ndef test_x():\n    pass\n")
        with pytest.raises(MarkerError):
            collect_file(example)


def test_a_recorded_run_proves_only_the_rows_whose_test_passed() -> None:
    rows = [{"test": "t::a", "fault": "x", "result": {"outcome": "passed", "runs": 1}},
            {"test": "t::b", "fault": "y", "result": {"outcome": "failed", "runs": 1}},
            {"test": "t::c", "fault": "z", "result": None}]
    assert list(unproven(rows)) == ["t::b: y (failed)", "t::c: z (not run)"]
