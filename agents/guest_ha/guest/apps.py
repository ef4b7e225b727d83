"""Local app health API: a UNIX stream socket speaking newline-delimited JSON.

Each request is one JSON object on one line with an ``op`` key; each gets exactly
one JSON object line back, ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``,
in request order. A request may carry an ``id`` (string or integer), which its
reply echoes. An op may answer later (:data:`DEFER`, then :meth:`AppServer.complete`);
the connection's further requests wait until it has.

Besides replies the server may *push* lines to a client (:meth:`AppServer.push`):
objects with a ``push`` key and never an ``ok`` key, so a client tells them apart
from replies even when one arrives while it waits for a reply. Pushes are queued
per client, bounded; when the client does not read, the oldest are dropped and
counted, and the next push delivered is preceded by ``{"push":"dropped","count":N}``.

Ops live in a table (:attr:`AppServer.ops`) so more can be added with
:meth:`AppServer.add_op`. Everything is bounded: line length, clients, apps and
per-client output. A misbehaving client is answered with an error or dropped;
it never blocks the daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import select
import socket
import stat
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..protocol.messages import MAX_REASON_CHARS

MAX_LINE_BYTES = 16 * 1024
"""Longest request line. Room for a 3050-byte broadcast even when the client
escapes every non-ASCII character (``\\uXXXX``) or pretty-prints a little."""
MAX_CLIENTS = 64
MAX_APPS = 64
MAX_CLIENT_OUTPUT = 256 * 1024
MAX_PUSHES = 256
"""Pushes queued for one client that does not read; beyond it the oldest are dropped."""
MAX_PUSH_BYTES = 512 * 1024
PUSH_CHUNK_BYTES = 16 * 1024
MAX_ID_CHARS = 64
MAX_TIMEOUT_MS = 86400000
MIN_TIMEOUT_MS = 100
ON_DISCONNECT = ("unhealthy", "forget", "keep")
APP_NAME_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}\Z")
SOCKET_MODE = 0o660


class ApiError(Exception):
    """A request the API refuses; the message goes back as ``error``.

    ``code`` (optional) goes back as ``code``, a stable word a client can act on;
    ``extra`` fields are added to the error reply as they are.
    """

    def __init__(self, message: str, code: Optional[str] = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra

    def reply(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"ok": False, "error": str(self)}
        if self.code:
            out["code"] = self.code
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


DEFER = object()
"""Returned by an op handler that answers later with :meth:`AppServer.complete`."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def parse_request(line: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing numbers, no lone surrogates.

    Whatever an app sends may end up on the channel, whose receivers reject all of
    these (docs/protocol.md section 4.3). Raises ValueError.
    """
    text = line.decode("utf-8")
    value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    if "\\u" in text:
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError: surrogate
    return value


@dataclass
class App:
    """One registered guest application and what it last said about itself."""

    name: str
    timeout_ms: int
    on_disconnect: str
    registered_at: float
    last_seen: float
    client_id: Optional[int]
    healthy: bool = True
    reason: str = ""
    reports: int = 0

    def effective(self, now: float) -> Tuple[bool, str]:
        """Health as the daemon counts it now: silence and disconnects included."""
        if self.client_id is None and self.on_disconnect == "unhealthy":
            return False, "disconnected without unregistering"
        if self.timeout_ms and (now - self.last_seen) * 1000 > self.timeout_ms:
            silent = int((now - self.last_seen) * 1000)
            return False, f"silent for {silent} ms (timeout {self.timeout_ms} ms)"
        return self.healthy, self.reason

    def as_dict(self, now: float) -> Dict[str, Any]:
        healthy, reason = self.effective(now)
        return {
            "name": self.name,
            "healthy": healthy,
            "reason": reason,
            "reported_healthy": self.healthy,
            "reported_reason": self.reason,
            "connected": self.client_id is not None,
            "timeout_ms": self.timeout_ms,
            "on_disconnect": self.on_disconnect,
            "last_seen_age_ms": int((now - self.last_seen) * 1000),
            "reports": self.reports,
        }


class AppRegistry:
    """The registered applications, independent of sockets."""

    def __init__(self, log: logging.Logger, max_apps: int = MAX_APPS) -> None:
        self.log = log
        self.max_apps = max_apps
        self.apps: Dict[str, App] = {}
        self._by_client: Dict[int, str] = {}

    def app_of(self, client_id: int) -> Optional[App]:
        name = self._by_client.get(client_id)
        return self.apps.get(name) if name is not None else None

    def register(
        self, client_id: int, name: str, timeout_ms: int, on_disconnect: str, now: float
    ) -> App:
        mine = self.app_of(client_id)
        if mine is not None and mine.name != name:
            raise ApiError(f"this connection is registered as {mine.name!r}; unregister first")
        app = self.apps.get(name)
        if app is not None and app.client_id not in (None, client_id):
            raise ApiError(f"app {name!r} is registered by another connected client")
        if app is None:
            if len(self.apps) >= self.max_apps:
                raise ApiError(f"too many registered apps (limit {self.max_apps})")
            app = App(name, timeout_ms, on_disconnect, now, now, client_id)
            self.apps[name] = app
            self.log.info("app %s registered (timeout %d ms)", name, timeout_ms)
        else:
            if app.client_id is None:
                self.log.info("app %s registered again", name)
            app.timeout_ms, app.on_disconnect = timeout_ms, on_disconnect
            app.client_id, app.last_seen = client_id, now  # reported health is kept
        self._by_client[client_id] = name
        return app

    def report(self, app: App, healthy: bool, reason: str, now: float) -> None:
        if app.healthy != healthy:
            log = self.log.info if healthy else self.log.warning
            log(
                "app %s reports %s%s",
                app.name,
                "healthy" if healthy else "unhealthy",
                f" ({reason})" if reason else "",
            )
        app.healthy, app.reason = healthy, reason
        app.last_seen = now
        app.reports += 1

    def unregister(self, client_id: int) -> App:
        app = self.app_of(client_id)
        if app is None:
            raise ApiError("not registered")
        del self._by_client[client_id]
        del self.apps[app.name]
        self.log.info("app %s unregistered", app.name)
        return app

    def client_gone(self, client_id: int) -> None:
        name = self._by_client.pop(client_id, None)
        app = self.apps.get(name) if name is not None else None
        if app is None:
            return
        app.client_id = None
        if app.on_disconnect == "forget":
            del self.apps[app.name]
            self.log.info("app %s disconnected; forgotten", app.name)
        elif app.on_disconnect == "unhealthy":
            self.log.warning("app %s disconnected without unregistering: unhealthy", app.name)
        else:
            self.log.info("app %s disconnected; its last report is kept", app.name)

    def unhealthy(self, now: float) -> List[Tuple[str, str]]:
        out: List[Tuple[str, str]] = []
        for name in sorted(self.apps):
            healthy, reason = self.apps[name].effective(now)
            if not healthy:
                out.append((name, reason))
        return out

    def next_deadline(self, now: float) -> Optional[float]:
        """The next moment an app's silence timeout runs out."""
        times = [
            a.last_seen + a.timeout_ms / 1000.0
            for a in self.apps.values()
            if a.timeout_ms and a.last_seen + a.timeout_ms / 1000.0 >= now
        ]
        return min(times) + 0.001 if times else None

    def status(self, now: float) -> List[Dict[str, Any]]:
        return [self.apps[n].as_dict(now) for n in sorted(self.apps)]


