"""What a gateway says about itself: the status API and its Prometheus page."""

from __future__ import annotations

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


def config_lag(newest_in_etcd: int | None, loaded: float | None) -> float | None:
    """Revisions between the newest gateway config in etcd and what the gateway loaded."""
    if newest_in_etcd is None or loaded is None:
        return None
    return max(0.0, float(newest_in_etcd) - loaded)
