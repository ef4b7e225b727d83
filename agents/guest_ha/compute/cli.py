"""``guest-ha-compute``: run the compute agent, or show the status of its VMs."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from typing import Any, Dict, List, Optional

from .config import DEFAULT_STATUS_SOCKET, ConfigError, load_config, parse_config
from .engine import HeartbeatEngine
from .sinks import build_sink

DEFAULT_CONFIG = "/etc/guest-ha/compute.yaml"


def raise_fd_limit() -> None:
    """One socket per VM: lift the soft open-file limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config) if args.config else parse_config({})
    except ConfigError as exc:
        print(f"guest-ha-compute: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, (args.log_level or config.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    raise_fd_limit()
    sink = build_sink(config.events.log, config.events.jsonl)
    link = None
    if config.controller.enabled:
        try:
            from .controller_link import ControllerLink

            link = ControllerLink(config)
            sink.sinks.append(link.sink)
        except Exception as exc:
            print(f"guest-ha-compute: cannot set up the controller link: {exc}", file=sys.stderr)
            return 2
    engine = HeartbeatEngine(config, sink)
    if link is not None:
        link.attach(engine)

    def _stop(signum: int, _frame: Any) -> None:
        logging.getLogger("guest_ha.compute").info("signal %d: stopping", signum)
        engine.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logging.getLogger("guest_ha.compute").info(
        "compute agent starting: %d configured VM(s), socket_dir=%s",
        len(config.vms),
        config.socket_dir,
    )
    monitor = None
    if config.libvirt.enabled:
        from .libvirt_monitor import LibvirtMonitor

        try:
            monitor = LibvirtMonitor(engine, config.libvirt)
        except RuntimeError as exc:
            print(f"guest-ha-compute: {exc}", file=sys.stderr)
            return 2
        _enable_recovery(engine, config, monitor)
        monitor.start()
    metrics = None
    if config.metrics_listen:
        from .metrics import MetricsServer

        depth = (lambda: link.forwarder.spool.depth) if link is not None else None
        try:
            metrics = MetricsServer(engine, config.metrics_listen, depth).start()
        except OSError as exc:
            print(
                f"guest-ha-compute: metrics_listen {config.metrics_listen}: {exc}", file=sys.stderr
            )
            return 2
    from ..runtime import freeze_startup_heap

    freeze_startup_heap()
    try:
        engine.run()
    finally:
        if metrics is not None:
            metrics.close()
        if monitor is not None:
            monitor.stop()
        if link is not None:
            link.close()
        sink.close()
    return 0


def _enable_recovery(engine: Any, config: Any, monitor: Any) -> None:
    """Recovery acts through libvirt. In Nova mode only when the operator said so:
    there, Masakari and the VNF manager own recovery (docs/compute-agent.md)."""
    from .recovery import RecoveryController

    log = logging.getLogger("guest_ha.compute")
    if config.libvirt.mode == "nova" and not config.recovery.in_nova_mode:
        if config.recovery.enabled:
            log.warning(
                "recovery.enabled is ignored in nova mode (Masakari and the VNF manager "
                "own recovery there); set recovery.in_nova_mode: true to act anyway"
            )
        return
    engine.recovery = RecoveryController(engine, config.recovery, monitor.recover)
    if config.recovery.enabled:
        log.info(
            "recovery on: actions %s, hint %s, delay %g s, at most %d per %g s",
            ",".join(config.recovery.actions),
            "honoured" if config.recovery.honour_hint else "ignored",
            config.recovery.delay_s,
            config.recovery.max_actions,
            config.recovery.window_s,
        )


def fetch_status(path: str, timeout: float = 2.0) -> Dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks: List[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def _state(vm: Dict[str, Any]) -> str:
    recovery = vm.get("recovery") or {}
    if recovery.get("state") not in (None, "idle"):
        return f"{vm['health']}, recovery {recovery['state']} ({recovery.get('action')})"
    if vm.get("lifecycle") and vm["health"] == "healthy":
        return f"suspended ({vm['lifecycle']})"
    if vm["registered"] or vm["health"] != "healthy":
        return str(vm["health"])
    return str(vm["heartbeat_state"])


def format_status(status: Dict[str, Any]) -> str:
    headers = ["DOMAIN", "INSTANCE", "CHANNEL", "REGISTERED", "INTERVAL", "RTT", "MISSES", "STATE"]
    rows = [headers]
    for vm in status.get("vms", []):
        rows.append(
            [
                str(vm["domain"]),
                str(vm["instance_uuid"]),
                str(vm["channel"]),
                "yes" if vm["registered"] else "no",
                "-" if vm["interval_ms"] is None else f"{vm['interval_ms']} ms",
                "-" if vm["last_rtt_ms"] is None else f"{vm['last_rtt_ms']:.1f} ms",
                str(vm["misses"]),
                _state(vm),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"{len(rows) - 1} VM(s), agent up {status.get('uptime_s', 0):.0f} s")
    for entry in status.get("channel_unavailable", []):
        lines.append(f"NO CHANNEL {entry['domain']} {entry['instance_uuid']}: {entry['reason']}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        status = fetch_status(args.socket)
    except (OSError, ValueError) as exc:
        print(
            f"guest-ha-compute: cannot read status from {args.socket}: {exc} "
            "(is the agent running?)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="guest-ha-compute", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the compute agent (the default)")
    for p, default in ((parser, None), (run, argparse.SUPPRESS)):
        p.add_argument("--config", default=default, help=f"YAML config (default {DEFAULT_CONFIG})")
        p.add_argument(
            "--log-level", default=default, choices=["debug", "info", "warning", "error"]
        )
    status = sub.add_parser("status", help="print the VMs this agent heartbeats")
    status.add_argument("--socket", default=DEFAULT_STATUS_SOCKET)
    status.add_argument("--json", action="store_true", help="print raw JSON")
    args = parser.parse_args(argv)
    if args.command == "status":
        return cmd_status(args)
    if args.config is None:
        args.config = DEFAULT_CONFIG
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
