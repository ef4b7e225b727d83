"""Local app health API: a UNIX stream socket speaking newline-delimited JSON.

Each request is one JSON object on one line with an ``op`` key; each gets exactly
one JSON object line back, ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.
Ops live in a table (:attr:`AppServer.ops`) so more can be added with
:meth:`AppServer.add_op`. Everything is bounded: line length, clients, apps and
per-client output. A misbehaving client is answered with an error or dropped;
it never blocks the daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import select
import socket
import stat
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

MAX_LINE_BYTES = 4096
MAX_CLIENTS = 64
MAX_APPS = 64
MAX_CLIENT_OUTPUT = 256 * 1024
MAX_REASON_CHARS = 256
MAX_TIMEOUT_MS = 86400000
MIN_TIMEOUT_MS = 100
ON_DISCONNECT = ("unhealthy", "forget", "keep")
APP_NAME_RE = re.compile(r"[A-Za-z0-9._:@-]{1,64}\Z")
SOCKET_MODE = 0o660


class ApiError(Exception):
    """A request the API refuses; the message goes back as ``error``."""


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


class Client:
    """One connection to the app socket."""

    def __init__(self, sock: socket.socket, client_id: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.id = client_id
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False


Handler = Callable[[Client, Dict[str, Any], float], Dict[str, Any]]


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
        self.counters = {"connections": 0, "rejected": 0, "requests": 0, "errors": 0}
        self.ops: Dict[str, Handler] = {}
        self.add_op("register", self._op_register)
        self.add_op("report", self._op_report)
        self.add_op("unregister", self._op_unregister)
        self.add_op("status", self._op_status)

    def add_op(self, name: str, handler: Handler) -> None:
        """Register (or replace) the handler of one ``op``."""
        self.ops[name] = handler

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
            events = 0 if c.closing else select.POLLIN
            if c.outbuf:
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
            client = Client(sock, self._next_id)
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
        while not client.closing:
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
                self._queue(client, self.dispatch(client, line, now))

    def _fatal(self, client: Client, error: str) -> None:
        self.counters["errors"] += 1
        client.inbuf.clear()
        self._queue(client, {"ok": False, "error": error})
        client.closing = True

    def _queue(self, client: Client, reply: Dict[str, Any]) -> None:
        client.outbuf += self._encode(reply)

    def _write(self, client: Client, now: float) -> None:
        while client.outbuf:
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
        self.clients.pop(client.fd, None)
        if not quiet:
            self.registry.client_gone(client.id)
        try:
            client.sock.close()
        except OSError:
            pass

    @staticmethod
    def _encode(reply: Dict[str, Any]) -> bytes:
        return json.dumps(reply, separators=(",", ":"), default=str).encode("utf-8") + b"\n"

    # -- requests -----------------------------------------------------------------------
    def dispatch(self, client: Client, line: bytes, now: float) -> Dict[str, Any]:
        """Decode one request line and run its op; always return a reply."""
        self.counters["requests"] += 1
        try:
            try:
                req = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError):
                raise ApiError("request is not valid UTF-8 JSON") from None
            if not isinstance(req, dict):
                raise ApiError("request must be a JSON object")
            op = req.get("op")
            if not isinstance(op, str):
                raise ApiError("request lacks a string 'op'")
            handler = self.ops.get(op)
            if handler is None:
                raise ApiError(f"unknown op {op[:64]!r} (known: {', '.join(sorted(self.ops))})")
            reply = handler(client, req, now)
            out: Dict[str, Any] = {"ok": True}
            out.update(reply)
            return out
        except ApiError as exc:
            self.counters["errors"] += 1
            return {"ok": False, "error": str(exc)}
        except Exception:
            self.counters["errors"] += 1
            self.log.exception("app API request failed")
            return {"ok": False, "error": "internal error"}

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
