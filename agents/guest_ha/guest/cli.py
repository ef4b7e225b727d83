"""The guest's command-line tools: ``guest-ha-health`` and ``guest-ha-sg``.

Both talk to the guest daemon over its app socket, through the library clients
(``client.HealthClient``, ``sg_client.ServerGroupClient``). ``python -m
guest_ha.guest.cli health ...`` and ``... sg ...`` run them without the console
scripts (the guest zipapp does the same).

Standard library only; runs on Python 3.8+.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

from . import DEFAULT_APP_SOCKET
from .client import HealthApiError, HealthClient
from .sg_client import ServerGroupClient, ServerGroupError


# -- guest-ha-health ---------------------------------------------------------------------
def _health_parser() -> argparse.ArgumentParser:
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


def health_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``guest-ha-health``; 0 on success, 1 on an API error, 2 on usage."""
    args = _health_parser().parse_args(argv)
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


# -- guest-ha-sg -------------------------------------------------------------------------
SG_PROG = "guest-ha-sg"
STATUS_COLUMNS = (
    ("UUID", "uuid"),
    ("NAME", "display_name"),
    ("HOST", "host"),
    ("STATE", "state"),
    ("POWER_STATE", "power_state"),
    ("TASK_STATE", "task_state"),
)


def _sg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=SG_PROG, description="Server group messaging through the guest-ha guest daemon."
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


def sg_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``guest-ha-sg``: 0 on success, 1 on an error, 2 on bad usage."""
    parser = _sg_parser()
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
        print(f"{SG_PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m guest_ha.guest.cli health|sg ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    tools = {"health": health_main, "sg": sg_main}
    if not args or args[0] not in tools:
        print("usage: python -m guest_ha.guest.cli health|sg ...", file=sys.stderr)
        return 2
    return tools[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
