"""Delivers stored events to every enabled reporter, with retries and backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any, Dict, List, Mapping

from .reporters import Reporter, ReporterError
from .store import Delivery, EventStore

LOG = logging.getLogger("guest_ha.controller.dispatch")


class ReporterStats:
    """Per-reporter counters and latency for status and Prometheus metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: Dict[str, int] = defaultdict(int)
        self.errors: Dict[str, int] = defaultdict(int)
        self.latency_sum: Dict[str, float] = defaultdict(float)
        self.last_error: Dict[str, str] = {}

    def record(self, reporter: str, seconds: float, error: str = "") -> None:
        with self.lock:
            if error:
                self.errors[reporter] += 1
                self.last_error[reporter] = error
            else:
                self.sent[reporter] += 1
                self.latency_sum[reporter] += seconds


class Dispatcher:
    def __init__(
        self,
        store: EventStore,
        reporters: Mapping[str, Reporter],
        owner: str,
        *,
        workers: int = 4,
        lease_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.store = store
        self.reporters = dict(reporters)
        self.owner = owner
        self.workers = workers
        self.lease_s = lease_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.stats = ReporterStats()
        self._wake = threading.Condition()
        self._generation = 0
        self._running = False
        self._threads: List[threading.Thread] = []

    def start(self) -> None:
        """``workers`` threads per reporter: a slow reporter never delays another."""
        self._running = True
        for name in self.reporters:
            for i in range(self.workers):
                t = threading.Thread(
                    target=self._work, args=(name,), name=f"dispatch-{name}-{i}", daemon=True
                )
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self._running = False
        self.wake()
        for t in self._threads:
            t.join(timeout=5)

    def wake(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def _sleep(self, seconds: float, seen: int) -> None:
        """Wait up to ``seconds`` unless a wake-up came after generation ``seen``."""
        with self._wake:
            if self._generation == seen:
                self._wake.wait(timeout=seconds)

    def _work(self, reporter: str) -> None:
        while self._running:
            seen = self._generation  # read before claiming: no wake-up can be missed
            try:
                batch = self.store.claim(self.owner, self.lease_s, limit=1, reporter=reporter)
            except Exception:
                LOG.exception("cannot claim deliveries")
                self._sleep(1.0, seen)
                continue
            if not batch:
                due = self.store.next_due()
                delay = 0.5 if due is None else min(0.5, max(0.0, due - time.time()))
                self._sleep(delay if delay > 0 else 0.01, seen)
                continue
            for delivery in batch:
                self._deliver(delivery)
            self.wake()  # a completed delivery may unblock the instance's next one

    def _deliver(self, delivery: Delivery) -> None:
        reporter = self.reporters.get(delivery.reporter)
        event = delivery.event
        if reporter is None:
            self.store.retry(delivery, "reporter not enabled on this controller", 5.0)
            return
        started = time.monotonic()
        try:
            reporter.report(event)
        except ReporterError as exc:
            self.stats.record(delivery.reporter, time.monotonic() - started, str(exc))
            if exc.retryable:
                delay = min(self.backoff_max_s, self.backoff_initial_s * 2**delivery.attempts)
                LOG.warning(
                    "[instance %s] %s report of %s failed (attempt %d, retry in %.1f s): %s",
                    event.get("instance_uuid"),
                    delivery.reporter,
                    event.get("kind"),
                    delivery.attempts + 1,
                    delay,
                    exc,
                )
                self.store.retry(delivery, str(exc), delay)
            else:
                LOG.error(
                    "[instance %s] %s report of %s failed permanently: %s",
                    event.get("instance_uuid"),
                    delivery.reporter,
                    event.get("kind"),
                    exc,
                )
                self.store.give_up(delivery, str(exc))
            return
        except Exception as exc:  # a reporter bug must not lose the event: retry later
            LOG.exception(
                "[instance %s] %s reporter crashed", event.get("instance_uuid"), delivery.reporter
            )
            self.stats.record(delivery.reporter, time.monotonic() - started, repr(exc))
            self.store.retry(delivery, repr(exc), self.backoff_max_s)
            return
        self.stats.record(delivery.reporter, time.monotonic() - started)
        self.store.complete(delivery)

    def snapshot(self) -> Dict[str, Any]:
        with self.stats.lock:
            return {
                name: {
                    "sent": self.stats.sent[name],
                    "errors": self.stats.errors[name],
                    "mean_latency_ms": round(
                        1000 * self.stats.latency_sum[name] / self.stats.sent[name], 2
                    )
                    if self.stats.sent[name]
                    else None,
                    "last_error": self.stats.last_error.get(name),
                }
                for name in self.reporters
            }
