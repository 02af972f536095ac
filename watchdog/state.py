"""Atomic persistence of learned state: one JSON file, written aside and renamed into place.

The file holds ``{"format": "watchdog-state", "version": 1, "saved_at": <unix>, "data": ...}``.
A file that cannot be understood is renamed aside (``<name>.corrupt-<UTC time>``) and treated as
missing, so a bad file costs a warm-up, never a crash loop. "Understood" is strict: valid JSON
that no save could have written (NaN or Infinity, an integer beyond 64 bits, a float beyond a
double, nesting deeper than MAX_DEPTH, more than MAX_BYTES, wrong envelope types, or data the
optional ``validate`` hook refuses) is set aside too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "MAX_BYTES", "MAX_DEPTH", "VERSION", "StateError", "StateStore"]

FORMAT = "watchdog-state"
VERSION = 1
MAX_BYTES = 64 << 20  # the state of thousands of peers is a few MB
MAX_DEPTH = 32  # what the daemon writes nests six deep

log = logging.getLogger(__name__)

Validator = Callable[[dict[str, Any]], "str | None"]


class StateError(OSError):
    """The state could not be saved (read-only or full disk, missing permissions...)."""


class StateStore:
    """Loads and saves one state file in a directory.

    `validate`, when given, judges loaded data: it returns a problem (the file is set aside)
    or None; an exception it raises counts as a problem too.
    """

    def __init__(self, directory: Path, name: str = "state.json", *,
                 validate: Validator | None = None) -> None:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"state file name must be a plain file name, got {name!r}")
        self.directory = Path(directory)
        self.name = name
        self.path = self.directory / name
        self.validate = validate

    def load(self) -> dict[str, Any] | None:
        """Return the saved data, or None when there is none that can be trusted.

        Never raises: an unreadable path is skipped, an unusable file set aside."""
        self._remove_leftovers()
        try:
            with open(self.path, "rb") as file:
                raw = file.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("cannot read state file %s: %s; starting without it", self.path, error)
            return None
        if len(raw) > MAX_BYTES:
            self._set_aside(f"larger than {MAX_BYTES >> 20} MiB")
            return None
        try:
            envelope = json.loads(raw, parse_constant=_refuse_constant, parse_int=_bounded_int,
                                  parse_float=_finite_float)
        except RecursionError:
            self._set_aside("not JSON (nested too deeply)")
            return None
        except ValueError as error:  # includes UnicodeDecodeError
            self._set_aside(f"not JSON ({_short(error)})")
            return None
        problem = _depth_problem(envelope) or _envelope_problem(envelope)
        if problem is None and self.validate is not None:
            try:
                problem = self.validate(envelope["data"])
            except Exception as error:  # a refusal, or a validator's bug: never a crashed start
                problem = f"invalid data ({_short(error)})"
        if problem:
            self._set_aside(problem)
            return None
        data: dict[str, Any] = envelope["data"]
        return data

    def save(self, data: dict[str, Any]) -> None:
        """Replace the state file with data, atomically; raise StateError on failure (data
        that is not JSON, e.g. a NaN, too: counted like a full disk, never a crash)."""
        envelope = {"format": FORMAT, "version": VERSION, "saved_at": time.time(), "data": data}
        # Serialised first: bad data must leave no file behind and keep the good one.
        try:
            payload = json.dumps(envelope, allow_nan=False, separators=(",", ":")).encode()
        except (ValueError, TypeError, RecursionError) as error:
            raise StateError(f"cannot save state to {self.path}: not JSON ({error})") from error
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
        return f"format {_short(envelope.get('format'))}, expected {FORMAT!r}"
    version = envelope.get("version")
    if type(version) is not int or version != VERSION:
        return f"version {_short(version)}, expected {VERSION}"
    saved_at = envelope.get("saved_at")
    if isinstance(saved_at, bool) or not isinstance(saved_at, int | float):
        return f"saved_at {_short(saved_at)} is not a number"
    if not isinstance(envelope.get("data"), dict):
        return "no 'data' object"
    return None


def _depth_problem(value: object) -> str | None:
    """Nesting deeper than MAX_DEPTH, found without recursion."""
    level: list[object] = [value]
    for _ in range(MAX_DEPTH + 1):
        below: list[object] = []
        for item in level:
            if isinstance(item, dict):
                below.extend(item.values())
            elif isinstance(item, list):
                below.extend(item)
        if not below:
            return None
        level = below
    return f"nested deeper than {MAX_DEPTH} levels"


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a save writes")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:  # beyond 64 bits: no save writes it
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:24]} is beyond a double")
    return value


def _short(value: object) -> str:
    """A bounded text for a log line, whatever a hostile file holds."""
    try:
        text = str(value) if isinstance(value, Exception) else repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


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
