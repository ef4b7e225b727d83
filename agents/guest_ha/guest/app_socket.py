"""One connection to the guest daemon's app socket, shared by the app clients.

The app API (docs/guest-daemon.md) is newline-delimited JSON over a UNIX stream
socket: one request object per line from the app, reply and push objects per
line from the daemon. :class:`AppConnection` owns the socket and the line
buffer (bounded); the health client (``client.py``) and the server group
client (``sg_client.py``) add their requests on top of it.

Standard library only; runs on Python 3.8+.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from typing import Any, Dict, Optional

MAX_LINE_BYTES = 8 * 1024 * 1024
"""Longest line accepted from the daemon; a longer one ends the connection."""

LOG = logging.getLogger("guest_ha.app_socket")


class AppApiError(Exception):
    """The daemon refused a request (its ``error`` text is the message) or could not be used.

    ``guest_ha.guest.client.HealthApiError`` is this class, under its public name."""


class DaemonUnavailable(AppApiError):
    """The daemon's socket could not be reached, or the connection broke."""


def encode_request(request: Dict[str, Any]) -> bytes:
    """One request line: compact UTF-8 JSON and a newline.

    Raises TypeError or ValueError for what JSON cannot carry (NaN, lone
    surrogates, objects)."""
    text = json.dumps(request, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


class AppConnection:
    """The socket and its line reader. Not thread-safe: callers serialise reads."""

    def __init__(self, path: str, connect_timeout: Optional[float] = 5.0) -> None:
        self.path = path
        self.lost: Optional[str] = None
        """Why the connection broke, once it did."""
        self._buf = bytearray()
        self._closed = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(connect_timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(
                f"cannot connect to {path}: {exc.strerror or exc} (is guest-ha-guestd running?)"
            ) from None
        sock.settimeout(None)
        self._sock = sock

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Shut the socket down (wakes a reader blocked in another thread) and close it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def send(self, line: bytes) -> None:
        """Send one encoded request line (see :func:`encode_request`)."""
        if self._closed:
            raise AppApiError("client is closed")
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise DaemonUnavailable(f"connection to {self.path} failed: {exc}") from None

    def read_message(self, timeout: Optional[float]) -> Optional[Dict[str, Any]]:
        """The next JSON object from the daemon, or None when ``timeout`` (seconds;
        None waits for ever) passes first. Lines that are not JSON objects are
        skipped. Raises :class:`DaemonUnavailable` when the connection breaks."""
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
                raise self._broken(f"connection to {self.path} failed: {exc}") from None
            if not chunk:
                raise self._broken("the daemon closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_LINE_BYTES:
                raise self._broken("line from the daemon too long")

    def _broken(self, why: str) -> DaemonUnavailable:
        self.lost = self.lost or why
        return DaemonUnavailable(why)
