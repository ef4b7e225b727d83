"""Thin, typed wrappers around oslo.messaging for guest-ha's two RPC directions.

- compute agent -> controller: ``ControllerClient.report(event)`` is an RPC
  *call* of ``report_event(event=...)`` on topic ``[guest_ha] controller_topic``;
  whichever running controller takes it answers with its ack dict.
- controller -> compute agents: ``ComputeClient.cast_to_host(host, ...)`` reaches
  the one agent consuming ``<compute_topic_prefix>.<host>``;
  ``ComputeClient.fanout(...)`` reaches every agent.
- notifications: ``notifier()`` gives an ``oslo_messaging.Notifier`` (driver
  ``messagingv2``); ``publish()`` sends through it and raises when it was not sent.

Everything runs on ordinary threads: servers use oslo.messaging's ``threading``
executor (``eventlet`` monkey-patching is refused).  Failures become
``MessagingError`` subclasses so callers can spool and retry:

- ``RpcTimeout``: no answer within the timeout (no controller consuming, a
  controller died mid-call, the reply was lost in a broker restart);
- ``TransportUnavailable``: the broker could not be reached after
  ``[guest_ha] rpc_connect_retries`` reconnection attempts;
- ``RemoteError``: the endpoint raised; ``exc_type`` and ``value`` say what.

A call never waits forever: connection attempts are bounded by
``rpc_connect_retries`` (oslo.messaging's own default, ``retry=None``, retries
forever) and the answer by ``timeout``.  See ``docs/messaging.md`` for the
measured behaviour with the broker down.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import oslo_messaging

from guest_ha.messaging.identity import rpc_server, stamp_user_id
from guest_ha.messaging.options import configure
from guest_ha.messaging.payloads import REPORT_EVENT

LOG = logging.getLogger(__name__)

# The loggers oslo.messaging 18.x uses to report (and swallow) a failed notification.
_NOTIFY_FAILURE_LOGGERS = ("oslo_messaging.notify.notifier", "oslo_messaging.notify.messaging")


class MessagingError(Exception):
    """Base of every transport failure raised by ``guest_ha.messaging``."""


class RpcTimeout(MessagingError):
    """No answer within the call's timeout."""


class TransportUnavailable(MessagingError):
    """The broker could not be reached (after the configured retries)."""


class RemoteError(MessagingError):
    """The remote endpoint raised ``exc_type``."""

    def __init__(self, exc_type: str, value: str, traceback: str = "") -> None:
        super().__init__(f"{exc_type}: {value}")
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    try:
        yield
    except oslo_messaging.MessagingTimeout as exc:
        raise RpcTimeout(f"{what}: no answer: {exc}") from exc
    except oslo_messaging.MessageDeliveryFailure as exc:
        raise TransportUnavailable(f"{what}: broker unreachable: {exc}") from exc
    except oslo_messaging.RemoteError as exc:
        raise RemoteError(exc.exc_type or "?", exc.value or "", exc.traceback or "") from exc
    except oslo_messaging.MessagingException as exc:
        raise MessagingError(f"{what}: {exc}") from exc
    except OSError as exc:  # a socket error kombu did not wrap
        raise TransportUnavailable(f"{what}: {exc}") from exc


def _opts() -> Any:
    return configure().guest_ha


def get_transport(url: Optional[str] = None) -> oslo_messaging.Transport:
    """An RPC transport for ``url`` (default ``[DEFAULT] transport_url``) on ``cfg.CONF``.

    Call ``transport.cleanup()`` when done.  Creating it does not connect.
    """
    conf = configure()
    stamp_user_id()  # the broker vouches for who sent each message (identity.py)
    with _translated("get_transport"):
        transport = oslo_messaging.get_rpc_transport(conf, url=url)
        _transport_hosts[transport] = _broker_hosts(url)
    return transport


def _check_threading(server: oslo_messaging.MessageHandlingServer) -> None:
    if getattr(server, "executor_type", "threading") != "threading":
        raise MessagingError(
            "guest_ha.messaging needs oslo.messaging's threading executor; "
            f"got {server.executor_type!r} (is eventlet monkey-patching active?)"
        )


def _serve(
    transport: oslo_messaging.Transport,
    target: oslo_messaging.Target,
    endpoints: Sequence[Any],
    start: bool,
) -> oslo_messaging.MessageHandlingServer:
    # No ``executor=`` argument: oslo.messaging 18.x deprecates it and picks
    # ``threading`` itself unless eventlet has monkey-patched ``thread``.
    # get_rpc_server() with a dispatcher that passes on the broker-validated sender.
    server = rpc_server(transport, target, endpoints)
    _check_threading(server)
    if start:
        with _translated(f"serve {target.topic}"):
            server.start()
    return server


