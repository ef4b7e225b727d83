"""Process-wide settings of the long-running agents."""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from .protocol.ratelimit import LogLimiter, suppressed_note

LOG = logging.getLogger("guest_ha.runtime")


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's view.

    oslo.messaging, kombu, keystoneauth and friends leave a few hundred thousand
    long-lived objects behind at import and start-up. Each full (generation 2)
    collection walks all of them and stops every thread for tens of
    milliseconds: that showed as the p99 of server group and fault latency.
    ``gc.freeze()`` parks them in a permanent generation, so later collections
    only look at objects made since. Objects in it are never freed, which is
    what start-up objects of a daemon are anyway.
    """
    gc.collect()
    gc.freeze()
    LOG.debug("%d start-up objects frozen out of the collector", gc.get_freeze_count())


class RateLimitedLog:
    """At most one log line per key every ``interval_s``; the rest are counted
    and the next line that passes says how many (``protocol.ratelimit.LogLimiter``
    on the monotonic clock, safe to call from any thread)."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self._limiter = LogLimiter(1.0 / interval_s, 1.0)
        self._lock = threading.Lock()

    def __call__(self, level: int, key: str, msg: str, *args: Any) -> None:
        with self._lock:
            held = self._limiter.admit(time.monotonic(), key)
        if held is not None:
            self.logger.log(level, msg + suppressed_note(held), *args)
