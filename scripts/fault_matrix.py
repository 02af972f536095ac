#!/usr/bin/env python3
"""Render the fault matrix of docs/reliability.md from the tests' @pytest.mark.fault markers.

    python scripts/fault_matrix.py            # rewrite the table in docs/reliability.md
    python scripts/fault_matrix.py --check    # exit 1 if the committed table is stale
    python scripts/fault_matrix.py --proven RUN.json
        # exit 1 unless every row's test passed in a run made with
        # `pytest --fault-matrix-json RUN.json`
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faultmatrix import DOC, collect, unproven, updated, write_atomically  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only check that the committed table matches the markers")
    parser.add_argument("--proven", type=Path, metavar="RUN_JSON",
                        help="check that every row's test passed in this recorded run")
    args = parser.parse_args(argv)
    if args.proven is not None:
        rows = json.loads(args.proven.read_text())["rows"]
        missing = list(unproven(rows))
        for line in missing:
            print(f"not proven: {line}", file=sys.stderr)
        print(f"{len(rows) - len(missing)} of {len(rows)} faults proven by a passing test")
        return 1 if missing else 0
    rows = collect()
    doc = DOC.read_text(encoding="utf-8")
    new = updated(doc, rows)
    if args.check:
        if new != doc:
            print(f"{DOC} is stale: run python scripts/fault_matrix.py", file=sys.stderr)
            return 1
        print(f"{DOC.name}: {len(rows)} rows, up to date")
        return 0
    if new != doc:
        write_atomically(DOC, new)
    print(f"{DOC.name}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
