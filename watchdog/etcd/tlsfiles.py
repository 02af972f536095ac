"""Notice when TLS files change on disk (CA rotated, client certificate renewed).

Clients build their SSL context or gRPC credentials once and ask `changed()` before a
poll; it stats the files (mtime, size, inode) at most once per `min_interval` (a quarter
second: the peers of one cycle start polling together), so a cycle over hundreds of peers
costs one look. Nothing is read here: the client rebuilds
from the files itself and keeps its old material when the new one does not load (a
half-written file is seen again at the next check).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

Signature = tuple[tuple[int, int, int] | None, ...]
CHECK_INTERVAL = 0.25


class TlsFiles:
    """The signature of a set of files, and whether it moved since last looked at."""

    def __init__(
        self,
        *paths: str | None,
        min_interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = tuple(p for p in paths if p)
        self.min_interval = min_interval
        self._clock = clock
        self._checked = clock()
        self._seen = self.signature()

    def signature(self) -> Signature:
        """(mtime_ns, size, inode) per file; None for a file that cannot be stat'ed."""
        out: list[tuple[int, int, int] | None] = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def changed(self) -> bool:
        """True once after the files changed (not more often than min_interval looks)."""
        if not self.paths:
            return False
        now = self._clock()
        if now - self._checked < self.min_interval:
            return False
        self._checked = now
        current = self.signature()
        if current == self._seen:
            return False
        self._seen = current
        return True
