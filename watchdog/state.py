"""Atomic persistence of learned state: one JSON file, written aside and renamed into place.

The file holds ``{"format": "watchdog-state", "version": 1, "saved_at": <unix>, "data": ...}``.
A file that cannot be understood is renamed aside (``<name>.corrupt-<UTC time>``) and treated as
missing, so a bad file costs a warm-up, never a crash loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "VERSION", "StateError", "StateStore"]

FORMAT = "watchdog-state"
VERSION = 1

log = logging.getLogger(__name__)


class StateError(OSError):
    """The state could not be saved (read-only or full disk, missing permissions...)."""


class StateStore:
    """Loads and saves one state file in a directory."""

    def __init__(self, directory: Path, name: str = "state.json") -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"state file name must be a plain file name, got {name!r}")
        self.directory = Path(directory)
        self.name = name
        self.path = self.directory / name

    def load(self) -> dict[str, Any] | None:
        """Return the saved data, or None when there is none that can be trusted."""
        self._remove_leftovers()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("cannot read state file %s: %s; starting without it", self.path, error)
            return None
        try:
            envelope = json.loads(raw)
        except ValueError as error:  # includes UnicodeDecodeError
            self._set_aside(f"not JSON ({error})")
            return None
        problem = _envelope_problem(envelope)
        if problem:
            self._set_aside(problem)
            return None
        data: dict[str, Any] = envelope["data"]
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Replace the state file with data, atomically; raise StateError on failure."""
        envelope = {"format": FORMAT, "version": VERSION, "saved_at": time.time(), "data": data}
        # Serialise first: a TypeError here is a bug, and it must not leave a file behind.
        payload = json.dumps(envelope, allow_nan=False, separators=(",", ":")).encode()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{self.name}.", suffix=".tmp")
        except OSError as error:
            raise _state_error(error, self.path) from error
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _state_error(error, self.path) from error
        try:
            _fsync_directory(self.directory)  # makes the rename itself survive a power cut
        except OSError as error:
            raise _state_error(error, self.path) from error

    def _set_aside(self, problem: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.directory / f"{self.name}.corrupt-{stamp}"
        serial = 1
        while aside.exists():
            serial += 1
            aside = self.directory / f"{self.name}.corrupt-{stamp}-{serial}"
        try:
            os.replace(self.path, aside)
        except OSError as error:
            log.warning(
                "state file %s is unusable (%s) and cannot be set aside (%s); ignoring it",
                self.path,
                problem,
                error,
            )
            return
        log.warning("state file %s is unusable (%s); set aside as %s", self.path, problem, aside)

    def _remove_leftovers(self) -> None:
        """Delete temporary files a killed process left between write and rename."""
        try:
            leftovers = list(self.directory.glob(f".{self.name}.*.tmp"))
        except OSError:
            return
        for leftover in leftovers:
            with contextlib.suppress(OSError):
                leftover.unlink()


def _envelope_problem(envelope: object) -> str | None:
    if not isinstance(envelope, dict):
        return f"expected a JSON object, got {type(envelope).__name__}"
    if envelope.get("format") != FORMAT:
        return f"format {envelope.get('format')!r}, expected {FORMAT!r}"
    if envelope.get("version") != VERSION:
        return f"version {envelope.get('version')!r}, expected {VERSION}"
    if not isinstance(envelope.get("data"), dict):
        return "no 'data' object"
    return None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state_error(error: OSError, path: Path) -> StateError:
    if error.errno is None:
        return StateError(f"cannot save state to {path}: {error}")
    return StateError(error.errno, f"cannot save state to {path}: {error.strerror}", str(path))
