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

import argparse
import itertools
import json
import logging
import queue
import select
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

from . import DEFAULT_APP_SOCKET
from .client import DaemonUnavailable as _HealthDaemonUnavailable
from .client import HealthApiError

MAX_BROADCAST_BYTES = 3050
"""Largest broadcast ``data``, as compact UTF-8 JSON (docs/protocol.md section 5.4)."""
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_PENDING_PUSHES = 10000
STATUS_REPLY_MARGIN_S = 2.0

LOG = logging.getLogger("guest_ha.sg_client")


# -- errors ------------------------------------------------------------------------------
class ServerGroupError(HealthApiError):
    """A server group request failed. ``code`` is the daemon's error code, if any."""

    def __init__(self, message: str, code: str = "", reply: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.code = code
        self.reply: Dict[str, Any] = reply or {}


class DaemonUnavailable(ServerGroupError, _HealthDaemonUnavailable):
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
        self._buf = bytearray()
        self._pushes: Deque[Dict[str, Any]] = deque()
        # Replies, and the _EOF sentinel once the reader stops.
        self._replies: "queue.Queue[Any]" = queue.Queue()
        self._push_ready = threading.Condition()
        self._reader: Optional[threading.Thread] = None
        self._dispatcher: Optional[threading.Thread] = None
        self._closed = False
        self._lost: Optional[str] = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(
                f"cannot connect to {path}: {exc.strerror or exc} (is guest-ha-guestd running?)"
            ) from None
        sock.settimeout(None)
        self._sock = sock

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
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._push_ready:
            self._push_ready.notify_all()
        current = threading.current_thread()
        for thread in (self._reader, self._dispatcher):
            if thread is not None and thread is not current:
                thread.join(2.0)

    def fileno(self) -> int:
        """The socket, for ``select`` in single-threaded apps (then call :meth:`poll`)."""
        return self._sock.fileno()

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
            line = json.dumps(req, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ServerGroupError(f"request cannot be sent as JSON: {exc}", "invalid") from None
        wait = self.timeout if _wait is None else _wait
        with self._req_lock:
            try:
                self._sock.sendall(line.encode("utf-8") + b"\n")
            except OSError as exc:
                raise DaemonUnavailable(f"connection to {self.path} failed: {exc}") from None
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
        """Read until one line is complete (or ``timeout``); return it parsed, or None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                try:
                    obj = json.loads(line.decode("utf-8"))
                except ValueError:
                    LOG.warning("ignoring a line from the daemon that is not JSON")
                    continue
                if isinstance(obj, dict):
                    return obj
                continue
            if self._closed:
                raise DaemonUnavailable("client is closed")
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                ready, _, _ = select.select([self._sock], [], [], left)
                if not ready:
                    return None
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                self._lost = f"connection to {self.path} failed: {exc}"
                raise DaemonUnavailable(self._lost) from None
            if not chunk:
                self._lost = "the daemon closed the connection"
                raise DaemonUnavailable(self._lost)
            self._buf += chunk
            if len(self._buf) > MAX_LINE_BYTES:
                self._lost = "line from the daemon too long"
                raise DaemonUnavailable(self._lost)

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


# -- CLI ---------------------------------------------------------------------------------
PROG = "guest-ha-sg"
STATUS_COLUMNS = (
    ("UUID", "uuid"),
    ("NAME", "display_name"),
    ("HOST", "host"),
    ("STATE", "state"),
    ("POWER_STATE", "power_state"),
    ("TASK_STATE", "task_state"),
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Server group messaging through the guest-ha guest daemon."
    )
    parser.add_argument(
        "--socket", default=DEFAULT_APP_SOCKET, help=f"app socket (default {DEFAULT_APP_SOCKET})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    bc = sub.add_parser("broadcast", help="send a message to every other member of the group")
    what = bc.add_mutually_exclusive_group(required=True)
    what.add_argument("text", nargs="?", help="text to send (as a JSON string)")
    what.add_argument("--json", dest="json_value", metavar="JSON", help="JSON value to send")
    st = sub.add_parser("status", help="show the state of every member of the group")
    st.add_argument("--json", action="store_true", help="print the members as a JSON array")
    st.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    ls = sub.add_parser(
        "listen", help="print broadcasts and notifications as they arrive, until interrupted"
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_members(members: List[Dict[str, Any]]) -> str:
    """The members as a table (``guest-ha-sg status``)."""
    rows = [[h for h, _ in STATUS_COLUMNS]]
    ordered = sorted(members, key=lambda m: (str(m.get("display_name")), str(m.get("uuid"))))
    rows += [[_cell(m.get(key)) for _, key in STATUS_COLUMNS] for m in ordered]
    widths = [max(len(r[i]) for r in rows) for i in range(len(STATUS_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def format_push(push: Dict[str, Any]) -> str:
    """One line of ``guest-ha-sg listen`` output."""
    kind = push.get("push")
    if kind == "broadcast":
        return f"broadcast from {push.get('source_instance')}: {_compact(push.get('data'))}"
    if kind == "notification":
        d = push.get("data") or {}
        return (
            f"notification: {_cell(d.get('uuid'))} {_cell(d.get('display_name'))} "
            f"host={_cell(d.get('host'))} state={_cell(d.get('state'))} "
            f"power_state={_cell(d.get('power_state'))} task_state={_cell(d.get('task_state'))}"
        )
    if kind == "nack":
        return f"nack of {push.get('orig_msg_type') or 'a frame'}: {push.get('log_msg')}"
    if kind == "dropped":
        return f"dropped: {push.get('count')} message(s) lost (read too slowly)"
    return f"{kind}: {_compact(push)}"


def _listen(client: ServerGroupClient, as_json: bool) -> None:
    def show(push: Dict[str, Any]) -> None:
        print(_compact(push) if as_json else format_push(push), flush=True)

    client.on_broadcast(
        lambda src, data: show({"push": "broadcast", "source_instance": src, "data": data})
    )
    client.on_notification(lambda data: show({"push": "notification", "data": data}))
    client.on_nack(
        lambda orig, code, log_msg: show(
            {"push": "nack", "orig_msg_type": orig, "code": code, "log_msg": log_msg}
        )
    )
    client.on_dropped(lambda count: show({"push": "dropped", "count": count}))
    client.subscribe()
    client.run_forever()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``guest-ha-sg``: 0 on success, 1 on an error, 2 on bad usage."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    data: Any = None
    if args.command == "broadcast":
        if args.json_value is not None:
            try:
                data = json.loads(args.json_value, parse_constant=_no_constant)
            except ValueError as exc:
                parser.error(f"--json: not valid JSON: {exc}")
        else:
            data = args.text
    try:
        with ServerGroupClient(args.socket) as client:
            if args.command == "broadcast":
                client.broadcast(data)
            elif args.command == "status":
                members = client.request_status(timeout=args.timeout)
                if args.json:
                    print(json.dumps(members, indent=2, sort_keys=True, ensure_ascii=False))
                else:
                    print(format_members(members))
            elif args.command == "listen":
                _listen(client, args.json)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # e.g. `guest-ha-sg listen | head -1`
        try:
            sys.stdout.close()
        except OSError:
            pass
        return 0
    except ServerGroupError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


if __name__ == "__main__":
    sys.exit(main())
