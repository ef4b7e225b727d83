"""``guest-ha-controller``: run the controller server, or show its status."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import urllib.request
from typing import Any, List, Optional

DEFAULT_CONFIG = "/etc/guest-ha/controller.conf"


def cmd_run(config_files: List[str], log_level: str) -> int:
    from ..messaging import options as messaging_options
    from ..messaging.rpc import get_transport, serve_controller, stop_server
    from ..runtime import freeze_startup_heap
    from . import options
    from .service import ControllerService, build_reporters

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    conf = options.register_opts(messaging_options.register_opts())
    try:
        conf = messaging_options.configure(config_files=config_files)
        reporters = build_reporters(conf, conf.transport_url)
    except Exception as exc:  # oslo.config and reporter set-up errors are configuration errors
        print(f"guest-ha-controller: configuration error: {exc}", file=sys.stderr)
        return 2
    c = conf.controller
    transport = get_transport()
    router = None
    if conf.server_groups.enabled:
        from .server_groups import build_router, start_datagram_receiver, start_listeners

        try:
            router = build_router(conf, transport)
        except Exception as exc:  # bad clouds.yaml etc.: a configuration error
            print(f"guest-ha-controller: [server_groups]: {exc}", file=sys.stderr)
            return 2
    try:
        from .origin import build_origin_check

        origin = build_origin_check(conf)
    except Exception as exc:  # bad clouds.yaml for mode=nova: a configuration error
        print(f"guest-ha-controller: [report_origin]: {exc}", file=sys.stderr)
        return 2
    service = ControllerService(
        database=c.database,
        reporters=reporters,
        host=conf.guest_ha.host,
        workers=c.dispatch_workers,
        lease_s=c.lease_s,
        retry_initial_s=c.retry_initial_s,
        retry_max_s=c.retry_max_s,
        server_groups=router,
        origin=origin,
    )
    service.start()
    if router is not None:
        start_datagram_receiver(router, conf, service.endpoint)
        start_listeners(router, conf)
    if c.status_listen:
        service.serve_http(c.status_listen)
    server = serve_controller(transport, [service.endpoint], conf.guest_ha.host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.getLogger("guest_ha.controller").info(
        "controller %s serving; reporters: %s", conf.guest_ha.host, ", ".join(reporters)
    )
    freeze_startup_heap()
    stop.wait()
    stop_server(server)
    service.stop()
    return 0


def format_status(status: Any) -> str:
    lines = [f"controller {status['host']}, up {status['uptime_s']:.0f} s"]
    lines.append("reporters:")
    for name, rep in sorted(status["reporters"].items()):
        latency = "-" if rep["mean_latency_ms"] is None else f"{rep['mean_latency_ms']} ms"
        lines.append(
            f"  {name:<13} sent {rep['sent']:<6} errors {rep['errors']:<5} "
            f"mean latency {latency}"
            + (f"  last error: {rep['last_error']}" if rep["last_error"] else "")
        )
    lines.append("computes:")
    for host, facts in sorted(status["computes"].items()):
        lines.append(
            f"  {host:<20} events {facts.get('events', 0):<6} spool {facts.get('spool_depth', '-')}"
        )
    lines.append(f"deliveries: {status['deliveries']}")
    lines.append("recent faults:")
    for fault in status["recent_faults"][:10]:
        lines.append(f"  {fault['instance_uuid']}  {fault['kind']:<16} {fault['compute_host']}")
    return "\n".join(lines)


def cmd_status(url: str, as_json: bool) -> int:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/status", timeout=5) as response:
            status = json.load(response)
    except (OSError, ValueError) as exc:
        print(f"guest-ha-controller: cannot read status from {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if as_json else format_status(status))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="guest-ha-controller", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the controller server (the default)")
    run.add_argument(
        "--config-file",
        action="append",
        default=None,
        help=f"oslo.config file (default {DEFAULT_CONFIG}); repeatable",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    status = sub.add_parser("status", help="print connected computes, faults, reporter health")
    status.add_argument("--url", default="http://127.0.0.1:9797")
    status.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "status":
        return cmd_status(args.url, args.json)
    files = getattr(args, "config_file", None) or [DEFAULT_CONFIG]
    return cmd_run(files, getattr(args, "log_level", "info"))


if __name__ == "__main__":
    sys.exit(main())
