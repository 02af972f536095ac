"""TLS files re-read when they change on disk: a CA rotated to a CA1+CA2 bundle and a
client certificate renewed, with real certificates and a real etcd restarted on the new
server certificate. The same clients keep polling; nothing is recreated."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import trustme

from tests.integration.test_backends import config
from watchdog.etcd.client import EtcdHttp
from watchdog.etcd.peers import PeerTarget, poll_peer
from watchdog.etcd.probes import GrpcProber
from watchdog.etcd.tlsfiles import CHECK_INTERVAL
from watchdog.lab.cluster import EtcdCluster

pytestmark = pytest.mark.integration


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    tmp.replace(path)


@pytest.mark.fault(
    "CA rotation: CA1+CA2 bundle, etcd switched to a CA2 server certificate",
    reports="JSON and gRPC probes pass on the changed files (a client still on the old files fails)",
    within="the next poll after the 0.25 s file check (asserted)")
@pytest.mark.fault(
    "client certificate renewed on disk, then the old CA retired by etcd",
    reports="both APIs keep passing with the renewed certificate",
    within="the next poll after the 0.25 s file check (asserted)")
@pytest.mark.timeout(120)
async def test_ca_rotation_and_client_cert_renewal(
    make_cluster: object, tmp_path: Path
) -> None:
    cluster: EtcdCluster = make_cluster(size=1, tls=True, client_cert_auth=True,  # type: ignore[operator]
                                        name_prefix="rotate")
    files = cluster.tls_files
    assert files is not None
    # watchdog's own copies, as an operator's secret mount would hold them.
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client-key.pem"
    shutil.copy(files.ca_file, ca)
    shutil.copy(files.client_cert, cert)
    shutil.copy(files.client_key, key)
    url = cluster.endpoints[0]
    target = PeerTarget("rotate-0", url)
    cfg = config(url)
    tls = {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)}
    old = {}
    for name, path in tls.items():
        kept = tmp_path / f"old-{Path(path).name}"
        shutil.copy(path, kept)
        old[name] = str(kept)
    http, grpc = EtcdHttp(**tls), GrpcProber(**tls)  # type: ignore[arg-type]
    try:
        before = await poll_peer(target, cfg, http, grpc, None, 5)
        assert before.up and all(r.ok for r in before.probes), before.probes

        # A second CA: etcd gets a server certificate from it and trusts both CAs for
        # clients; watchdog's CA file becomes the bundle and its client cert is renewed
        # by CA2 (the old one would still be accepted: the renewal must be used, below).
        ca2 = trustme.CA(organization_name="rotated")
        server2 = ca2.issue_cert("127.0.0.1", "localhost")
        client2 = ca2.issue_cert("watchdog-client", common_name="watchdog-client")
        bundle = files.ca_file.read_bytes() + ca2.cert_pem.bytes()
        files.ca_file.write_bytes(bundle)
        server2.cert_chain_pems[0].write_to_path(str(files.server_cert))
        server2.private_key_pem.write_to_path(str(files.server_key))
        client2.cert_chain_pems[0].write_to_path(str(files.client_cert))
        client2.private_key_pem.write_to_path(str(files.client_key))
        cluster.restart_member(0)

        write_atomically(ca, bundle)
        write_atomically(cert, client2.cert_chain_pems[0].bytes())
        write_atomically(key, client2.private_key_pem.bytes())
        # Files are looked at no more often than CHECK_INTERVAL; real polls are seconds
        # apart, this test's could be closer.
        await asyncio.sleep(CHECK_INTERVAL + 0.05)
        after = await poll_peer(target, cfg, http, grpc, None, 5)
        assert after.up and all(r.ok for r in after.probes), after.probes

        # Then CA1 is retired: etcd trusts CA2 only, so only the renewed client
        # certificate gets in, and only a client that re-read it still polls.
        files.ca_file.write_bytes(ca2.cert_pem.bytes())
        cluster.restart_member(0)
        await asyncio.sleep(CHECK_INTERVAL + 0.05)
        last = await poll_peer(target, cfg, http, grpc, None, 5)
        assert last.up and all(r.ok for r in last.probes), last.probes

        # The control: the same client code on the old, unchanged files fails, so the
        # polls above passed because the changed files were read again.
        stale = EtcdHttp(**old)  # type: ignore[arg-type]
        stale_grpc = GrpcProber(**old)  # type: ignore[arg-type]
        try:
            results = [await stale.range_count(url, "/k", timeout=2),
                       await stale_grpc.range_count(url, "/k", timeout=2)]
        finally:
            await stale.close()
            stale_grpc.close()
        assert [r.ok for r in results] == [False, False], results
    finally:
        await http.close()
        grpc.close()