def serve_controller(
    transport: oslo_messaging.Transport,
    endpoints: Sequence[Any],
    host: Optional[str] = None,
    *,
    start: bool = True,
) -> oslo_messaging.MessageHandlingServer:
    """RPC server of a controller: topic ``controller_topic``, server ``host``.

    Every controller consumes the shared queue ``<controller_topic>`` (each call
    goes to one of them), its own ``<controller_topic>.<host>`` and the fanout
    exchange.  Endpoint methods take ``(self, ctxt, **kwargs)``; ``ctxt`` is the
    caller's dict (``{"host": ...}``).  The server is started unless
    ``start=False``; ``start()`` keeps retrying while the broker is down.  Stop it
    with ``stop_server()``.
    """
    opts = _opts()
    target = oslo_messaging.Target(topic=opts.controller_topic, server=host or opts.host)
    return _serve(transport, target, endpoints, start)


def serve_compute(
    transport: oslo_messaging.Transport,
    endpoints: Sequence[Any],
    host: Optional[str] = None,
    *,
    start: bool = True,
) -> oslo_messaging.MessageHandlingServer:
    """RPC server of a compute agent: queue ``<compute_topic_prefix>.<host>`` + fanout.

    oslo.messaging names the per-server queue ``<topic>.<server>``, so
    ``Target(topic=prefix, server=host)`` consumes exactly ``<prefix>.<host>``
    and the fanout exchange ``<prefix>_fanout`` shared by all agents.
    """
    opts = _opts()
    target = oslo_messaging.Target(topic=opts.compute_topic_prefix, server=host or opts.host)
    return _serve(transport, target, endpoints, start)


def stop_server(server: oslo_messaging.MessageHandlingServer) -> None:
    """Stop consuming and wait for in-flight requests to finish."""
    server.stop()
    server.wait()


# A topic nobody consumes: the broker drops what is sent to it.
_WARMUP_TOPIC = "guest_ha_reply_warmup"

# transport -> broker (host, port) list, recorded by get_transport().
_transport_hosts: "weakref.WeakKeyDictionary[Any, List[Tuple[str, int]]]" = (
    weakref.WeakKeyDictionary()
)


def _broker_hosts(url: Optional[str]) -> List[Tuple[str, int]]:
    conf = configure()
    parsed = oslo_messaging.TransportURL.parse(conf, url)
    return [(h.hostname or "localhost", int(h.port or 5672)) for h in parsed.hosts]


def _broker_reachable(hosts: Sequence[Tuple[str, int]], timeout: float) -> bool:
    if not hosts:
        return True  # nothing to probe (driver default host): let oslo.messaging try
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, timeout)):
                return True
        except OSError:
            continue
    return False


class _ReplyQueueWarmup:
    """Creates a transport's RPC reply queue without letting a call hang.

    oslo.messaging creates the reply queue on a transport's first RPC call, on a
    connection opened with unbounded retries: with the broker down at that
    moment the call blocks until the broker comes back, whatever ``timeout`` and
    ``retry`` say (and ``transport.cleanup()`` blocks behind it).  So before the
    first real call: probe the broker's TCP port (bounded), and only if it
    answers, make a throw-away call (topic nobody consumes, timeout 0.1 s) on a
    helper thread, which sets the reply queue up; the real call waits for it
    at most its connection budget.  If the broker dies between the probe and
    the set-up, the helper thread stays in oslo.messaging's retry loop until the
    broker is back; calls meanwhile fail with ``TransportUnavailable``.
    """

    def __init__(
        self, transport: oslo_messaging.Transport, hosts: Sequence[Tuple[str, int]]
    ) -> None:
        self.ready = threading.Event()
        self.hosts = list(hosts)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=_WARMUP_TOPIC), timeout=0.1, retry=0
        )

    def _run(self) -> None:
        try:
            self._client.call({}, "warmup")
        except Exception:
            # Expected (timeout, or the send failed): the reply queue is set up
            # before the send, so it exists now. A non-connection failure while
            # setting it up (bad credentials) fails just as fast in real calls.
            pass
        finally:
            self.ready.set()

    def wait(self, timeout: float) -> bool:
        if self.ready.is_set():
            return True
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._thread is None:
                if not _broker_reachable(self.hosts, min(1.0, timeout)):
                    return False
                self._thread = threading.Thread(
                    target=self._run, name="guest-ha-reply-queue", daemon=True
                )
                self._thread.start()
        return self.ready.wait(max(0.0, deadline - time.monotonic()))


