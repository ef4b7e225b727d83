"""Best-effort datagrams between guest-ha nodes, for server-group traffic only.

A deliberate deviation from oslo.messaging (docs/messaging.md, "Server-group
datagrams"). ``sg_relay_batch`` (compute agent -> controllers) and
``sg_deliver`` (controller -> one compute agent) are best effort by design: a
lost one is a lost broadcast, which the HLD allows. Through oslo.messaging
every such cast costs a publisher confirm round trip, a listener thread
hand-off and a thread-pool dispatch; at 500 broadcasts/s that was most of the
path's CPU (docs/benchmarks.md, issue 16). Here they go straight over AMQP on
the same broker, vhost and credentials as the RPC transport:

- one exchange ``<controller_topic>_datagrams`` (direct, transient);
- queue ``<controller_topic>.datagrams`` shared by the controllers (each
  message goes to one of them), queue ``<compute_topic_prefix>.datagrams.<host>``
  per compute agent, each declared by its consumer only (nobody consuming:
  the broker drops the datagram); bounded (``x-max-length``, oldest dropped
  first), transient, datagrams older than ``MESSAGE_TTL_MS`` dropped, a queue
  left unconsumed for ``QUEUE_EXPIRES_MS`` deleted;
- transient messages, no publisher confirms, no consumer acks, one JSON body
  ``{"method": ..., "args": {...}}`` of at most ``MAX_BODY_BYTES``, handled on
  the receiving thread itself;
- every message carries the AMQP ``user_id`` of its connection, which RabbitMQ
  validates (``identity.py``): the receiver hands the handler the broker-vouched
  sender, never a name from the body.

Fault reports, ``vm_states`` and everything else stay on oslo.messaging, with
their spool, acks and retries.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import amqp

from ..runtime import RateLimitedLog

LOG = logging.getLogger("guest_ha.messaging.datagrams")

#: Largest body sent or accepted: a full ``sg_deliver`` (256 PDUs of at most
#: ~3.3 KB) fits with room; anything bigger is dropped and logged.
MAX_BODY_BYTES = 1 << 20
#: Most messages a datagram queue holds; beyond it the oldest are dropped.
MAX_QUEUE_LENGTH = 10_000
#: A queue that nobody consumed for this long is deleted (a gone host's queue).
QUEUE_EXPIRES_MS = 600_000
#: A datagram older than this is dropped unread: after an outage, stale
#: broadcasts are not replayed to guests.
MESSAGE_TTL_MS = 30_000
#: Waits between reconnection attempts (seconds), doubling up to the last.
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0)
CONNECT_TIMEOUT_S = 5.0
#: AMQP heartbeat of receiving connections: a dead broker is noticed within ~2x.
RECEIVER_HEARTBEAT_S = 30

Handler = Callable[[str, Dict[str, Any], Optional[str]], None]
"""``handler(method, args, sender_user)``; ``sender_user`` is broker-validated (or None)."""


class DatagramError(Exception):
    """A datagram was not handed to the broker."""


# -- names ---------------------------------------------------------------------------


def exchange_name(controller_topic: str) -> str:
    return f"{controller_topic}_datagrams"


def controller_queue(controller_topic: str) -> str:
    """The queue every controller consumes (each datagram goes to one of them)."""
    return f"{controller_topic}.datagrams"


def compute_queue(compute_topic_prefix: str, host: str) -> str:
    """The queue only ``host``'s agent consumes."""
    return f"{compute_topic_prefix}.datagrams.{host}"


# -- broker addresses ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BrokerAddress:
    """One broker of the transport URL, as py-amqp wants it."""

    host: str
    port: int
    userid: str
    password: str
    vhost: str
    ssl: Any

    def __repr__(self) -> str:  # never the password
        return f"{self.userid}@{self.host}:{self.port}{self.vhost}"