def peer_pid(sock: socket.socket) -> Optional[int]:
    """The connecting process's pid (Linux ``SO_PEERCRED``), or None."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
    except (AttributeError, OSError, struct.error):
        return None
    return pid if pid > 0 else None


class Client:
    """One connection to the app socket."""

    def __init__(self, sock: socket.socket, client_id: int, pid: Optional[int] = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.id = client_id
        self.pid = pid
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False
        self.alive = True
        self.waiting = False
        """A deferred reply is outstanding; later requests wait (in order) until it is sent."""
        self.waiting_id: Any = None
        self.pushes: Deque[bytes] = deque()
        self.push_bytes = 0
        self.pushes_dropped = 0
        self._dropped_unreported = 0

    def describe(self) -> str:
        return f"client {self.id}" + (f" (pid {self.pid})" if self.pid else "")


Handler = Callable[[Client, Dict[str, Any], float], Any]


def _bool(req: Dict[str, Any], key: str) -> bool:
    value = req.get(key)
    if not isinstance(value, bool):
        raise ApiError(f"{key} must be true or false")
    return value


def _reason(req: Dict[str, Any]) -> str:
    value = req.get("reason", "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError("reason must be a string")
    return "".join(c if c.isprintable() else " " for c in value)[:MAX_REASON_CHARS]


class AppServer:
    """The listening socket, its clients, and the op table."""

    def __init__(
        self,
        path: str,
        registry: AppRegistry,
        status_provider: Callable[[float], Dict[str, Any]],
        log: logging.Logger,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = path
        self.registry = registry
        self.status_provider = status_provider
        self.log = log
        self.max_clients = max_clients
        self.sock: Optional[socket.socket] = None
        self.clients: Dict[int, Client] = {}
        self._next_id = 1
        self.counters = {
            "connections": 0,
            "rejected": 0,
            "requests": 0,
            "errors": 0,
            "pushes": 0,
            "pushes_dropped": 0,
        }
        self.ops: Dict[str, Handler] = {}
        self._gone_hooks: List[Callable[[Client, float], None]] = []
        self.add_op("register", self._op_register)
        self.add_op("report", self._op_report)
        self.add_op("unregister", self._op_unregister)
        self.add_op("status", self._op_status)

    def add_op(self, name: str, handler: Handler) -> None:
        """Register (or replace) the handler of one ``op``.

        The handler gets ``(client, request, now)`` and returns the reply's fields,
        raises :class:`ApiError`, or returns :data:`DEFER` and later calls
        :meth:`complete` exactly once for that client.
        """
        self.ops[name] = handler

    def add_client_gone_hook(self, hook: Callable[[Client, float], None]) -> None:
        """Call ``hook(client, now)`` whenever a client connection goes away."""
        self._gone_hooks.append(hook)

    # -- replies sent later, and pushes ----------------------------------------------
    def complete(self, client: Client, result: Any, now: float) -> None:
        """Send the deferred reply of ``client``: reply fields (dict) or an ApiError.

        Then the client's requests that arrived meanwhile are processed.
        """
        if not client.alive or not client.waiting:
            return
        if isinstance(result, ApiError):
            self.counters["errors"] += 1
            reply = result.reply()
        else:
            reply = {"ok": True}
            reply.update(result)
        if client.waiting_id is not None:
            reply["id"] = client.waiting_id
        client.waiting, client.waiting_id = False, None
        self._queue(client, reply)
        self._process_lines(client, now)

    def push(self, client: Client, message: Dict[str, Any]) -> bool:
        """Queue one push line (``message`` must have a ``push`` key) for ``client``.

        Never blocks: when the client has too many unread pushes, the oldest go.
        """
        if not client.alive:
            return False
        line = self._encode(message)
        client.pushes.append(line)
        client.push_bytes += len(line)
        self.counters["pushes"] += 1
        while len(client.pushes) > MAX_PUSHES or client.push_bytes > MAX_PUSH_BYTES:
            old = client.pushes.popleft()
            client.push_bytes -= len(old)
            client.pushes_dropped += 1
            client._dropped_unreported += 1
            self.counters["pushes_dropped"] += 1
        return True

    def flush(self, now: float) -> None:
        """Try to write every client's pending output now (non-blocking)."""
        for client in list(self.clients.values()):
            if client.alive and (client.outbuf or client.pushes):
                self._write(client, now)

    # -- socket life cycle -------------------------------------------------------------
    def start(self) -> None:
        """Create the socket (mode 0660; parent directory created). Raises OSError."""
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, mode=0o755, exist_ok=True)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, SOCKET_MODE)
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # nobody listens: left over from an earlier run
        else:
            raise OSError(errno.EADDRINUSE, f"another process serves {self.path}")
        finally:
            probe.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client, 0.0, quiet=True)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    # -- poll integration --------------------------------------------------------------
    def poll_fds(self) -> List[Tuple[int, int]]:
        fds: List[Tuple[int, int]] = []
        if self.sock is not None:
            fds.append((self.sock.fileno(), select.POLLIN))
        for c in self.clients.values():
            events = 0 if (c.closing or c.waiting) else select.POLLIN
            if c.outbuf or c.pushes:
                events |= select.POLLOUT
            fds.append((c.fd, events))
        return fds

    def owns(self, fd: int) -> bool:
        return (self.sock is not None and fd == self.sock.fileno()) or fd in self.clients

    def handle(self, fd: int, revents: int, now: float) -> None:
        if self.sock is not None and fd == self.sock.fileno():
            self._accept(now)
            return
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            if revents & (select.POLLIN | select.POLLHUP | select.POLLERR) and not client.closing:
                self._read(client, now)
            if fd in self.clients and (revents & select.POLLOUT or client.outbuf):
                self._write(client, now)
            if client.waiting and len(client.inbuf) > MAX_CLIENT_OUTPUT:
                self._fatal(client, "too many requests sent while one is pending")
            hangup = revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
            if fd in self.clients and hangup and (client.closing or not client.outbuf):
                self._drop(client, now)
        except Exception:  # a client must never take the daemon down
            self.log.exception("app client %d: unexpected error; dropping it", client.id)
            self._drop(client, now)

    # -- connection handling ------------------------------------------------------------
    def _accept(self, now: float) -> None:
        assert self.sock is not None
        for _ in range(16):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("accept on %s failed: %s", self.path, exc)
                return
            sock.setblocking(False)
            if len(self.clients) >= self.max_clients:
                self.counters["rejected"] += 1
                try:
                    sock.send(self._encode({"ok": False, "error": "too many clients"}))
                except OSError:
                    pass
                sock.close()
                continue
            self.counters["connections"] += 1
            client = Client(sock, self._next_id, peer_pid(sock))
            self._next_id += 1
            self.clients[client.fd] = client

    def _read(self, client: Client, now: float) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client, now)
            return
        client.inbuf += data
        self._process_lines(client, now)

    def _process_lines(self, client: Client, now: float) -> None:
        while not client.closing and not client.waiting and client.alive:
            nl = client.inbuf.find(b"\n")
            if nl < 0:
                if len(client.inbuf) > MAX_LINE_BYTES:
                    self._fatal(client, f"request line longer than {MAX_LINE_BYTES} bytes")
                break
            line = bytes(client.inbuf[:nl])
            del client.inbuf[: nl + 1]
            if len(line) > MAX_LINE_BYTES:
                self._fatal(client, f"request line longer than {MAX_LINE_BYTES} bytes")
                break
            if line.strip():
                reply = self.dispatch(client, line, now)
                if reply is not None:
                    self._queue(client, reply)

    def _fatal(self, client: Client, error: str) -> None:
        self.counters["errors"] += 1
        client.inbuf.clear()
        self._queue(client, {"ok": False, "error": error})
        client.closing = True

    def _queue(self, client: Client, reply: Dict[str, Any]) -> None:
        client.outbuf += self._encode(reply)

    def _refill(self, client: Client) -> None:
        """Move queued pushes to the output buffer once the replies before them are out."""
        if client._dropped_unreported and client.pushes:
            client.outbuf += self._encode({"push": "dropped", "count": client._dropped_unreported})
            client._dropped_unreported = 0
        while client.pushes and len(client.outbuf) < PUSH_CHUNK_BYTES:
            line = client.pushes.popleft()
            client.push_bytes -= len(line)
            client.outbuf += line

    def _write(self, client: Client, now: float) -> None:
        while True:
            if not client.outbuf:
                self._refill(client)
                if not client.outbuf:
                    break
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(client, now)
                return
            del client.outbuf[:sent]
        if len(client.outbuf) > MAX_CLIENT_OUTPUT:
            self.log.warning("app client %d does not read its replies; dropping it", client.id)
            self._drop(client, now)
        elif client.closing and not client.outbuf:
            self._drop(client, now)

    def _drop(self, client: Client, now: float, quiet: bool = False) -> None:
        if self.clients.get(client.fd) is client:
            del self.clients[client.fd]
        was_alive, client.alive = client.alive, False
        client.pushes.clear()
        client.push_bytes = 0
        if not quiet:
            self.registry.client_gone(client.id)
        if was_alive:
            for hook in self._gone_hooks:
                try:
                    hook(client, now)
                except Exception:  # a hook must not keep the client around
                    self.log.exception("app client %d: clean-up hook failed", client.id)
        try:
            client.sock.close()
        except OSError:
            pass

    @staticmethod
    def _encode(reply: Dict[str, Any]) -> bytes:
        return json.dumps(reply, separators=(",", ":"), default=str).encode("utf-8") + b"\n"

    # -- requests -----------------------------------------------------------------------
    def dispatch(self, client: Client, line: bytes, now: float) -> Optional[Dict[str, Any]]:
        """Decode one request line and run its op; return the reply, or None if the
        op deferred it (the client then waits, see :meth:`complete`)."""
        self.counters["requests"] += 1
        req_id: Any = None
        try:
            try:
                req = parse_request(line)
            except (ValueError, RecursionError):  # UnicodeError is a ValueError
                raise ApiError("request is not valid UTF-8 JSON") from None
            if not isinstance(req, dict):
                raise ApiError("request must be a JSON object")
            req_id = req.get("id")
            if req_id is not None and not (
                (isinstance(req_id, int) and not isinstance(req_id, bool))
                or (isinstance(req_id, str) and len(req_id) <= MAX_ID_CHARS)
            ):
                req_id = None
                raise ApiError(f"id must be an integer or a string of at most {MAX_ID_CHARS}")
            op = req.get("op")
            if not isinstance(op, str):
                raise ApiError("request lacks a string 'op'")
            handler = self.ops.get(op)
            if handler is None:
                raise ApiError(f"unknown op {op[:64]!r} (known: {', '.join(sorted(self.ops))})")
            reply = handler(client, req, now)
            if reply is DEFER:
                client.waiting, client.waiting_id = True, req_id
                return None
            out: Dict[str, Any] = {"ok": True}
            out.update(reply)
        except ApiError as exc:
            self.counters["errors"] += 1
            out = exc.reply()
        except Exception:
            self.counters["errors"] += 1
            self.log.exception("app API request failed")
            out = {"ok": False, "error": "internal error"}
        if req_id is not None:
            out["id"] = req_id
        return out

    def _op_register(self, client: Client, req: Dict[str, Any], now: float) -> Dict[str, Any]:
        name = req.get("name")
        if not isinstance(name, str) or not APP_NAME_RE.match(name):
            raise ApiError("name must be 1-64 characters of A-Z a-z 0-9 . _ : @ -")
        timeout_ms = req.get("timeout_ms", 0)
        if timeout_ms is None:
            timeout_ms = 0
        if (
            not isinstance(timeout_ms, int)
            or isinstance(timeout_ms, bool)
            or not (timeout_ms == 0 or MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS)
        ):
            raise ApiError(
                "timeout_ms must be 0 (no timeout) or between "
                f"{MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"
            )
        on_disconnect = req.get("on_disconnect", "unhealthy")
        if on_disconnect not in ON_DISCONNECT:
            raise ApiError(f"on_disconnect must be one of {', '.join(ON_DISCONNECT)}")
        app = self.registry.register(client.id, name, timeout_ms, on_disconnect, now)
        return {"name": app.name, "timeout_ms": app.timeout_ms, "on_disconnect": app.on_disconnect}

    def _op_report(self, client: Client, req: Dict[str, Any], now: float) -> Dict[str, Any]:
        app = self.registry.app_of(client.id)
        if app is None:
            raise ApiError("not registered: send register first")
        healthy = _bool(req, "healthy")
        self.registry.report(app, healthy, _reason(req), now)
        return {"name": app.name, "healthy": healthy}

    def _op_unregister(self, client: Client, req: Dict[str, Any], now: float) -> Dict[str, Any]:
        app = self.registry.unregister(client.id)
        return {"name": app.name}

    def _op_status(self, client: Client, req: Dict[str, Any], now: float) -> Dict[str, Any]:
        reply = dict(self.status_provider(now))
        reply["apps"] = self.registry.status(now)
        reply.setdefault("counters", {})["app_api"] = dict(self.counters)
        return reply
