"""Counting server-side client connections with real loopback sockets."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

import psutil
import pytest

from watchdog.etcd.sockets import (
    OTHER,
    ConnectionCount,
    SocketTable,
    bucket_remotes,
    count_connections,
    normalize_ip,
    snapshot_connections,
)
from watchdog.lab.cluster import free_port


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def connect_many(port: int, n: int, source: str = "127.0.0.1") -> list[socket.socket]:
    clients = []
    for _ in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.bind((source, 0))
        c.connect(("127.0.0.1", port))
        clients.append(c)
    return clients


def test_counts_real_connections(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    clients = connect_many(port, 7) + connect_many(port, 3, source="127.0.0.2")
    accepted = [listener.accept()[0] for _ in range(10)]
    try:
        table = snapshot_connections()
        result = count_connections(table, port)
        assert result == ConnectionCount(
            total=10, by_remote=(("127.0.0.1", 7), ("127.0.0.2", 3)), listening=True
        )
        # The same snapshot serves other questions; the client-side sockets are not counted.
        assert count_connections(table, port, top_n=1) == ConnectionCount(
            10, (("127.0.0.1", 7), (OTHER, 3)), True
        )
        assert count_connections(table, port, listen_hosts={"127.0.0.1"}).total == 10
        assert count_connections(table, port, listen_hosts={"10.9.9.9"}) is None
    finally:
        for s in clients + accepted:
            s.close()


def test_not_yet_accepted_connections_count(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    clients = connect_many(port, 4)
    try:
        result = count_connections(None, port)
        assert result is not None and result.total == 4
    finally:
        for s in clients:
            s.close()


def test_idle_listener_counts_zero(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert count_connections(None, port) == ConnectionCount(0, (), True)


def test_no_listener_is_none() -> None:
    assert count_connections(None, free_port()) is None


def test_excluded_remote_port(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    peer_port = free_port()
    fixed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fixed.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    fixed.bind(("127.0.0.1", peer_port))
    fixed.connect(("127.0.0.1", port))
    others = connect_many(port, 2)
    try:
        table = snapshot_connections()
        assert count_connections(table, port).total == 3
        assert count_connections(table, port, exclude_remote_ports={peer_port}).total == 2
    finally:
        for s in [fixed, *others]:
            s.close()


def fake_conn(status: str, laddr: tuple[str, int], raddr: tuple[str, int] | tuple[()] = ()):
    return SimpleNamespace(status=status, laddr=laddr, raddr=raddr)


def test_bucketing_top_n_and_other() -> None:
    conns = [fake_conn(psutil.CONN_LISTEN, ("0.0.0.0", 2379))]
    spread = {"10.0.0.1": 5, "10.0.0.2": 5, "10.0.0.3": 9, "::ffff:10.0.0.4": 1, "10.0.0.5": 2}
    for ip, n in spread.items():
        conns += [fake_conn(psutil.CONN_ESTABLISHED, ("10.0.0.100", 2379), (ip, 40000 + i))
                  for i in range(n)]
    # Client-side sockets and other states are not counted.
    conns.append(fake_conn(psutil.CONN_ESTABLISHED, ("10.0.0.100", 51000), ("10.0.0.9", 2379)))
    conns.append(fake_conn(psutil.CONN_TIME_WAIT, ("10.0.0.100", 2379), ("10.0.0.9", 1)))
    table = SocketTable.from_connections(conns)
    result = count_connections(table, 2379, top_n=2)
    assert result == ConnectionCount(22, (("10.0.0.3", 9), ("10.0.0.1", 5), (OTHER, 8)), True)
    assert count_connections(table, 2379, top_n=10).by_remote == (
        ("10.0.0.3", 9), ("10.0.0.1", 5), ("10.0.0.2", 5), ("10.0.0.5", 2), ("10.0.0.4", 1),
    )
    assert count_connections(table, 2379, top_n=0).by_remote == ((OTHER, 22),)
    assert count_connections(table, 2379, listen_hosts={"10.0.0.100"}).total == 22
    assert count_connections(table, 2380) is None


def test_bucket_remotes_is_deterministic() -> None:
    counts = Counter({"b": 2, "a": 2, "c": 2})
    assert bucket_remotes(counts, 2) == (("a", 2), ("b", 2), (OTHER, 2))
    assert bucket_remotes(Counter(), 3) == ()


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:127.0.0.1") == "127.0.0.1"
    assert normalize_ip("::1") == "::1"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    assert normalize_ip("not-an-ip") == "not-an-ip"


def test_own_connections_can_be_left_out() -> None:
    """The agent's own probe connections are not clients of the peer."""
    import socket

    from watchdog.etcd.sockets import count_connections, snapshot_connections

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in range(3)]
        try:
            everyone = count_connections(snapshot_connections(), port)
            others = count_connections(snapshot_connections(exclude_own=True), port)
        finally:
            for s in clients + accepted:
                s.close()
    assert everyone is not None and everyone.total == 3
    assert others is not None and others.total == 0 and others.listening