def broker_addresses(conf: Any, url: Optional[str] = None) -> List[BrokerAddress]:
    """The brokers of ``url`` (default ``[DEFAULT] transport_url``), in failover order.

    Same parsing as oslo.messaging (``TransportURL``), same TLS setting
    (``[oslo_messaging_rabbit] ssl``, with its CA and client certificate).
    """
    import oslo_messaging

    parsed = oslo_messaging.TransportURL.parse(conf, url)
    if parsed.transport not in ("rabbit", "amqp", "kombu"):
        raise ValueError(
            f"server-group datagrams need a RabbitMQ transport_url, not {parsed.transport!r}"
        )
    vhost = parsed.virtual_host or "/"
    ssl = _ssl_options(conf)
    hosts = parsed.hosts or [None]
    out = []
    for h in hosts:
        out.append(
            BrokerAddress(
                host=(h.hostname if h else None) or "localhost",
                port=int((h.port if h else None) or (5671 if ssl else 5672)),
                userid=(h.username if h else None) or "guest",
                password=(h.password if h else None) or "guest",
                vhost=vhost,
                ssl=ssl,
            )
        )
    return out


def _ssl_options(conf: Any) -> Any:
    rabbit = getattr(conf, "oslo_messaging_rabbit", None)
    if rabbit is None or not getattr(rabbit, "ssl", False):
        return False
    options: Dict[str, Any] = {}
    if rabbit.ssl_ca_file:
        options["ca_certs"] = rabbit.ssl_ca_file
        options["cert_reqs"] = 2  # ssl.CERT_REQUIRED
    if rabbit.ssl_cert_file:
        options["certfile"] = rabbit.ssl_cert_file
    if rabbit.ssl_key_file:
        options["keyfile"] = rabbit.ssl_key_file
    return options or True


# -- connections ---------------------------------------------------------------------


class _Link:
    """One AMQP connection and channel, reopened on demand after a failure
    (not sooner than the next delay of ``RECONNECT_DELAYS_S``)."""

    def __init__(self, brokers: List[BrokerAddress], exchange: str, heartbeat: int) -> None:
        if not brokers:
            raise ValueError("no broker address")
        self.brokers = brokers
        self.exchange = exchange
        self.heartbeat = heartbeat
        self.conn: Optional[amqp.Connection] = None
        self.channel: Any = None
        self.user: Optional[str] = None
        self._failures = 0
        self._next_attempt = 0.0
        self._turn = 0

    def open(self) -> bool:
        """Connected (reconnecting if due); False while the broker is unreachable."""
        if self.channel is not None:
            return True
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        broker = self.brokers[self._turn % len(self.brokers)]
        self._turn += 1
        try:
            conn = amqp.Connection(
                host=f"{broker.host}:{broker.port}",
                userid=broker.userid,
                password=broker.password,
                virtual_host=broker.vhost,
                ssl=broker.ssl,
                connect_timeout=CONNECT_TIMEOUT_S,
                heartbeat=self.heartbeat,
            )
            conn.connect()
            channel = conn.channel()
            channel.exchange_declare(self.exchange, "direct", durable=False, auto_delete=False)
        except Exception as exc:
            self._failed(f"cannot connect to {broker!r}: {exc}")
            return False
        self.conn, self.channel, self.user = conn, channel, broker.userid
        if self._failures:
            LOG.info("datagram connection to %r open again", broker)
        self._failures = 0
        return True

    def _failed(self, why: str) -> None:
        delay = RECONNECT_DELAYS_S[min(self._failures, len(RECONNECT_DELAYS_S) - 1)]
        self._failures += 1
        self._next_attempt = time.monotonic() + delay
        if self._failures in (1, 10) or self._failures % 100 == 0:
            LOG.warning("%s (attempt %d; next in %.1f s)", why, self._failures, delay)

    def broken(self, why: str) -> None:
        """Drop the connection after an error; the next ``open()`` reconnects."""
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None:
            try:
                conn.collect()  # free the socket without talking to a broken peer
            except Exception:
                pass
        self._failed(why)

    def close(self) -> None:
        conn, self.conn, self.channel = self.conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass


