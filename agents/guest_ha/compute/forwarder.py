"""Forwards events to the controllers without ever losing one.

:class:`ForwardingSink` is the engine's event sink: it writes each event to the
durable :class:`~guest_ha.compute.spool.Spool` (in the engine thread; only a
few events per second at most) and a sender thread delivers the spool in
order, removing an entry only when a controller has acknowledged it. After an
agent restart or a broker outage, the spool is simply replayed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Optional

from .sinks import VmEvent
from .spool import Spool, SpoolFull

LOG = logging.getLogger("guest_ha.compute.forwarder")

Send = Callable[[Dict[str, Any]], Dict[str, Any]]
"""Delivers one event to a controller and returns its acknowledgement; raises
on failure (any exception means "not acknowledged, try again later")."""


class ForwardingSink:
    def __init__(
        self,
        spool: Spool,
        send: Send,
        compute_host: str,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        status: Optional[Callable[[int], None]] = None,
        status_interval_s: float = 30.0,
    ) -> None:
        self.spool = spool
        self.send = send
        self.compute_host = compute_host
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.status = status
        """Reports this agent's spool depth to a controller (for its metrics)."""
        self.status_interval_s = status_interval_s
        self._next_status = 0.0
        self.sent = 0
        self.failures = 0
        self.last_error: Optional[str] = None
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()

    def emit(self, event: VmEvent) -> None:
        body = event.to_dict()
        body["compute_host"] = self.compute_host
        try:
            entry = self.spool.append(body)
        except SpoolFull:
            LOG.critical(
                "[instance %s] spool full: %s event NOT stored", event.instance_uuid, event.kind
            )
            raise
        LOG.debug("[instance %s] spooled %s as %s", event.instance_uuid, event.kind, entry.key)
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        self._thread.join(timeout=10)

    def _maybe_report_status(self) -> None:
        now = time.monotonic()
        if self.status is None or now < self._next_status:
            return
        self._next_status = now + self.status_interval_s
        try:
            self.status(self.spool.depth)
        except Exception as exc:  # best effort: the spool itself is what matters
            LOG.debug("spool depth not reported: %s", exc)

    def _wait(self, seconds: Optional[float]) -> None:
        with self._cond:
            if self._running:
                self._cond.wait(timeout=seconds)

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while self._running:
            self._maybe_report_status()
            entry = self.spool.oldest()
            if entry is None:
                self._wait(self.status_interval_s if self.status else None)
                continue
            try:
                ack = self.send(entry.event)
                if not isinstance(ack, dict) or ack.get("key") != entry.key:
                    raise RuntimeError(f"unexpected acknowledgement {ack!r}")
            except Exception as exc:
                self.failures += 1
                if self.last_error != str(exc):
                    LOG.warning(
                        "[instance %s] %s not acknowledged yet (%d spooled): %s",
                        entry.event.get("instance_uuid"),
                        entry.event.get("kind"),
                        self.spool.depth,
                        exc,
                    )
                self.last_error = str(exc)
                self._wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            if self.last_error is not None:
                LOG.info("controller reachable again; %d event(s) to replay", self.spool.depth)
                self.last_error = None
            backoff = self.backoff_initial_s
            self.spool.ack(entry)
            self.sent += 1
