"""Small helpers shared by the tests: bounded waits and reading exposition text."""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


class GiveUp(AssertionError):
    """Raised by a wait_until predicate to stop waiting at once (e.g. the process died)."""


def wait_until(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll predicate until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except GiveUp:
            raise
        except Exception as exc:
            last = exc  # type: ignore[assignment]
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {last!r}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextmanager
def serve_on_loopback(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port for the block; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Exposition text to {(sample name, labels): value}."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample whose labels include `labels`, or None."""
    for (sname, slabels), value in samples(text).items():
        if sname == name and set(labels.items()) <= set(slabels):
            return value
    return None


def all_samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(slabels), value)
        for (sname, slabels), value in samples(text).items()
        if sname == name and set(labels.items()) <= set(slabels)
    ]


def require_tool(*names: str) -> str:
    """The first of `names` on PATH. Missing: skipped on a developer machine, a failure
    in CI (CI=true), where scripts/test must have installed it."""
    import os
    import shutil

    import pytest

    for name in names:
        found = shutil.which(name)
        if found:
            return found
    message = f"{names[0]} not installed (scripts/test installs it with apt)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " — CI must not skip this test")
    pytest.skip(message)


def libfaketime() -> str:
    """The libfaketime preload library (Debian package faketime), for LD_PRELOAD with
    FAKETIME set: a child process whose clock is shifted (the `faketime` wrapper itself
    would be the process a test signals)."""
    import pytest

    require_tool("faketime")
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")) + sorted(
        Path("/usr/lib").glob("faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("faketime is installed but libfaketime.so.1 was not found")
    return str(found[0])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; always reaped."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