#: Arguments of every datagram queue (a redeclaration must repeat them exactly).
QUEUE_ARGUMENTS = {
    "x-max-length": MAX_QUEUE_LENGTH,
    "x-expires": QUEUE_EXPIRES_MS,
    "x-message-ttl": MESSAGE_TTL_MS,
}


class DatagramSender:
    """Publishes datagrams on one connection (thread-safe; meant for one sending
    thread, so the lock is uncontended)."""

    def __init__(self, brokers: List[BrokerAddress], exchange: str) -> None:
        # No heartbeat: a sender may sit idle for hours; a dead connection shows
        # as a failed publish, which drops that datagram and reconnects.
        self._link = _Link(brokers, exchange, heartbeat=0)
        self._lock = threading.Lock()
        self.sent = 0

    def send(self, routing_key: str, method: str, args: Mapping[str, Any]) -> None:
        """Hand one datagram to the broker; ``DatagramError`` if it was not."""
        body = json.dumps({"method": method, "args": args}, separators=(",", ":")).encode()
        if len(body) > MAX_BODY_BYTES:
            raise DatagramError(f"{method}: {len(body)} bytes is over {MAX_BODY_BYTES}")
        link = self._link
        with self._lock:
            if not link.open():
                raise DatagramError(f"{method}: broker unreachable")
            message = amqp.Message(
                body,
                content_type="application/json",
                delivery_mode=1,  # transient
                user_id=link.user,  # validated by RabbitMQ (identity.py)
            )
            try:
                link.channel.basic_publish(message, exchange=link.exchange, routing_key=routing_key)
            except Exception as exc:
                link.broken(f"datagram publish failed: {exc}")
                raise DatagramError(f"{method}: {exc}") from exc
            self.sent += 1

    def close(self) -> None:
        with self._lock:
            self._link.close()

    stop = close  # the controller stops it with its router's listeners


