"""A loopback replay server for the fleet benchmark: N etcd peers and M gateway admin APIs,
one TCP port each, answering from real captured etcd responses.

    python bench/replay_server.py --peers 200 --gateways 200 --ready-file PATH

Each peer port answers what watchdog asks a member (plain HTTP, gRPC not spoken):

- `GET /metrics`: a real etcd page from the fixtures (peer i gets page i mod the number of
  pages), gzip-encoded when the client accepts it, as etcd's promhttp handler does;
- `POST /v3/kv/range`: with count_only, the header-only answer etcd gives for a missing key;
  otherwise the captured range answer;
- `POST /v3/maintenance/status`: the captured 3.5.1 answer with the peer's member id (peer 0
  is the leader);
- `POST /v3/cluster/member/list`: every peer as a member, with its client URL.

Each gateway port answers `GET /apisix/admin/routes/<id>` with APISIX's
`404 {"message":"Key not found"}`. Responses are prepared once; the server is a bare asyncio
protocol (no framework) so that it stays cheap next to the agent it feeds. It runs in its own
process so its CPU is not counted as the agent's. `GET /__stats` on the control port returns
request counts.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gzip
import json
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import fixtures_dir  # noqa: E402

CLUSTER_ID = "324952591200643719"


def http_response(status: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def json_response(data: object, extra: str = "Grpc-Metadata-Content-Type: application/grpc\r\n"
                  ) -> bytes:
    return http_response("200 OK", json.dumps(data, separators=(",", ":")).encode(),
                         "application/json", extra)


class Replay:
    """Prepared answers for every peer and gateway, and the request counters."""

    def __init__(self, peers: int, gateways: int, fixtures: Path, seed: int = 7) -> None:
        rng = random.Random(seed)
        pages = sorted(fixtures.glob("*.metrics"))
        if not pages:
            raise SystemExit(f"no *.metrics fixtures in {fixtures}")
        raw_pages = [p.read_bytes() for p in pages]
        ctype = "text/plain; version=0.0.4; charset=utf-8"
        self.page_plain = [http_response("200 OK", b, ctype) for b in raw_pages]
        self.page_gzip = [http_response("200 OK", gzip.compress(b, 6), ctype,
                                        "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n")
                          for b in raw_pages]
        self.page_names = [p.name for p in pages]
        status = json.loads((fixtures / "etcd-3.5.1-tls-idle_v3_maintenance_status.json")
                            .read_text())
        kv_range = json.loads((fixtures / "etcd-3.5.1-tls-idle_v3_kv_range.json").read_text())
        self.peers = peers
        self.ids = [str(rng.getrandbits(63) | 1) for _ in range(peers)]
        self.ports: list[int] = []
        self.gateway_ports: list[int] = []
        self.status: list[bytes] = []
        self.count: list[bytes] = []
        self.range: list[bytes] = []
        for i in range(peers):
            header = {"cluster_id": CLUSTER_ID, "member_id": self.ids[i], "revision": "4",
                      "raft_term": "2"}
            body = copy.deepcopy(status)
            body["header"] = header
            body["leader"] = self.ids[0]
            self.status.append(json_response(body))
            self.count.append(json_response({"header": header}))
            full = copy.deepcopy(kv_range)
            full["header"] = header
            self.range.append(json_response(full))
        self.member_list = b""
        self.not_found = http_response(
            "404 Not Found", b'{"message":"Key not found"}\n', "application/json",
            "Server: APISIX/3.9.1\r\nX-API-VERSION: v3\r\nAccess-Control-Allow-Origin: *\r\n")
        self.other = http_response("404 Not Found", b"404 page not found\n", "text/plain")
        self.requests: Counter[str] = Counter()

    def finish(self) -> None:
        members = [{"ID": self.ids[i], "name": f"etcd-{i:04d}",
                    "peerURLs": [f"http://127.0.0.1:{40000 + i % 20000}"],
                    "clientURLs": [f"http://127.0.0.1:{port}"]}
                   for i, port in enumerate(self.ports)]
        header = {"cluster_id": CLUSTER_ID, "member_id": self.ids[0], "raft_term": "2"}
        self.member_list = json_response({"header": header, "members": members})

    def answer(self, kind: str, index: int, method: str, path: str, headers: dict[str, str],
               body: bytes) -> bytes:
        if kind == "gateway":
            self.requests["admin"] += 1
            if method == "GET" and path.startswith("/apisix/admin/routes/"):
                return self.not_found
            return self.other
        if kind == "control":
            return json_response(dict(self.requests), extra="")
        if path == "/metrics":
            self.requests["metrics"] += 1
            page = index % len(self.page_plain)
            gz = "gzip" in headers.get("accept-encoding", "")
            return self.page_gzip[page] if gz else self.page_plain[page]
        if path == "/v3/kv/range":
            self.requests["range"] += 1
            return self.count[index] if b"count_only" in body else self.range[index]
        if path == "/v3/maintenance/status":
            self.requests["status"] += 1
            return self.status[index]
        if path == "/v3/cluster/member/list":
            self.requests["member_list"] += 1
            return self.member_list
        self.requests["other"] += 1
        return self.other


class Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: requests parsed just enough to answer them."""

    def __init__(self, replay: Replay, kind: str, index: int) -> None:
        self.replay, self.kind, self.index = replay, kind, index
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(self.replay.answer(self.kind, self.index, method,
                                                    path.split("?", 1)[0], headers, body))
            if headers.get("connection", "").lower() == "close":
                self.transport.close()
                self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(args: argparse.Namespace) -> None:
    replay = Replay(args.peers, args.gateways, args.fixtures)
    loop = asyncio.get_running_loop()
    servers = []

    async def listen(kind: str, index: int) -> int:
        server = await loop.create_server(lambda: Conn(replay, kind, index), "127.0.0.1", 0,
                                          backlog=1024)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    for i in range(args.peers):
        replay.ports.append(await listen("peer", i))
    for i in range(args.gateways):
        replay.gateway_ports.append(await listen("gateway", i))
    control = await listen("control", 0)
    replay.finish()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = {"pid": os.getpid(), "control_port": control, "peer_ports": replay.ports,
             "peer_names": [f"etcd-{i:04d}" for i in range(args.peers)],
             "gateway_ports": replay.gateway_ports, "pages": replay.page_names}
    tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
    tmp.write_text(json.dumps(ready))
    tmp.replace(args.ready_file)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=200)
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--fixtures", type=Path, default=fixtures_dir())
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
