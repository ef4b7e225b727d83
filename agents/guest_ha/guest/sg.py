"""Server group relay: the ``server_group`` application between the host and guest apps.

The daemon is the only process that may hold the virtio port, so apps reach the
server group through the app API socket (:mod:`guest_ha.guest.apps`). This
module adds the ``sg_*`` ops to an :class:`AppServer` and turns the validated
server_group PDUs that :meth:`GuestChannel.next_items` hands out (``HostPdu``)
into replies and pushes:

* ``sg_subscribe`` / ``sg_unsubscribe``: one connection at a time owns the
  server group role. It receives host ``broadcast``, ``notification`` and
  ``nack`` PDUs as pushes. A second subscriber is refused while the owner is
  connected; when the owner's connection closes the role is free again.
* ``sg_broadcast {data}``: validated with the protocol core's own rules
  (``make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=...)``), rate limited
  locally, queued for the host. Any connection may send, owner or not.
* ``sg_status {timeout_ms?}``: one ``status_query`` with a daemon-chosen ``seq``;
  the deferred reply lists the ``status_response`` objects received until
  ``status_response_done``. Queries go to the host one at a time (others queue,
  their time limit running), so a ``nack`` of ``status_query``, which carries no
  ``seq``, always names the query in flight.

Nothing here does I/O itself, and no clock is read: ``now`` is passed in.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from ..protocol.channel import GuestChannel
from ..protocol.envelope import SERVER_GROUP
from ..protocol.errors import ProtocolError
from ..protocol.messages import (
    GUEST_TO_HOST,
    MAX_BROADCAST_BYTES,
    MAX_SEQ,
    Message,
    json_size_bytes,
    make,
)
from ..protocol.ratelimit import TokenBucket
from .apps import DEFER, ApiError, AppServer, Client

DEFAULT_STATUS_TIMEOUT_S = 5.0
MIN_STATUS_TIMEOUT_MS = 100
MAX_STATUS_TIMEOUT_MS = 60000
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100.0
MAX_STATUS_REPLY_BYTES = 192 * 1024
"""Member objects kept for one status reply; more are dropped (``truncated``)."""
MAX_QUEUED_STATUS = 64

# Error codes of sg_* replies (the ``code`` field), for clients to act on.
E_INVALID = "invalid"
E_TOO_LARGE = "too_large"
E_NO_HOST = "no_host"
E_RATE_LIMITED = "rate_limited"
E_BUSY = "busy"
E_OWNER_TAKEN = "owner_taken"
E_NOT_OWNER = "not_owner"
E_NACKED = "nacked"
E_TIMEOUT = "timeout"

COUNTER_NAMES = (
    "broadcasts_sent",
    "status_queries_sent",
    "broadcasts_received",
    "notifications_received",
    "nacks_received",
    "status_responses_received",
    "status_responses_stale",
    "status_responses_truncated",
    "status_timeouts",
    "dropped_no_owner",
    "rate_limited",
    "refused",
)


def nack_code(log_msg: str) -> str:
    """The error code of a nack's ``log_msg`` (the text before the first ``": "``)."""
    code, sep, _rest = log_msg.partition(": ")
    return code if sep else log_msg.strip() or "unknown"


@dataclass
class _Waiter:
    """One app waiting for a status reply."""

    client: Optional[Client]
    deadline: float
    timeout_ms: int


@dataclass
class _Query:
    """The status query in flight on the channel."""

    seq: int
    waiter: _Waiter
    sent_at: float
    members: List[Dict[str, Any]] = field(default_factory=list)
    size: int = 0
    truncated: bool = False