_warmups: "weakref.WeakKeyDictionary[Any, _ReplyQueueWarmup]" = weakref.WeakKeyDictionary()
_warmups_lock = threading.Lock()


def _reply_queue_ready(transport: oslo_messaging.Transport, timeout: float) -> bool:
    with _warmups_lock:
        warmup = _warmups.get(transport)
        if warmup is None:
            hosts = _transport_hosts.get(transport)
            if hosts is None:
                hosts = _broker_hosts(None)
            warmup = _warmups[transport] = _ReplyQueueWarmup(transport, hosts)
    return warmup.wait(timeout)


class _Client:
    def __init__(
        self,
        transport: oslo_messaging.Transport,
        topic: str,
        host: str,
        timeout: Optional[float],
        retries: Optional[int],
    ) -> None:
        opts = _opts()
        self.host = host
        self.timeout = float(opts.rpc_timeout_s if timeout is None else timeout)
        self.retries = int(opts.rpc_connect_retries if retries is None else retries)
        self.topic = topic
        self._transport = transport
        # The most a first call waits for the reply queue: about what
        # ``retries`` reconnection attempts take (oslo.messaging sleeps
        # kombu_reconnect_delay + a growing interval between them), at least 1 s.
        self.connect_budget = 1.0 + 2.0 * self.retries
        self._client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=topic), timeout=self.timeout, retry=self.retries
        )

    def _ctxt(self) -> Dict[str, Any]:
        return {"host": self.host}

    def _call(
        self,
        prepare: Mapping[str, Any],
        method: str,
        timeout: Optional[float],
        kwargs: Mapping[str, Any],
    ) -> Any:
        if not _reply_queue_ready(self._transport, self.connect_budget):
            raise TransportUnavailable(
                f"call {method}: broker unreachable (no RPC reply queue after "
                f"{self.connect_budget:.0f} s; still trying in the background)"
            )
        cctxt = self._client.prepare(
            timeout=self.timeout if timeout is None else timeout, **prepare
        )
        with _translated(f"call {method} on {prepare.get('topic', self.topic)}"):
            return cctxt.call(self._ctxt(), method, **kwargs)

    def _cast(self, prepare: Mapping[str, Any], method: str, kwargs: Mapping[str, Any]) -> None:
        cctxt = self._client.prepare(**prepare)
        with _translated(f"cast {method} to {prepare.get('topic', self.topic)}"):
            cctxt.cast(self._ctxt(), method, **kwargs)


