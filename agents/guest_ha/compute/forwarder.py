"""Forwards events to the controllers without ever losing one.

:class:`ForwardingSink` is the engine's event sink. ``emit`` only queues the
event in memory, so the heartbeat loop never waits for a disk. A spooler thread
writes each queued event to the durable :class:`~guest_ha.compute.spool.Spool`
(fsync) at once, whatever the network is doing; a sender thread sends the spool
in order, in batches, and removes entries only when a controller has
acknowledged them. After an agent restart or a broker outage the spool is
simply replayed.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from .sinks import VmEvent
from .spool import Spool, SpoolEntry, SpoolFull

LOG = logging.getLogger("guest_ha.compute.forwarder")

SendBatch = Callable[[List[Dict[str, Any]]], Dict[str, Any]]
"""Delivers events to a controller and returns its acknowledgement
``{"accepted": True, "keys": [...]}``; raises on failure (any exception means
"not acknowledged, try again later")."""

MAX_BATCH = 64


class ForwardingSink:
    def __init__(
        self,
        spool: Spool,
        send_batch: SendBatch,
        compute_host: str,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        status: Optional[Callable[[int], None]] = None,
        status_interval_s: float = 30.0,
    ) -> None:
        self.spool = spool
        self.send_batch = send_batch
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
        self._incoming: Deque[Dict[str, Any]] = collections.deque()
        self._incoming_cond = threading.Condition()
        self._send_cond = threading.Condition()
        self._running = True
        self._spooler = threading.Thread(target=self._spool_loop, name="spooler", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="forwarder", daemon=True)
        self._spooler.start()
        self._sender.start()

    # -- engine side ------------------------------------------------------------------
    def emit(self, event: VmEvent) -> None:
        body = event.to_dict()
        body["compute_host"] = self.compute_host
        with self._incoming_cond:
            self._incoming.append(body)
            self._incoming_cond.notify()

    def close(self) -> None:
        """Stop; events already emitted are spooled first (they are never dropped)."""
        self._running = False
        with self._incoming_cond:
            self._incoming_cond.notify()
        with self._send_cond:
            self._send_cond.notify()
        self._spooler.join(timeout=10)
        self._sender.join(timeout=10)
        self._spool_incoming()

    # -- spooler thread -----------------------------------------------------------------
    def _spool_loop(self) -> None:
        while self._running:
            with self._incoming_cond:
                if not self._incoming:
                    self._incoming_cond.wait(timeout=1.0)
            if self._spool_incoming():
                with self._send_cond:
                    self._send_cond.notify()

    def _spool_incoming(self) -> int:
        """Spool every queued event, in order; return how many were written."""
        written = 0
        while True:
            with self._incoming_cond:
                if not self._incoming:
                    return written
                body = self._incoming.popleft()
            try:
                self.spool.append(body)
                written += 1
            except SpoolFull:
                LOG.critical(
                    "[instance %s] spool full: %s event NOT stored",
                    body.get("instance_uuid"),
                    body.get("kind"),
                )

    # -- sender thread ----------------------------------------------------------------
    def _wait(self, seconds: Optional[float]) -> None:
        with self._send_cond:
            if self._running:
                self._send_cond.wait(timeout=seconds)

    def _maybe_report_status(self) -> None:
        now = time.monotonic()
        if self.status is None or now < self._next_status:
            return
        self._next_status = now + self.status_interval_s
        try:
            self.status(self.spool.depth)
        except Exception as exc:  # best effort: the spool itself is what matters
            LOG.debug("spool depth not reported: %s", exc)

    def _send_loop(self) -> None:
        backoff = self.backoff_initial_s
        while self._running:
            self._maybe_report_status()
            batch = self.spool.pending()[:MAX_BATCH]
            if not batch:
                self._wait(self.status_interval_s if self.status else 1.0)
                continue
            try:
                self._send(batch)
            except Exception as exc:
                self.failures += 1
                if self.last_error != str(exc):
                    LOG.warning(
                        "%d event(s) not acknowledged yet (%d spooled): %s",
                        len(batch),
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

    def _send(self, batch: List[SpoolEntry]) -> None:
        ack = self.send_batch([entry.event for entry in batch])
        keys = ack.get("keys") if isinstance(ack, dict) else None
        if not isinstance(ack, dict) or not ack.get("accepted") or not isinstance(keys, list):
            raise RuntimeError(f"unexpected acknowledgement {ack!r}")
        acked = set(keys)
        rejected = ack.get("rejected")
        if isinstance(rejected, list) and rejected:
            LOG.error(
                "controller rejected %d report(s) as not from this host's VMs "
                "(report origin check): %s",
                len(rejected),
                ", ".join(str(k) for k in rejected[:5]),
            )
        # Acknowledgements are per key; anything not acknowledged stays spooled.
        for entry in batch:
            if entry.key in acked:
                self.spool.ack(entry)
                self.sent += 1
        if not {e.key for e in batch} <= acked:
            raise RuntimeError("controller acknowledged only part of the batch")
