"""Server group messaging for guest apps: the Python client and the ``guest-ha-sg`` CLI.

The guest daemon owns the channel; this module talks to it over the app API
socket (see docs/vnf-developer-guide.md)::

    from guest_ha.guest.sg_client import ServerGroupClient

    with ServerGroupClient() as sg:
        sg.on_broadcast(lambda source, data: print(source, data))
        sg.on_notification(lambda member: print(member["uuid"], member["state"]))
        sg.subscribe()          # this app now owns the guest's server group role
        sg.start()              # callbacks run in a background thread
        sg.broadcast({"role": "active", "epoch": 7})
        for member in sg.request_status(timeout=5.0):
            print(member["display_name"], member["state"], member["power_state"])

Single-threaded apps call :meth:`ServerGroupClient.poll` from their own loop
(``fileno()`` is selectable) or :meth:`ServerGroupClient.run_forever` instead of
``start()``.

Standard library only; runs on Python 3.8+.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from ..protocol.messages import MAX_BROADCAST_BYTES
from . import DEFAULT_APP_SOCKET
from .app_socket import AppApiError, AppConnection, encode_request
from .app_socket import DaemonUnavailable as _ConnectionLost

MAX_PENDING_PUSHES = 10000
STATUS_REPLY_MARGIN_S = 2.0

LOG = logging.getLogger("guest_ha.sg_client")


# -- errors ------------------------------------------------------------------------------
class ServerGroupError(AppApiError):
    """A server group request failed. ``code`` is the daemon's error code, if any."""

    def __init__(self, message: str, code: str = "", reply: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.reply: Dict[str, Any] = reply or {}


class DaemonUnavailable(ServerGroupError, _ConnectionLost):
    """The daemon's socket cannot be reached, or the connection broke."""


class OwnerTaken(ServerGroupError):
    """Another app owns the guest's server group role (``owner_pid`` if known)."""

    @property
    def owner_pid(self) -> Optional[int]:
        return self.reply.get("owner_pid")


class MessageTooLarge(ServerGroupError):
    """Broadcast data over 3050 bytes (compact UTF-8 JSON)."""


class RateLimited(ServerGroupError):
    """Over the daemon's local server group rate limit; slow down and retry."""


class HostUnavailable(ServerGroupError):
    """No host is connected to the channel (or it went away); nothing was sent."""


class StatusTimeout(ServerGroupError):
    """No complete status answer in time; ``members`` holds what arrived."""

    @property
    def members(self) -> List[Dict[str, Any]]:
        return list(self.reply.get("members") or [])


class Nacked(ServerGroupError):
    """The host refused the request with a nack: ``nack_code`` and ``log_msg``."""

    def __init__(self, message: str, code: str = "", reply: Optional[Dict[str, Any]] = None):
        super().__init__(message, code, reply)
        self.nack_code: str = str(self.reply.get("nack_code") or "")
        self.log_msg: str = str(self.reply.get("log_msg") or "")


class NotInServerGroup(Nacked):
    """The VM takes no part in server group messaging: not opted in, or in no group."""


NOT_IN_GROUP_CODES = ("not_in_server_group", "not_enabled")

_ERRORS_BY_CODE = {
    "owner_taken": OwnerTaken,
    "too_large": MessageTooLarge,
    "rate_limited": RateLimited,
    "no_host": HostUnavailable,
    "timeout": StatusTimeout,
}


def error_from_reply(reply: Dict[str, Any]) -> ServerGroupError:
    """The exception that an ``{"ok": false, ...}`` reply stands for."""
    message = str(reply.get("error") or "request failed")
    code = str(reply.get("code") or "")
    if code == "nacked":
        cls = NotInServerGroup if reply.get("nack_code") in NOT_IN_GROUP_CODES else Nacked
        return cls(message, code, reply)
    return _ERRORS_BY_CODE.get(code, ServerGroupError)(message, code, reply)


def encoded_size(data: Any) -> int:
    """Size of ``data`` as the limit measures it: compact UTF-8 JSON."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return len(text.encode("utf-8"))


# -- client ------------------------------------------------------------------------------
_EOF = object()


class ServerGroupClient:
    """One connection to the guest daemon for server group messaging.

    Requests (:meth:`subscribe`, :meth:`broadcast`, :meth:`request_status`, ...)
    may be made from any thread; they are sent one at a time. Pushes from the
    host (broadcasts, notifications, nacks) reach the callbacks either from a
    background thread (:meth:`start`) or from :meth:`poll` / :meth:`run_forever`
    in the caller's thread. Callbacks may make requests themselves.
    """

    def __init__(self, path: str = DEFAULT_APP_SOCKET, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._broadcast_cbs: List[Callable[[str, Any], None]] = []
        self._notification_cbs: List[Callable[[Dict[str, Any]], None]] = []
        self._nack_cbs: List[Callable[[str, str, str], None]] = []
        self._dropped_cbs: List[Callable[[int], None]] = []
        self.pushes_dropped = 0
        """Pushes lost: dropped by the daemon (app too slow) or by this client's queue."""
        self._ids = itertools.count(1)
        self._req_lock = threading.Lock()
        self._pushes: Deque[Dict[str, Any]] = deque()
        # Replies, and the _EOF sentinel once the reader stops.
        self._replies: "queue.Queue[Any]" = queue.Queue()
        self._push_ready = threading.Condition()
        self._reader: Optional[threading.Thread] = None
        self._dispatcher: Optional[threading.Thread] = None
        self._closed = False
        self._lost: Optional[str] = None
        try:
            self._conn = AppConnection(path, timeout)
        except _ConnectionLost as exc:
            raise DaemonUnavailable(str(exc)) from None

    # -- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> ServerGroupClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the server group role, if owned, becomes free."""
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        with self._push_ready:
            self._push_ready.notify_all()
        current = threading.current_thread()
        for thread in (self._reader, self._dispatcher):
            if thread is not None and thread is not current:
                thread.join(2.0)

    def fileno(self) -> int:
        """The socket, for ``select`` in single-threaded apps (then call :meth:`poll`)."""
        return self._conn.fileno()

    # -- callbacks -----------------------------------------------------------------------
    def on_broadcast(self, fn: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
        """Call ``fn(source_instance, data)`` for each broadcast from a peer."""
        self._broadcast_cbs.append(fn)
        return fn

    def on_notification(
        self, fn: Callable[[Dict[str, Any]], None]
    ) -> Callable[[Dict[str, Any]], None]:
        """Call ``fn(member_status)`` when a peer's state changed."""
        self._notification_cbs.append(fn)
        return fn

    def on_nack(self, fn: Callable[[str, str, str], None]) -> Callable[[str, str, str], None]:
        """Call ``fn(orig_msg_type, code, log_msg)`` when the host refused something
        (typically a broadcast: it was not delivered)."""
        self._nack_cbs.append(fn)
        return fn

    def on_dropped(self, fn: Callable[[int], None]) -> Callable[[int], None]:
        """Call ``fn(count)`` when pushes were lost because the app read too slowly."""
        self._dropped_cbs.append(fn)
        return fn

    # -- requests ------------------------------------------------------------------------
    def subscribe(self) -> Dict[str, Any]:
        """Own the guest's server group role: receive broadcasts, notifications and
        nacks. Raises :class:`OwnerTaken` while another app owns it."""
        return self.request("sg_subscribe")

    def unsubscribe(self) -> Dict[str, Any]:
        """Give the role up (closing the connection does too)."""
        return self.request("sg_unsubscribe")

    def broadcast(self, data: Any) -> None:
        """Send ``data`` (any JSON value, at most 3050 bytes) to every other member.

        Best effort: success means the daemon queued it for the host. A later
        refusal by the host arrives as a nack (:meth:`on_nack`).
        """
        try:
            size = encoded_size(data)
        except (TypeError, ValueError) as exc:  # not JSON, NaN, lone surrogate, ...
            raise ServerGroupError(f"data cannot be sent as JSON: {exc}", "invalid") from None
        if size > MAX_BROADCAST_BYTES:
            raise MessageTooLarge(
                f"data is {size} bytes, over the {MAX_BROADCAST_BYTES}-byte limit", "too_large"
            )
        self.request("sg_broadcast", data=data)

    def request_status(self, timeout: float = 5.0) -> List[Dict[str, Any]]:
        """Every member's status (this VM included): Nova instance fields such as
        ``uuid``, ``display_name``, ``host``, ``state``, ``task_state``,
        ``power_state``. Raises :class:`StatusTimeout` (partial answer in its
        ``members``), :class:`NotInServerGroup`, :class:`Nacked`, ..."""
        timeout_ms = max(100, min(60000, int(timeout * 1000)))
        reply = self.request(
            "sg_status",
            _wait=timeout_ms / 1000.0 + STATUS_REPLY_MARGIN_S,
            timeout_ms=timeout_ms,
        )
        return list(reply.get("members") or [])

    def daemon_status(self) -> Dict[str, Any]:
        """The daemon's ``status`` reply (its ``server_group`` part shows the owner)."""
        return self.request("status")

    def request(self, op: str, _wait: Optional[float] = None, **fields: Any) -> Dict[str, Any]:
        """Send one request and return its reply; raise :class:`ServerGroupError`."""
        if self._closed:
            raise ServerGroupError("client is closed")
        req_id = next(self._ids)
        req: Dict[str, Any] = {"op": op, "id": req_id}
        req.update(fields)
        try:
            line = encode_request(req)
        except (TypeError, ValueError) as exc:
            raise ServerGroupError(f"request cannot be sent as JSON: {exc}", "invalid") from None
        wait = self.timeout if _wait is None else _wait
        with self._req_lock:
            try:
                self._conn.send(line)
            except _ConnectionLost as exc:
                raise DaemonUnavailable(str(exc)) from None
            reply = self._await_reply(req_id, time.monotonic() + wait)
        if not reply.get("ok"):
            raise error_from_reply(reply)
        return reply

    def _await_reply(self, req_id: int, deadline: float) -> Dict[str, Any]:
        item: Any
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DaemonUnavailable(f"no reply from {self.path} in time")
            if self._reader is not None:
                try:
                    item = self._replies.get(timeout=left)
                except queue.Empty:
                    continue
                if item is _EOF:
                    self._replies.put(_EOF)  # for whoever asks next
                    raise DaemonUnavailable(self._lost or "connection closed")
            else:
                item = self._read_one(left)
                if item is None:
                    continue
                if "push" in item:
                    self._queue_push(item)
                    continue
            if item.get("id") in (req_id, None):
                return dict(item)
            # A late reply to an earlier request that timed out here: skip it.

    # -- reading -------------------------------------------------------------------------
    def _read_one(self, timeout: Optional[float]) -> Optional[Dict[str, Any]]:
        """The next object from the daemon, or None when ``timeout`` passes first."""
        if self._closed:
            raise DaemonUnavailable("client is closed")
        try:
            return self._conn.read_message(timeout)
        except _ConnectionLost as exc:
            self._lost = self._lost or self._conn.lost or str(exc)
            raise DaemonUnavailable(str(exc)) from None

    def _queue_push(self, push: Dict[str, Any]) -> None:
        with self._push_ready:
            self._pushes.append(push)
            while len(self._pushes) > MAX_PENDING_PUSHES:
                self._pushes.popleft()
                self.pushes_dropped += 1
            self._push_ready.notify()

    def _dispatch(self, push: Dict[str, Any]) -> None:
        kind = push.get("push")
        try:
            if kind == "broadcast":
                for fn in self._broadcast_cbs:
                    fn(str(push.get("source_instance", "")), push.get("data"))
            elif kind == "notification":
                for notification_fn in self._notification_cbs:
                    notification_fn(push.get("data") or {})
            elif kind == "nack":
                for nack_fn in self._nack_cbs:
                    nack_fn(
                        str(push.get("orig_msg_type", "")),
                        str(push.get("code", "")),
                        str(push.get("log_msg", "")),
                    )
            elif kind == "dropped":
                count = int(push.get("count") or 0)
                self.pushes_dropped += count
                for dropped_fn in self._dropped_cbs:
                    dropped_fn(count)
            # other push types may be added later: ignored
        except Exception:
            LOG.exception("server group %s callback failed", kind)

    # -- single-threaded use -------------------------------------------------------------
    def poll(self, timeout: Optional[float] = 0.0) -> int:
        """Wait up to ``timeout`` seconds (None: no limit) for pushes, run their
        callbacks, and return how many were dispatched: once one has been, only
        those already received follow. For single-threaded apps; not after
        :meth:`start`."""
        if self._reader is not None:
            raise ServerGroupError("poll() cannot be used after start()")
        done = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._pushes:
                self._dispatch(self._pushes.popleft())
                done += 1
            if done:
                deadline = time.monotonic()  # drain what is there, wait no longer
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with self._req_lock:
                if self._pushes:
                    continue
                item = self._read_one(left)
            if item is None:
                return done
            if "push" in item:
                self._pushes.append(item)
            # a reply nobody waits for (the request timed out here): skip it

    def run_forever(self) -> None:
        """Dispatch pushes until :meth:`close` or the connection breaks (then it raises
        :class:`DaemonUnavailable`, unless closed)."""
        if self._reader is not None:
            self._reader.join()
            if not self._closed:
                raise DaemonUnavailable(self._lost or "connection closed")
            return
        try:
            while True:
                self.poll(None)
        except DaemonUnavailable:
            if not self._closed:
                raise

    # -- background thread ---------------------------------------------------------------
    def start(self) -> ServerGroupClient:
        """Run the callbacks from a background (daemon) thread from now on."""
        if self._reader is None:
            self._reader = threading.Thread(
                target=self._read_loop, name="sg-client-reader", daemon=True
            )
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name="sg-client-callbacks", daemon=True
            )
            with self._req_lock:  # no request is reading the socket from now on
                self._reader.start()
            self._dispatcher.start()
        return self

    def _read_loop(self) -> None:
        try:
            while True:
                item = self._read_one(None)
                if item is None:
                    continue
                if "push" in item:
                    self._queue_push(item)
                else:
                    self._replies.put(item)
        except DaemonUnavailable as exc:
            self._lost = self._lost or str(exc)
        finally:
            self._replies.put(_EOF)
            with self._push_ready:
                self._push_ready.notify_all()

    def _dispatch_loop(self) -> None:
        while True:
            with self._push_ready:
                while not self._pushes and not self._closed and self._reader_alive():
                    self._push_ready.wait(0.5)
                if not self._pushes:
                    return
                push = self._pushes.popleft()
            self._dispatch(push)

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()
