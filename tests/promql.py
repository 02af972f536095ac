"""PromQL and docs/metrics.md helpers shared by the alert and dashboard tests."""

from __future__ import annotations

import functools
import re
from pathlib import Path

METRICS_DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


@functools.cache
def documented_metrics() -> dict[str, frozenset[str]]:
    """Metric name -> label names from docs/metrics.md; histograms add _bucket/_sum/_count."""
    metrics: dict[str, frozenset[str]] = {}
    for line in METRICS_DOC.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        labels = frozenset(m.group(1) for m in re.finditer(r"(?:^|,)\s*([a-z_]+)", cells[2]))
        for name in re.findall(r"`([a-z_][a-z0-9_]*)`", cells[0]):
            metrics[name] = labels
            if cells[1].startswith("histogram"):
                metrics[name + "_bucket"] = labels | {"le"}
                metrics[name + "_sum"] = labels
                metrics[name + "_count"] = labels
    return metrics


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels removed)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    return {
        m.group(1)
        for m in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?", s)
        if not m.group(2) and m.group(1) not in _KEYWORDS
    }


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names) for every `metric{...}` selector in an expression."""
    found = []
    for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", _STRING.sub('""', m.group(2))))
        found.append((m.group(1), labels))
    return found
