"""Client of the guest daemon's app health API.

Library use::

    from guest_ha.guest.client import HealthClient

    with HealthClient() as client:
        client.register("db", timeout_ms=5000)
        client.report(True)
        ...
        client.report(False, "replication broken")
        client.unregister()

The ``guest-ha-health`` command is in ``cli.py``. Standard library only; runs on
Python 3.8+.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from . import DEFAULT_APP_SOCKET
from .app_socket import AppApiError, AppConnection, DaemonUnavailable, encode_request

__all__ = ["DaemonUnavailable", "HealthApiError", "HealthClient"]

HealthApiError = AppApiError
"""The base of every app API error (the server group client's too)."""


class HealthClient:
    """One connection to the app socket; one request at a time, one reply each."""

    def __init__(self, path: str = DEFAULT_APP_SOCKET, timeout: Optional[float] = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._conn: Optional[AppConnection] = AppConnection(path, timeout)

    def __enter__(self) -> HealthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (an app that registered without unregistering is handled
        according to its ``on_disconnect``)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, op: str, **fields: Any) -> Dict[str, Any]:
        """Send one request; return the reply, or raise :class:`HealthApiError`."""
        if self._conn is None:
            raise HealthApiError("client is closed")
        req: Dict[str, Any] = {"op": op}
        req.update(fields)
        self._conn.send(encode_request(req))
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            reply = self._conn.read_message(left)
            if reply is None:
                raise DaemonUnavailable(f"no reply from {self.path} in time")
            if "push" not in reply:  # pushes (server group) are not for this client
                break
        if not reply.get("ok"):
            raise HealthApiError(str(reply.get("error") or "request failed"))
        return reply

    def register(
        self, name: str, timeout_ms: int = 0, on_disconnect: str = "unhealthy"
    ) -> Dict[str, Any]:
        """Register this connection as app ``name``.

        ``timeout_ms`` > 0: the app is unhealthy when it does not report for that
        long. ``on_disconnect``: what closing without unregistering means:
        ``unhealthy`` (default), ``forget`` or ``keep`` (last report stays).
        """
        return self.request(
            "register", name=name, timeout_ms=timeout_ms, on_disconnect=on_disconnect
        )

    def report(self, healthy: bool, reason: str = "") -> Dict[str, Any]:
        """Report the registered app healthy or not (``reason`` is cut to 256 characters)."""
        return self.request("report", healthy=bool(healthy), reason=reason)

    def unregister(self) -> Dict[str, Any]:
        """Remove the registration; the app no longer counts towards health."""
        return self.request("unregister")

    def status(self) -> Dict[str, Any]:
        """The daemon's state: heartbeat, health, checks, apps and counters."""
        return self.request("status")
