"""What a finding is: its severity, evidence and fix, as plain frozen values.

They live below both the snapshot (which carries the open findings) and `watchdog.findings`
(which computes them from a snapshot), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

RUNBOOK = "docs/runbook.md"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is worse."""
        return {"critical": 2, "warning": 1, "info": 0}[self.value]


@dataclass(frozen=True, slots=True)
class Evidence:
    """One observation behind a finding: what, its value in words, and how old it is."""

    what: str
    value: str
    age: float  # seconds since it was observed


@dataclass(frozen=True, slots=True)
class Candidate:
    """A condition that holds in one snapshot (not yet debounced)."""

    kind: str  # stable name, e.g. json_gateway_stalled; the `finding` label
    severity: Severity
    subject_kind: str  # peer | gateway | cluster
    subject: str
    summary: str
    evidence: tuple[Evidence, ...]
    cause: str
    fix: str
    anchor: str  # section of docs/runbook.md
    open_after: float = 0.0  # held at least this long before it opens (beside the tracker's)

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.subject}"

    @property
    def runbook(self) -> str:
        return f"{RUNBOOK}#{self.anchor}"


@dataclass(frozen=True, slots=True)
class Finding:
    """An open finding: a candidate that held long enough, and when it opened."""

    kind: str
    severity: Severity
    subject_kind: str
    subject: str
    summary: str
    evidence: tuple[Evidence, ...]
    cause: str
    fix: str
    anchor: str
    opened_at: float

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.subject}"

    @property
    def runbook(self) -> str:
        return f"{RUNBOOK}#{self.anchor}"

    @classmethod
    def opened(cls, c: Candidate, now: float) -> Finding:
        return cls(c.kind, c.severity, c.subject_kind, c.subject, c.summary, c.evidence,
                   c.cause, c.fix, c.anchor, now)

    def to_dict(self, now: float) -> dict[str, Any]:
        """The JSON shape of GET /api/v1/findings (docs/findings.md)."""
        return {
            "id": self.id,
            "finding": self.kind,
            "severity": self.severity.value,
            "subject": {"kind": self.subject_kind, "name": self.subject},
            "summary": self.summary,
            "evidence": [{"what": e.what, "value": e.value, "age_seconds": round(e.age, 1)}
                         for e in self.evidence],
            "cause": self.cause,
            "fix": self.fix,
            "runbook": self.runbook,
            "opened_at": self.opened_at,
            "open_for_seconds": round(max(0.0, now - self.opened_at), 1),
        }


def worst(findings: Iterable[Finding]) -> Finding | None:
    """The most severe finding (the oldest among equals), or None."""
    ranked = sorted(findings, key=lambda f: (-f.severity.rank, f.opened_at, f.id))
    return ranked[0] if ranked else None


def failing(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that make `doctor` exit 1 and the banner not green."""
    return [f for f in findings if f.severity is not Severity.INFO]
