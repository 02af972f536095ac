"""Keep gRPC's own logging off stderr: watchdog reports gRPC failures as Reasons.

gRPC's C core writes straight to stderr (handshake failures, "Trying to connect an
http1.x server", absl's start-up banner), which a daemon's log collector would take for
watchdog's own lines. Its verbosity is read from the environment when the core starts,
so `quiet_grpc_core()` must run before `grpc` is imported; it leaves alone what the user
set (GRPC_VERBOSITY=debug and GRPC_TRACE still work for a bug hunt). Records of the
Python `grpc` loggers go to watchdog's logger at debug.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("watchdog.etcd.grpc")


class _ToWatchdog(logging.Handler):
    """Re-log a `grpc.*` record as a debug line of watchdog's logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log.debug("grpc %s: %s", record.name, record.getMessage())
        except Exception:  # a logging handler must never raise into the caller
            self.handleError(record)


def quiet_grpc_core() -> None:
    """Silence the C core unless the user asked for its logs; route Python grpc logs."""
    if "GRPC_VERBOSITY" not in os.environ:
        os.environ["GRPC_VERBOSITY"] = "NONE"
    os.environ.setdefault("GRPC_TRACE", "")
    grpc_logger = logging.getLogger("grpc")
    if not any(isinstance(h, _ToWatchdog) for h in grpc_logger.handlers):
        grpc_logger.addHandler(_ToWatchdog())
        grpc_logger.propagate = False
