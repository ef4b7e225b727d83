"""Server group messaging on the compute host: guest -> controller relay and
controller -> guest delivery.

The heartbeat loop hands each validated, rate-limited server-group PDU of an
opted-in VM to :class:`ServerGroupRelay`, which only queues it (bounded); a
thread casts it to a controller, stamped with the VM's identity from its
channel. Delivery is best effort, as the HLD says: a full queue or a broker
outage drops messages (counted and logged, rate-limited), never blocks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..messaging.payloads import SG_RELAY, SG_RELAY_BATCH, SgDelivery, SgRelayItem, SgRelayPdu
from ..protocol import Message
from ..runtime import RateLimitedLog
from .config import VmSpec

LOG = logging.getLogger("guest_ha.compute.sg")
MAX_BATCH = 64
# How long the first PDU of a batch waits for more before the cast goes out:
# one cast (one AMQP message to publish, route, consume and parse) then
# carries several PDUs. Bounds the latency added on this hop (issue 16).
LINGER_S = 0.004
# The relay lingers only while traffic is steady: when the previous cast left
# less than this long ago. A PDU after a quiet spell leaves at once.
BUSY_WINDOW_S = 0.05


class ServerGroupRelay:
    def __init__(
        self,
        client: Any,
        host: str,
        max_queue: int = 10_000,
        linger_s: float = LINGER_S,
        busy_window_s: float = BUSY_WINDOW_S,
    ) -> None:
        self.client = client
        self.linger_s = linger_s
        self.busy_window_s = busy_window_s
        self._last_cast = float("-inf")
        self.host = host
        self.relayed = 0
        self.dropped = 0
        self._queue: "queue.Queue[Optional[SgRelayItem]]" = queue.Queue(max_queue)
        self._rlog = RateLimitedLog(LOG, 5.0)
        self._thread = threading.Thread(target=self._run, name="sg-relay", daemon=True)
        self._thread.start()

    def __call__(self, spec: VmSpec, msg: Message) -> None:
        """Queue one PDU from ``spec``'s guest (called in the heartbeat loop)."""
        item: SgRelayItem = {
            "host": self.host,
            "instance_uuid": spec.uuid,
            "msg_type": msg.msg_type,
            "fields": dict(msg.fields),
            "group": spec.server_group,
        }
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop("relay queue full")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _drop(self, why: str) -> None:
        self.dropped += 1
        self._rlog(
            logging.WARNING,
            "dropped",
            "server group message dropped (%s); %d dropped so far",
            why,
            self.dropped,
        )

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, stop = self._collect(item)
            self._last_cast = time.monotonic()
            try:
                if len(batch) == 1:
                    self.client.cast(SG_RELAY, **item)
                else:
                    items: List[SgRelayPdu] = [
                        {
                            "instance_uuid": b["instance_uuid"],
                            "msg_type": b["msg_type"],
                            "fields": b["fields"],
                            "group": b["group"],
                        }
                        for b in batch
                    ]
                    self.client.cast(SG_RELAY_BATCH, host=self.host, items=items)
                self.relayed += len(batch)
            except Exception as exc:  # best effort: broker down, etc.
                self._drop(str(exc))
            if stop:
                return

    def _collect(self, first: SgRelayItem) -> Tuple[List[SgRelayItem], bool]:
        """``first`` plus whatever is queued, or arrives within ``linger_s``
        while traffic is steady (at most MAX_BATCH), and whether close() was
        called meanwhile."""
        batch = [first]
        now = time.monotonic()
        busy = now - self._last_cast < self.busy_window_s
        deadline = now + (self.linger_s if busy else 0.0)
        while len(batch) < MAX_BATCH:
            left = deadline - time.monotonic()
            try:
                more = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return batch, True
            batch.append(more)
        return batch, False


class ComputeEndpoint:
    """RPC methods the controllers call on this compute host (its per-host topic)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def sg_deliver(self, ctxt: Dict[str, Any], deliveries: List[SgDelivery]) -> None:
        if not isinstance(deliveries, list):
            return
        self.engine.post(lambda: self.engine.deliver_server_group(deliveries))

    def ping(self, ctxt: Dict[str, Any]) -> Dict[str, Any]:
        return {"vms": len(self.engine.vms)}
