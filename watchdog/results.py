"""Plain result types that jobs and probes return. Jobs never touch metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Why a probe or poll failed: a small fixed set, safe as a label value."""

    TIMEOUT = "timeout"  # no answer within the deadline
    REFUSED = "refused"  # TCP connection refused, reset, or host unreachable
    TLS = "tls"  # handshake or certificate verification failed
    AUTH = "auth"  # credentials rejected (401/403, etcd auth errors)
    HTTP = "http"  # an unexpected HTTP status
    PROTOCOL = "protocol"  # an answer that is not what the API promises (garbage, too big)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One timed call through one API.

    api: "json" | "grpc" | "admin" | "status" | "metrics"; op names the call.
    phases (JSON/HTTP only): connect, tls, processing (to first byte), transfer,
    as blackbox_exporter reports them. revision: etcd header revision, when known.
    """

    api: str
    op: str
    ok: bool
    duration: float
    reason: Reason | None = None
    detail: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    status: int | None = None
    revision: int | None = None
    body: object = None

    def __post_init__(self) -> None:
        if self.ok and self.reason is not None:
            raise ValueError("a successful probe has no failure reason")
        if not self.ok and self.reason is None:
            raise ValueError("a failed probe needs a reason")
