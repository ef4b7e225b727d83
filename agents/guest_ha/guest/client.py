"""Client of the guest daemon's app health API, and the ``guest-ha-health`` CLI.

Library use::

    from guest_ha.guest.client import HealthClient

    with HealthClient() as client:
        client.register("db", timeout_ms=5000)
        client.report(True)
        ...
        client.report(False, "replication broken")
        client.unregister()

Standard library only; runs on Python 3.8+.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence

from . import DEFAULT_APP_SOCKET

MAX_REPLY_BYTES = 4 * 1024 * 1024


class HealthApiError(Exception):
    """The daemon refused a request (its ``error`` text is the message) or could not be used."""


class DaemonUnavailable(HealthApiError):
    """The daemon's socket could not be reached, or the connection broke."""


class HealthClient:
    """One connection to the app socket; one request at a time, one reply each."""

    def __init__(self, path: str = DEFAULT_APP_SOCKET, timeout: Optional[float] = 5.0) -> None:
        self.path = path
        self._buf = b""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(
                f"cannot connect to {path}: {exc.strerror or exc} (is guest-ha-guestd running?)"
            ) from None
        self._sock: Optional[socket.socket] = sock

    def __enter__(self) -> HealthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (an app that registered without unregistering is handled
        according to its ``on_disconnect``)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, op: str, **fields: Any) -> Dict[str, Any]:
        """Send one request; return the reply, or raise :class:`HealthApiError`."""
        if self._sock is None:
            raise HealthApiError("client is closed")
        req: Dict[str, Any] = {"op": op}
        req.update(fields)
        line = json.dumps(req, separators=(",", ":")).encode("utf-8") + b"\n"
        try:
            self._sock.sendall(line)
            while True:
                reply = self._read_line()
                try:
                    obj = json.loads(reply.decode("utf-8"))
                except ValueError:
                    raise HealthApiError("daemon sent a reply that is not JSON") from None
                if not isinstance(obj, dict):
                    raise HealthApiError("daemon sent a reply that is not a JSON object")
                if "push" not in obj:  # pushes (server group) are not for this client
                    break
        except socket.timeout:
            raise DaemonUnavailable(f"no reply from {self.path} in time") from None
        except OSError as exc:
            raise DaemonUnavailable(f"connection to {self.path} failed: {exc}") from None
        if not obj.get("ok"):
            raise HealthApiError(str(obj.get("error") or "request failed"))
        return obj

    def _read_line(self) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise DaemonUnavailable("daemon closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY_BYTES:
                raise HealthApiError("reply too long")
        line, _, self._buf = self._buf.partition(b"\n")
        return line

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


# -- CLI ----------------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guest-ha-health", description="Query and report to the guest-ha guest daemon."
    )
    parser.add_argument(
        "--socket", default=DEFAULT_APP_SOCKET, help=f"app socket (default {DEFAULT_APP_SOCKET})"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for a reply (default 5)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    status = sub.add_parser("status", help="show the daemon's state")
    status.add_argument("--json", action="store_true", help="print the raw JSON reply")
    report = sub.add_parser(
        "report", help="report an app healthy or unhealthy (kept after this command exits)"
    )
    report.add_argument("name", help="app name")
    group = report.add_mutually_exclusive_group(required=True)
    group.add_argument("--healthy", dest="healthy", action="store_true")
    group.add_argument("--unhealthy", dest="healthy", action="store_false")
    report.add_argument("--reason", default="", help="why (shown to the host, 256 chars max)")
    report.add_argument(
        "--timeout-ms",
        type=int,
        default=0,
        help="the report expires (app becomes unhealthy) after this many ms; 0 = never",
    )
    unreg = sub.add_parser("unregister", help="forget an app (e.g. one that was removed)")
    unreg.add_argument("name", help="app name")
    return parser


def _fmt_health(healthy: Any, reason: str) -> str:
    word = {True: "healthy", False: "unhealthy", None: "pending"}.get(healthy, str(healthy))
    return f"{word}: {reason}" if reason and healthy is not True else word


def format_status(reply: Dict[str, Any]) -> str:
    """Human-readable rendering of a ``status`` reply."""
    d = reply.get("daemon", {})
    h = reply.get("health", {})
    lines: List[str] = [
        f"guest-ha-guestd {d.get('version', '?')} (pid {d.get('pid', '?')}), "
        f"up {d.get('uptime_s', 0):.0f} s",
        f"name:       {d.get('name', '?')} (invocation {d.get('invocation_id', '?')})",
        f"port:       {d.get('port', '?')} ({d.get('transport', '?')}): {d.get('port_state', '?')}",
        f"heartbeat:  {d.get('heartbeat_state', '?')}, interval "
        f"{d.get('effective_interval_ms', '?')} ms "
        f"(requested {d.get('requested_interval_ms', '?')})",
        f"health:     {_fmt_health(h.get('healthy'), h.get('reason', ''))}",
    ]
    checks = reply.get("checks", [])
    lines.append(f"checks:     {len(checks)}")
    for c in checks:
        running = " (running)" if c.get("running") else ""
        lines.append(
            f"  {c.get('name')}: {_fmt_health(c.get('healthy'), c.get('reason', ''))}{running}"
        )
    sg = reply.get("server_group")
    if isinstance(sg, dict):
        owner = sg.get("owner")
        who = "none" if not owner else f"client {owner.get('client')} (pid {owner.get('pid')})"
        lines.append(f"server group: subscriber {who}")
    apps = reply.get("apps", [])
    lines.append(f"apps:       {len(apps)}")
    for a in apps:
        conn = "connected" if a.get("connected") else "disconnected"
        timeout = a.get("timeout_ms") or 0
        extra = f"{conn}, timeout {timeout} ms" if timeout else conn
        lines.append(
            f"  {a.get('name')}: {_fmt_health(a.get('healthy'), a.get('reason', ''))} ({extra})"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``guest-ha-health``; 0 on success, 1 on an API error, 2 on usage."""
    args = _build_parser().parse_args(argv)
    try:
        with HealthClient(args.socket, timeout=args.timeout) as client:
            if args.command == "status":
                reply = client.status()
                if args.json:
                    print(json.dumps(reply, indent=2, sort_keys=True))
                else:
                    print(format_status(reply))
            elif args.command == "report":
                client.register(args.name, timeout_ms=args.timeout_ms, on_disconnect="keep")
                client.report(args.healthy, args.reason)
            elif args.command == "unregister":
                client.register(args.name, on_disconnect="forget")
                client.unregister()
    except HealthApiError as exc:
        print(f"guest-ha-health: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