class ControllerClient(_Client):
    """What a compute agent uses to reach the controllers (any one of them answers)."""

    def __init__(
        self,
        transport: oslo_messaging.Transport,
        host: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> None:
        opts = _opts()
        super().__init__(transport, opts.controller_topic, host or opts.host, timeout, retries)

    def call(self, method: str, timeout: Optional[float] = None, **kwargs: Any) -> Any:
        """RPC call of ``method(ctxt, **kwargs)`` on one controller; returns its answer."""
        return self._call({}, method, timeout, kwargs)

    def call_server(
        self, server: str, method: str, timeout: Optional[float] = None, **kwargs: Any
    ) -> Any:
        """RPC call on the controller named ``server`` only."""
        return self._call({"server": server}, method, timeout, kwargs)

    def cast(self, method: str, **kwargs: Any) -> None:
        """One-way message to one controller (best effort: returns once the broker took it)."""
        self._cast({}, method, kwargs)

    def report(self, event: Mapping[str, Any], timeout: Optional[float] = None) -> Dict[str, Any]:
        """Send one event (``report_event(event=...)``); return the controller's ack dict."""
        ack = self.call(REPORT_EVENT, timeout, event=dict(event))
        if not isinstance(ack, dict):
            raise MessagingError(
                f"controller answered report_event with {type(ack).__name__}, not an ack dict"
            )
        return ack


class ComputeClient(_Client):
    """What a controller uses to reach compute agents."""

    def __init__(
        self,
        transport: oslo_messaging.Transport,
        host: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> None:
        opts = _opts()
        super().__init__(transport, opts.compute_topic_prefix, host or opts.host, timeout, retries)

    def topic_for(self, host: str) -> str:
        """The queue that only ``host``'s agent consumes: ``<prefix>.<host>``."""
        return f"{self.topic}.{host}"

    def cast_to_host(self, host: str, method: str, **kwargs: Any) -> None:
        """One-way message to ``host``'s agent (fanout=False).

        Returns once the broker took it.  If that agent never declared its queue
        (never started since the broker started) the broker drops the message.
        """
        self._cast({"server": host, "fanout": False}, method, kwargs)

    def call_host(
        self, host: str, method: str, timeout: Optional[float] = None, **kwargs: Any
    ) -> Any:
        """RPC call on ``host``'s agent; returns its answer."""
        return self._call({"server": host}, method, timeout, kwargs)

    def fanout(self, method: str, **kwargs: Any) -> None:
        """One-way message to every running compute agent."""
        self._cast({"fanout": True}, method, kwargs)


# -- notifications -------------------------------------------------------------------


def get_notification_transport(url: Optional[str] = None) -> oslo_messaging.Transport:
    conf = configure()
    with _translated("get_notification_transport"):
        return oslo_messaging.get_notification_transport(conf, url=url)


def notifier(
    transport_url: Optional[str],
    publisher_id: str,
    topics: Sequence[str] = ("notifications",),
    retries: Optional[int] = None,
) -> oslo_messaging.Notifier:
    """An ``oslo_messaging.Notifier`` (driver ``messagingv2``) on its own transport.

    ``retries`` (default ``[guest_ha] notification_retries``) bounds reconnection
    attempts; oslo.messaging's default would block the sending thread for as
    long as the broker is down.  ``Notifier.info()`` and friends *log and
    swallow* a failed send; use ``publish()`` to learn about it.  Release the
    connection with ``notifier.transport.cleanup()``.
    """
    opts = _opts()
    transport = get_notification_transport(transport_url)
    return oslo_messaging.Notifier(
        transport,
        publisher_id=publisher_id,
        driver="messagingv2",
        topics=list(topics),
        retry=int(opts.notification_retries if retries is None else retries),
    )


class _FailureRecorder(logging.Filter):
    """Records ERROR records logged by the current thread while installed."""

    def __init__(self) -> None:
        super().__init__()
        self.thread_id = threading.get_ident()
        self.records: List[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread_id and record.levelno >= logging.ERROR:
            self.records.append(record)
        return True


def publish(
    notifier_: oslo_messaging.Notifier,
    event_type: str,
    payload: Mapping[str, Any],
    priority: str = "info",
    ctxt: Optional[Mapping[str, Any]] = None,
) -> None:
    """Send one notification; raise ``TransportUnavailable`` if it was not sent.

    oslo.messaging 18.x catches every send failure inside ``Notifier`` and only
    logs it (``oslo_messaging.notify.messaging`` / ``.notifier``, at ERROR), so
    this watches those loggers, for the calling thread only, while sending.  If
    they cannot report (disabled, or level above ERROR) it refuses to send
    rather than silently lose a notification.
    """
    loggers = [logging.getLogger(name) for name in _NOTIFY_FAILURE_LOGGERS]
    for lg in loggers:
        if lg.disabled or not lg.isEnabledFor(logging.ERROR):
            raise MessagingError(
                f"logger {lg.name} is disabled or above ERROR: "
                "publish() could not see a failed send"
            )
    send = getattr(notifier_, priority.lower(), None)
    if send is None or priority.lower() not in {
        "audit",
        "debug",
        "info",
        "warn",
        "warning",
        "error",
        "critical",
        "sample",
    }:
        raise ValueError(f"unknown notification priority {priority!r}")
    recorder = _FailureRecorder()
    for lg in loggers:
        lg.addFilter(recorder)
    try:
        send(dict(ctxt or {}), event_type, dict(payload))
    finally:
        for lg in loggers:
            lg.removeFilter(recorder)
    if recorder.records:
        record = recorder.records[-1]
        cause = record.exc_info[1] if record.exc_info else None
        raise TransportUnavailable(
            f"notification {event_type} not sent: {cause or record.getMessage()}"
        )


__all__ = [
    "ComputeClient",
    "ControllerClient",
    "MessagingError",
    "RemoteError",
    "RpcTimeout",
    "TransportUnavailable",
    "get_notification_transport",
    "get_transport",
    "notifier",
    "publish",
    "serve_compute",
    "serve_controller",
    "stop_server",
]