class ServerGroupRelay:
    """Relays the server_group application between the channel and app clients."""

    def __init__(
        self,
        channel: GuestChannel,
        server: AppServer,
        log: logging.Logger,
        now: float,
        *,
        host_connected: Callable[[], bool],
        status_timeout_s: float = DEFAULT_STATUS_TIMEOUT_S,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        first_seq: Optional[int] = None,
    ) -> None:
        self.channel = channel
        self.server = server
        self.log = log
        self.host_connected = host_connected
        self.status_timeout_s = status_timeout_s
        self._bucket = TokenBucket(rate, burst, now)
        self._rate = (rate, burst)
        self._next_seq = random.randrange(1, 2**31) if first_seq is None else first_seq
        self.owner: Optional[Client] = None
        self.inflight: Optional[_Query] = None
        self.queued: Deque[_Waiter] = deque()
        self.counters: Dict[str, int] = {name: 0 for name in COUNTER_NAMES}
        self._was_connected = False
        server.add_op("sg_subscribe", self._op_subscribe)
        server.add_op("sg_unsubscribe", self._op_unsubscribe)
        server.add_op("sg_broadcast", self._op_broadcast)
        server.add_op("sg_status", self._op_status)
        server.add_client_gone_hook(self.client_gone)

    # -- app API ops ---------------------------------------------------------------------
    def _op_subscribe(self, client: Client, req: Dict[str, Any], now: float) -> Dict[str, Any]:
        owner = self.owner
        if owner is not None and owner is not client and owner.alive:
            self.counters["refused"] += 1
            raise ApiError(
                f"the server group role is owned by another app ({owner.describe()}); "
                "only one app per guest may subscribe",
                E_OWNER_TAKEN,
                owner_pid=owner.pid,
            )
        if owner is not client:
            self.owner = client
            self.log.info("server group: %s subscribed", client.describe())
        return {"subscribed": True, "host_connected": bool(self.host_connected())}

    def _op_unsubscribe(self, client: Client, req: Dict[str, Any], now: float) -> Dict[str, Any]:
        if self.owner is not client:
            raise ApiError("this connection is not subscribed", E_NOT_OWNER)
        self.owner = None
        self.log.info("server group: %s unsubscribed", client.describe())
        return {"subscribed": False}

    def _op_broadcast(self, client: Client, req: Dict[str, Any], now: float) -> Dict[str, Any]:
        if "data" not in req:
            raise ApiError("sg_broadcast needs a data field (any JSON value)", E_INVALID)
        data = req["data"]
        size = len(json_size_bytes(data))
        if size > MAX_BROADCAST_BYTES:
            raise ApiError(
                f"data is {size} bytes (compact UTF-8 JSON), over the "
                f"{MAX_BROADCAST_BYTES}-byte limit",
                E_TOO_LARGE,
                limit=MAX_BROADCAST_BYTES,
                size=size,
            )
        try:
            msg = make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=data)
        except ProtocolError as exc:
            raise ApiError(f"data rejected: {exc.message}", E_INVALID) from None
        self._send(msg, now)
        self.counters["broadcasts_sent"] += 1
        return {"bytes": size}

    def _op_status(self, client: Client, req: Dict[str, Any], now: float) -> Any:
        timeout_ms = req.get("timeout_ms")
        if timeout_ms is None:
            timeout_ms = int(self.status_timeout_s * 1000)
        elif (
            not isinstance(timeout_ms, int)
            or isinstance(timeout_ms, bool)
            or not MIN_STATUS_TIMEOUT_MS <= timeout_ms <= MAX_STATUS_TIMEOUT_MS
        ):
            raise ApiError(
                f"timeout_ms must be an integer between {MIN_STATUS_TIMEOUT_MS} and "
                f"{MAX_STATUS_TIMEOUT_MS}",
                E_INVALID,
            )
        self._check_host()
        if len(self.queued) >= MAX_QUEUED_STATUS:
            raise ApiError("too many status queries waiting", E_BUSY)
        self._take_token(now, "status_query")
        self.queued.append(_Waiter(client, now + timeout_ms / 1000.0, timeout_ms))
        self._start_next(now)
        return DEFER

    # -- sending -------------------------------------------------------------------------
    def _check_host(self) -> None:
        if not self.host_connected():
            raise ApiError(
                "no host is connected to the channel; nothing can be sent now", E_NO_HOST
            )

    def _take_token(self, now: float, what: str) -> None:
        if not self._bucket.consume(now):
            self.counters["rate_limited"] += 1
            raise ApiError(
                f"{what} refused: over the local server group rate limit "
                f"({self._rate[0]:g}/s, burst {self._rate[1]:g})",
                E_RATE_LIMITED,
            )

    def _send(self, msg: Message, now: float) -> None:
        self._check_host()
        self._take_token(now, msg.msg_type)
        if not self.channel.queue(msg):
            raise ApiError("the channel's output buffer is full; try again", E_BUSY)

    def _start_next(self, now: float) -> None:
        """Send the next queued status query if none is in flight."""
        while self.inflight is None and self.queued:
            waiter = self.queued.popleft()
            if waiter.client is None or not waiter.client.alive:
                continue
            seq = self._next_seq
            self._next_seq = seq + 1 if seq < MAX_SEQ else 0
            msg = make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=seq)
            if not self.host_connected():
                lost = ApiError("no host is connected to the channel", E_NO_HOST)
                self._answer(waiter, lost, now)
                continue
            if not self.channel.queue(msg):
                self._answer(waiter, ApiError("the channel's output buffer is full", E_BUSY), now)
                continue
            self.counters["status_queries_sent"] += 1
            self.inflight = _Query(seq, waiter, now)

    def _answer(self, waiter: _Waiter, result: Any, now: float) -> None:
        client, waiter.client = waiter.client, None
        if client is not None and client.alive:
            self.server.complete(client, result, now)

    def _finish(self, result: Any, now: float) -> None:
        """End the query in flight with ``result`` and start the next one."""
        query, self.inflight = self.inflight, None
        if query is not None:
            self._answer(query.waiter, result, now)
        self._start_next(now)

    # -- input from the host -------------------------------------------------------------
    def handle(self, msg: Message, now: float) -> None:
        """Handle one server_group PDU the channel received from the host."""
        handler = getattr(self, "_rx_" + msg.msg_type, None)
        if handler is None:  # a PDU type added to the table later: ignore it
            self.log.debug("server group: ignoring %s from the host", msg.msg_type)
            return
        handler(msg, now)

    def _rx_status_response(self, msg: Message, now: float) -> None:
        query = self.inflight
        if query is None or msg["seq"] != query.seq:
            self.counters["status_responses_stale"] += 1
            return
        self.counters["status_responses_received"] += 1
        size = len(json_size_bytes(msg["data"]))
        if query.size + size > MAX_STATUS_REPLY_BYTES:
            query.truncated = True
            self.counters["status_responses_truncated"] += 1
            return
        query.size += size
        query.members.append(msg["data"])

    def _rx_status_response_done(self, msg: Message, now: float) -> None:
        query = self.inflight
        if query is None or msg["seq"] != query.seq:
            self.counters["status_responses_stale"] += 1
            return
        reply: Dict[str, Any] = {"seq": query.seq, "members": query.members}
        if query.truncated:
            reply["truncated"] = True
        self._finish(reply, now)

    def _rx_broadcast(self, msg: Message, now: float) -> None:
        self.counters["broadcasts_received"] += 1
        self._to_owner(
            {"push": "broadcast", "source_instance": msg["source_instance"], "data": msg["data"]}
        )

    def _rx_notification(self, msg: Message, now: float) -> None:
        self.counters["notifications_received"] += 1
        self._to_owner({"push": "notification", "data": msg["data"]})

    def _rx_nack(self, msg: Message, now: float) -> None:
        self.counters["nacks_received"] += 1
        orig, log_msg = msg["orig_msg_type"], msg["log_msg"]
        code = nack_code(log_msg)
        self.log.info("server group: host refused %s: %s", orig or "a frame", log_msg)
        if orig == "status_query" and self.inflight is not None:
            self._finish(
                ApiError(
                    f"the host refused the status query: {log_msg}",
                    E_NACKED,
                    nack_code=code,
                    log_msg=log_msg,
                ),
                now,
            )
        self._to_owner({"push": "nack", "orig_msg_type": orig, "log_msg": log_msg, "code": code})

    def _to_owner(self, push: Dict[str, Any]) -> None:
        owner = self.owner
        if owner is None or not owner.alive or not self.server.push(owner, push):
            self.counters["dropped_no_owner"] += 1

    # -- time, host state and clients ----------------------------------------------------
    def tick(self, now: float) -> None:
        """Time out status queries; notice the host going away."""
        connected = bool(self.host_connected())
        if self._was_connected and not connected:
            self._host_lost(now)
        self._was_connected = connected
        query = self.inflight
        if query is not None and now >= query.waiter.deadline:
            self.counters["status_timeouts"] += 1
            got = len(query.members)
            self._finish(
                ApiError(
                    f"no complete status answer within {query.waiter.timeout_ms} ms "
                    f"({got} member(s) received)",
                    E_TIMEOUT,
                    members=query.members,
                ),
                now,
            )
        if self.queued and now >= min(w.deadline for w in self.queued):
            keep: Deque[_Waiter] = deque()
            for waiter in self.queued:
                if now >= waiter.deadline:
                    self.counters["status_timeouts"] += 1
                    self._answer(
                        waiter,
                        ApiError(
                            f"status query timed out after {waiter.timeout_ms} ms waiting "
                            "for an earlier query",
                            E_TIMEOUT,
                            members=[],
                        ),
                        now,
                    )
                else:
                    keep.append(waiter)
            self.queued = keep

    def _host_lost(self, now: float) -> None:
        lost = ApiError("the host disconnected from the channel", E_NO_HOST)
        waiters = list(self.queued)
        self.queued.clear()
        query, self.inflight = self.inflight, None
        if query is not None:
            self._answer(query.waiter, lost, now)
        for waiter in waiters:
            self._answer(waiter, lost, now)

    def next_deadline(self) -> Optional[float]:
        times = [w.deadline for w in self.queued]
        if self.inflight is not None:
            times.append(self.inflight.waiter.deadline)
        return min(times) if times else None

    def client_gone(self, client: Client, now: float) -> None:
        if self.owner is client:
            self.owner = None
            self.log.info("server group: owner %s went away", client.describe())
        # A query in flight stays until answered or timed out, so that a late nack
        # or response is not taken for the next query's.
        if self.inflight is not None and self.inflight.waiter.client is client:
            self.inflight.waiter.client = None
        self.queued = deque(w for w in self.queued if w.client is not client)

    def status(self, now: float) -> Dict[str, Any]:
        owner = self.owner
        query = self.inflight
        return {
            "owner": (
                {"client": owner.id, "pid": owner.pid, "pushes_dropped": owner.pushes_dropped}
                if owner is not None and owner.alive
                else None
            ),
            "host_connected": bool(self.host_connected()),
            "status_query_in_flight": query.seq if query is not None else None,
            "status_queries_waiting": len(self.queued),
            "rate_per_s": self._rate[0],
            "burst": self._rate[1],
            "counters": dict(self.counters),
        }
