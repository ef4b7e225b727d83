"""The router's outbox: deliveries per compute host, cast by one sender thread.

Bounded (``MAX_OUTBOX`` deliveries, ``MAX_CAST_ITEMS`` per cast) and paced
(casts to one host start at least ``cast_interval_s`` apart; what arrives
meanwhile leaves in that host's next cast, idle hosts get theirs at once).
Without a running sender (unit tests, before ``start()``) deliveries are cast
synchronously.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional

from ...messaging.payloads import SgDelivery

Deliveries = Dict[str, List[SgDelivery]]
"""Per compute host, the PDUs for its VMs (one ``sg_deliver`` cast each)."""


class Outbox:
    """Deliveries waiting for the sender thread, per host, in order."""

    #: Most deliveries waiting for the sender; beyond it new ones are dropped
    #: (best effort, counted and logged): a stuck broker cannot exhaust memory.
    MAX_OUTBOX = 100_000
    # One sg_deliver carries at most this many PDUs (each at most ~3.3 KB):
    # a backlog leaves as several casts of bounded size, not one huge message.
    MAX_CAST_ITEMS = 256

    def __init__(
        self,
        cast: Callable[[str, List[SgDelivery]], None],
        count: Callable[..., None],
        rlog: Callable[..., None],
        cast_interval_s: float = 0.0,
    ) -> None:
        self._cast = cast
        self.count = count
        self.rlog = rlog
        self._outbox: Dict[str, List[SgDelivery]] = {}
        self._outbox_items = 0
        self._outbox_cond = threading.Condition()
        self._sender: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self.cast_interval_s = cast_interval_s
        self._last_cast: Dict[str, float] = {}

    def start(self) -> None:
        self._sender = threading.Thread(target=self._send_loop, name="sg-sender", daemon=True)
        self._sender.start()

    def stop(self) -> None:
        """Stop the sender; what waits for its interval is cast first, not dropped."""
        self._stopping.set()
        with self._outbox_cond:
            self._outbox_cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=5)

    def send(self, deliveries: Deliveries) -> None:
        if self._sender is not None:
            self._enqueue(deliveries)
            return
        self._cast_all(deliveries)

    def _enqueue(self, deliveries: Deliveries) -> None:
        """Hand deliveries to the sender thread. While it casts (or a host's
        ``cast_interval_s`` runs), more pile up and leave together in that host's
        next cast, up to ``MAX_CAST_ITEMS`` each."""
        dropped = 0
        with self._outbox_cond:
            new_host = False
            for host, items in deliveries.items():
                room = self.MAX_OUTBOX - self._outbox_items
                if room < len(items):
                    dropped += len(items) - max(room, 0)
                    items = items[: max(room, 0)]
                if items:
                    pending = self._outbox.get(host)
                    if pending is None:
                        self._outbox[host] = pending = []
                        new_host = True
                    pending.extend(items)
                    self._outbox_items += len(items)
            if new_host:  # a host already waiting leaves when its interval is up
                self._outbox_cond.notify()
        if dropped:
            self.count("outbox_dropped", dropped)
            self.rlog(
                logging.WARNING,
                "outbox",
                "server group outbox full: %d delivery(ies) dropped",
                dropped,
            )

    def _send_loop(self) -> None:
        while True:
            with self._outbox_cond:
                while True:
                    stopping = self._stopping.is_set()
                    if not self._outbox:
                        if stopping:
                            return
                        self._outbox_cond.wait()
                        continue
                    due, wait = self._due_hosts(time.monotonic(), flush=stopping)
                    if due:
                        break
                    self._outbox_cond.wait(wait)
                batch = {host: self._take(host) for host in due}
                self._outbox_items -= sum(len(items) for items in batch.values())
            self._cast_all(batch)

    def _take(self, host: str) -> List[SgDelivery]:
        """The next cast's deliveries for ``host`` (at most MAX_CAST_ITEMS); the
        rest stays queued, in order, for the following cast."""
        items = self._outbox[host]
        if len(items) <= self.MAX_CAST_ITEMS:
            return self._outbox.pop(host)
        self._outbox[host] = items[self.MAX_CAST_ITEMS :]
        return items[: self.MAX_CAST_ITEMS]

    def _due_hosts(self, now: float, flush: bool = False) -> "tuple[List[str], float]":
        """Hosts whose next cast may start now, and else how long until one may."""
        if flush or self.cast_interval_s <= 0:
            return list(self._outbox), 0.0
        due, wait = [], self.cast_interval_s
        for host in self._outbox:
            ready_at = self._last_cast.get(host, float("-inf")) + self.cast_interval_s
            if ready_at <= now:
                due.append(host)
            else:
                wait = min(wait, ready_at - now)
        return due, wait

    def _cast_all(self, deliveries: Deliveries) -> None:
        for host, items in deliveries.items():
            self._last_cast[host] = time.monotonic()
            try:
                self._cast(host, items)
                self.count("casts")
                self.count("deliveries", len(items))
            except Exception as exc:  # best effort: the broker is down, ...
                self.count("cast_errors")
                self.rlog(
                    logging.WARNING,
                    f"cast:{host}",
                    "server group delivery to host %s dropped: %s",
                    host,
                    exc,
                )
