"""What a listener speaks, when a call to it failed without saying why.

etcd's listeners close the connection on the wrong protocol instead of answering
(http:// to its TLS port: "server disconnected"; https:// to its plain port: "connection
reset"), which reads like a crash. Only then, one tiny bounded exchange tells the two
apart so the failure can say what to change in the config. Blocking (socket timeouts):
call it from a worker thread.
"""

from __future__ import annotations

import socket
import ssl
import time

TLS = "tls"
PLAIN = "plain"
SILENT = "silent"


def sniff(host: str, port: int, timeout: float) -> str | None:
    """TLS when a TLS handshake gets a server answer, SILENT when the listener accepts
    and says nothing until the time is up, PLAIN when an HTTP/1 request gets an HTTP
    answer, None when none of these (refused, closed, or no time left)."""
    deadline = time.monotonic() + max(timeout, 0.0)
    first = _tls_answer(host, port, deadline)
    if first is not None:
        return first
    if _speaks_http(host, port, deadline):
        return PLAIN
    return None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _tls_answer(host: str, port: int, deadline: float) -> str | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection((host, port), timeout=_left(deadline))
    except (OSError, TimeoutError, ValueError):
        return None
    try:
        with raw:
            raw.settimeout(_left(deadline))
            with ctx.wrap_socket(raw, server_hostname=host):
                return TLS
    except ssl.SSLError as exc:
        # An alert (e.g. "certificate required") is a TLS server talking; a plain-text
        # answer shows up as a record-layer error.
        reason = (exc.reason or "").upper()
        talking = bool(reason) and not any(
            m in reason for m in ("WRONG_VERSION", "RECORD_LAYER", "PACKET_LENGTH",
                                  "UNEXPECTED_EOF", "HTTP_REQUEST"))
        return TLS if talking else None
    except TimeoutError:  # socket.timeout: connected, then nothing
        return SILENT
    except (OSError, ValueError):
        return None


def _speaks_http(host: str, port: int, deadline: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_left(deadline)) as sock:
            sock.settimeout(_left(deadline))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: " + host.encode("idna") +
                         b"\r\nConnection: close\r\n\r\n")
            head = sock.recv(16)
    except (OSError, TimeoutError, ValueError, UnicodeError):
        return False
    return head.startswith(b"HTTP/1.")