class DatagramReceiver:
    """Consumes one datagram queue on its own thread and calls ``handler`` for each
    datagram whose method is in ``methods``; everything else is dropped and logged.

    The handler runs on the receiving thread: it must not block for long.
    """

    def __init__(
        self,
        brokers: List[BrokerAddress],
        exchange: str,
        queue: str,
        methods: Iterable[str],
        handler: Handler,
        *,
        name: str = "datagrams",
        heartbeat_s: int = RECEIVER_HEARTBEAT_S,
    ) -> None:
        self._link = _Link(brokers, exchange, heartbeat=heartbeat_s)
        self.queue = queue
        self.methods = frozenset(methods)
        self.handler = handler
        self.received = 0
        self.dropped = 0
        #: Times the connection was lost after it had been consuming.
        self.connection_losses = 0
        self.consuming = threading.Event()
        self._stop = threading.Event()
        self._rlog = RateLimitedLog(LOG, 10.0)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "DatagramReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._link.close()

    def _subscribe(self) -> bool:
        link = self._link
        if not link.open():
            return False
        try:
            link.channel.queue_declare(
                self.queue,
                durable=False,
                auto_delete=False,
                arguments=dict(QUEUE_ARGUMENTS),
            )
            link.channel.queue_bind(self.queue, link.exchange, routing_key=self.queue)
            link.channel.basic_consume(self.queue, no_ack=True, callback=self._on_message)
        except Exception as exc:
            link.broken(f"cannot consume {self.queue}: {exc}")
            return False
        self.consuming.set()
        LOG.debug("consuming datagrams on %s", self.queue)
        return True

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stop.is_set():
            if self._link.channel is None and not self._subscribe():
                self._stop.wait(0.2)
                continue
            conn: Any = self._link.conn
            try:
                try:
                    conn.drain_events(timeout=1.0)
                except socket.timeout:
                    pass
                # About once a second, busy or idle: a no_ack consumer sends the
                # broker nothing else, so without our heartbeats it would close
                # the connection under steady traffic.
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + 1.0
                    conn.heartbeat_tick()
            except Exception as exc:
                if not self._stop.is_set():
                    self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        self.consuming.clear()
        self.connection_losses += 1
        self._link.broken(f"datagram connection lost: {exc}")

    def _on_message(self, message: Any) -> None:
        self.received += 1
        parsed = self._parse(message)
        if parsed is None:
            return
        method, args, user = parsed
        try:
            self.handler(method, args, user)
        except Exception as exc:  # a bad datagram must never stop the receiver
            self._drop("handler", "datagram %s from %r failed: %r", method, user, exc)
            LOG.debug("datagram %s from %r failed", method, user, exc_info=True)

    def _parse(self, message: Any) -> Optional[Tuple[str, Dict[str, Any], Optional[str]]]:
        user = message.properties.get("user_id")
        if isinstance(user, bytes):
            user = user.decode("utf-8", "replace")
        user = user if isinstance(user, str) and user else None
        body = message.body
        if len(body) > MAX_BODY_BYTES:
            self._drop("size", "datagram of %d bytes from %r dropped", len(body), user)
            return None
        try:
            decoded = json.loads(body)
        except ValueError:
            self._drop("json", "undecodable datagram from %r dropped", user)
            return None
        method = decoded.get("method") if isinstance(decoded, dict) else None
        args = decoded.get("args") if isinstance(decoded, dict) else None
        if method not in self.methods or not isinstance(args, dict):
            self._drop("method", "datagram %.40r from %r dropped: not served here", method, user)
            return None
        return method, args, user

    def _drop(self, key: str, fmt: str, *args: Any) -> None:
        self.dropped += 1
        self._rlog(logging.WARNING, key, fmt, *args)


# -- what the agents use -------------------------------------------------------------


class Datagrams:
    """The server-group datagram plumbing of one deployment (names from ``[guest_ha]``)."""

    def __init__(self, conf: Any, url: Optional[str] = None) -> None:
        opts = conf.guest_ha
        self.brokers = broker_addresses(conf, url)
        self.exchange = exchange_name(opts.controller_topic)
        self.controller_queue = controller_queue(opts.controller_topic)
        self._compute_prefix = opts.compute_topic_prefix

    def compute_queue(self, host: str) -> str:
        return compute_queue(self._compute_prefix, host)

    def sender(self) -> DatagramSender:
        return DatagramSender(self.brokers, self.exchange)

    def receiver(
        self, queue: str, endpoint: Any, methods: Iterable[str], name: str
    ) -> DatagramReceiver:
        """A receiver that calls ``endpoint.<method>(ctxt, **args)`` like an RPC
        server would, with the broker-validated sender in ``ctxt``."""
        return DatagramReceiver(
            self.brokers, self.exchange, queue, methods, endpoint_handler(endpoint), name=name
        )


def endpoint_handler(endpoint: Any) -> Handler:
    """Dispatch a datagram to ``endpoint.<method>(ctxt, **args)``; ``ctxt`` holds
    only the broker-validated sender (``identity.sender_user`` reads it)."""
    from .identity import BROKER_USER

    def handle(method: str, args: Dict[str, Any], user: Optional[str]) -> None:
        ctxt: Dict[str, Any] = {} if user is None else {BROKER_USER: user}
        getattr(endpoint, method)(ctxt, **args)

    return handle


class DatagramCaster:
    """``cast(method, **kwargs)`` to one queue: what ``ServerGroupRelay`` calls."""

    def __init__(self, sender: DatagramSender, routing_key: str) -> None:
        self.sender = sender
        self.routing_key = routing_key

    def cast(self, method: str, **kwargs: Any) -> None:
        self.sender.send(self.routing_key, method, kwargs)
