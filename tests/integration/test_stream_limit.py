"""The stall at a configured --max-concurrent-streams, TLS and plain, on real etcd.

etcd with the flag (3.4.20+, 3.5.5+, 3.6+) stalls its JSON gateway at N streams with or
without TLS (etcd's own e2e test v3_curl_maxstream_test.go). Here N is 20, so the stall
costs 21 watches instead of 250.
"""

from __future__ import annotations

import pytest

from tests.integration.test_backends import SERVERS, config, etcd_binaries
from tests.integration.test_etcd_probes import wait_for, watch_load, watch_streams
from watchdog.etcd.client import EtcdHttp
from watchdog.etcd.exposure import has_stream_flag
from watchdog.etcd.peers import PeerTarget, poll_peer
from watchdog.etcd.probes import GrpcProber
from watchdog.lab.cluster import EtcdCluster, etcd_version
from watchdog.results import Reason

pytestmark = pytest.mark.integration

LIMIT = 20


def flagged_etcd() -> str | None:
    """The newest etcd here that has --max-concurrent-streams."""
    usable = [b for b in etcd_binaries() if has_stream_flag(etcd_version(b))]
    return usable[-1] if usable else None


@pytest.mark.fault(
    "JSON gateway stalled at a configured stream limit (TLS and plain)",
    reports="JSON range `timeout`, gRPC passes, the peer stays up (a stalled gateway, not a dead "
            "peer); the configured limit is exposed",
    within="each poll (asserted)")
@pytest.mark.timeout(90)
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_stall_at_the_configured_limit(tls: bool) -> None:
    binary = flagged_etcd()
    if binary is None:
        pytest.skip(f"no etcd with --max-concurrent-streams here (see {SERVERS})")
    with EtcdCluster(size=1, tls=tls, binary=binary, name_prefix="maxstreams",
                     extra_args=("--max-concurrent-streams", str(LIMIT))) as cluster:
        url = cluster.endpoints[0]
        files = {"ca_file": str(cluster.tls_files.ca_file)} if cluster.tls_files else {}
        told = config(url, max_concurrent_streams=LIMIT)
        learning = config(url).model_copy(update={"timeout": 1.0})
        target = PeerTarget("m", url)
        http, grpc = EtcdHttp(**files), GrpcProber(**files)  # type: ignore[arg-type]
        try:
            before = await poll_peer(target, told, http, grpc, None, 5)
            assert before.up and before.stream_limit == LIMIT and before.exposed is True
            untold = await poll_peer(target, learning, http, grpc, None, 5)
            assert untold.stream_limit is None and untold.exposed is False

            async with watch_load(url, LIMIT + 3, cluster.ssl_context()) as created:
                async def full() -> bool:
                    return await watch_streams(http, url) == LIMIT

                await wait_for(full, 20, f"{LIMIT} watch streams")
                assert len(created) == LIMIT  # the rest wait for a stream that never frees
                # Nobody told this client the limit: it learns it from the stall.
                stalled = [await poll_peer(target, learning, http, grpc, None, 5)
                           for _ in range(2)]
                for poll in stalled:
                    by = {(r.api, r.op): r for r in poll.probes}
                    assert by[("json", "range")].reason is Reason.TIMEOUT, by
                    assert by[("grpc", "range")].ok, by
                    assert poll.up  # gRPC answers: a stalled gateway, not a dead peer
                    assert poll.metrics is not None and poll.metrics.watch_streams == LIMIT
                assert stalled[-1].stream_limit == LIMIT and stalled[-1].exposed is True
        finally:
            await http.close()
            grpc.close()
