"""What a gateway says about itself: the status API and its Prometheus page."""

from __future__ import annotations

import math
from dataclasses import dataclass

import aiohttp

from watchdog.etcd.promtext import MetricsParseError, parse_families
from watchdog.httpprobe import timed_request
from watchdog.results import ProbeResult, Reason

# Keys of apisix_etcd_modify_indexes that describe config the gateway holds.
TRACKED_KEYS = ("routes", "services", "ssls", "consumers", "global_rules", "upstreams",
                "stream_routes", "protos")
# The etcd directories behind them: the newest mod_revision in these is what a synced
# gateway must have loaded.
TRACKED_DIRS = TRACKED_KEYS


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    """The etcd-related part of APISIX's Prometheus page."""

    etcd_reachable: float | None
    max_modify_index: float | None
    x_etcd_index: float | None


async def read_ready(
    session: aiohttp.ClientSession, status_url: str, timeout: float
) -> ProbeResult:
    """GET /status/ready: 200 once every worker loaded config (APISIX >= 3.13)."""
    return await timed_request(
        session, "GET", f"{status_url}/status/ready", api="status", op="ready",
        timeout=timeout, ok_status=(200,),
    )


async def scrape_metrics(
    session: aiohttp.ClientSession, metrics_url: str, timeout: float, max_bytes: int = 8 << 20
) -> tuple[ProbeResult, GatewayMetrics | None]:
    """Read apisix_etcd_reachable and apisix_etcd_modify_indexes from the gateway."""
    result = await timed_request(
        session, "GET", metrics_url, api="metrics", op="gateway_metrics", timeout=timeout,
        ok_status=(200,), expect_json=False, max_body=max_bytes,
    )
    if not result.ok or not isinstance(result.body, bytes):
        return result, None
    try:
        families = parse_families(
            result.body, ["apisix_etcd_reachable", "apisix_etcd_modify_indexes"]
        )
    except MetricsParseError:
        failed = ProbeResult(result.api, result.op, False, result.duration, Reason.PROTOCOL,
                             "not a Prometheus page", result.phases, result.status)
        return failed, None
    reachable = None
    for _, _, value in families.get("apisix_etcd_reachable", []):
        reachable = value
    indexes: dict[str, float] = {}
    for _, labels, value in families.get("apisix_etcd_modify_indexes", []):
        indexes[labels.get("key", "")] = value
    tracked = [indexes[k] for k in TRACKED_KEYS if k in indexes]
    newest = indexes.get("max_modify_index", max(tracked) if tracked else None)
    return result, GatewayMetrics(reachable, newest, indexes.get("x_etcd_index"))


MAX_REVISION = float(2**53)  # etcd revisions are int64; a page beyond this is no revision


def revision_problem(loaded: float | None) -> str | None:
    """Why a revision a gateway reports cannot be one (NaN, infinite, negative, fractional,
    beyond any etcd's reach), or None."""
    if loaded is None:
        return None
    if not math.isfinite(loaded):
        return f"{loaded} is not a revision"
    if loaded < 0:
        return f"{loaded:g} is negative"
    if loaded > MAX_REVISION:
        return f"{loaded:g} is beyond any etcd revision"
    if loaded != int(loaded):
        return f"{loaded:g} is not a whole revision"
    return None


def config_lag(newest_in_etcd: int | None, loaded: float | None) -> float | None:
    """Revisions between the newest gateway config in etcd and what the gateway loaded.

    None when either is unknown, when the gateway reports no possible revision, or when it
    reports more than etcd holds (no lag says that: it is not in sync either)."""
    if newest_in_etcd is None or loaded is None or revision_problem(loaded):
        return None
    if loaded > newest_in_etcd:
        return None
    return float(newest_in_etcd) - loaded
