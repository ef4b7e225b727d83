"""Latency and exactly-once delivery of faults from a compute agent to the
reporters, over a real RabbitMQ node.

Simulated VMs (in this process) toggle their health; the real compute agent
spools and forwards each event; a real controller process reports it. For the
``notification`` reporter the latency is measured to the moment a listener in
this process receives it. With ``--nova``, the ``nova`` reporter calls a real
nova-api (Keystone-authenticated) through a relay in this process
(``endpoint_override``, see ``_arrival_proxy.py``): ``nova_report_ms_*`` is to
the ``os-resetState`` request arriving at nova-api's endpoint, as the target
defines it, and ``nova_done_ms_*`` to nova-api having completed it (read from
the controller's store), which adds nova-api's own processing.

    python bench/fault_pipeline.py --faults 200 [--rate 5] [--nova]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import Counter

import _bench
from _arrival_proxy import ArrivalProxy
from guest_ha.runtime import freeze_startup_heap
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.controller import ControllerProcess, NotificationCollector
from guest_ha_dev.testing.rabbitmq import RabbitMQNode


def wall(ts: str) -> float:
    return (
        datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=datetime.timezone.utc)
        .timestamp()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--faults", type=int, default=100, help="fault events to send")
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--rate", type=float, default=5.0, help="faults per second")
    parser.add_argument("--nova", action="store_true", help="also report to a real nova-api")
    parser.add_argument(
        "--workers", type=int, default=4, help="[controller] dispatch_workers (per reporter)"
    )
    parser.add_argument("--warmup", type=int, default=10, help="faults sent first and not measured")
    args = parser.parse_args()
    if args.vms / args.rate < 0.6:
        # Each VM recovers 0.3 s after its fault; its next fault must come later.
        parser.error("each VM faults every VMS/RATE seconds: make that at least 0.6 s")
    workdir = tempfile.mkdtemp(prefix="gha-bench-")
    cloud = None
    proxy = None
    try:
        with RabbitMQNode() as rabbit, VmSimulator(os.path.join(workdir, "vms")) as sim:
            reporters = ["notification"]
            extra: dict = {}
            if args.nova:
                from guest_ha_dev.testing.openstack import OpenStackCloud

                _bench.progress("starting Keystone and nova-api")
                cloud = OpenStackCloud().start()
                clouds = cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml"))
                proxy = ArrivalProxy(cloud.nova_url, rb"POST \S*/servers/([0-9a-f-]{36})/action ")
                extra = {
                    "reporter_nova": {
                        "clouds_yaml": str(clouds),
                        "cloud": "guest-ha",
                        "endpoint_override": proxy.url,
                    }
                }
                reporters.append("nova")
            extra["controller"] = {"dispatch_workers": str(args.workers)}
            vms = [sim.add_vm(interval_ms=100) for _ in range(args.vms)]
            if cloud is not None:
                cloud.create_host("compute-a")
                cloud.create_flavor("bench", {})
                for v in vms:
                    cloud.create_server(v.uuid, v.name, "bench", "compute-a")
            collector = NotificationCollector(rabbit.url)
            db = os.path.join(workdir, "controller.sqlite")
            with (
                ControllerProcess(
                    workdir, rabbit.url, host="ctl-1", reporters=reporters, database=db, extra=extra
                ),
                EngineProcess(
                    os.path.join(workdir, "compute"),
                    vms,
                    extra={
                        "controller": {
                            "enabled": True,
                            "transport_url": rabbit.url,
                            "messaging_config": None,
                            "host": "compute-a",
                            "spool_dir": os.path.join(workdir, "spool"),
                        }
                    },
                ) as engine,
            ):
                for vm in vms:
                    engine.wait_event("registered", vm.uuid, timeout=30)
                # One VM at a time turns unhealthy, at --rate faults per second, and
                # recovers 0.3 s later: latency is measured, not throughput.
                period = 1.0 / args.rate

                def send(count: int) -> None:
                    next_at = time.monotonic()
                    for sent in range(count):
                        vm = vms[sent % len(vms)]
                        sim.set_health(vm.uuid, False, "bench fault")
                        threading.Timer(0.3, sim.set_health, (vm.uuid, True)).start()
                        next_at += period
                        time.sleep(max(0.0, next_at - time.monotonic()))

                all_faults = lambda: [e for e in engine.events() if e["fault"]]  # noqa: E731
                if args.warmup:
                    # Not measured: the first calls pay for the Keystone token, the
                    # reporters' connections and the services' own cold start.
                    _bench.progress(f"warming up with {args.warmup} faults")
                    send(args.warmup)
                    wait_until(lambda: len(all_faults()) >= args.warmup, 120, interval=0.2)
                    if proxy is not None:
                        wait_until(lambda: len(proxy.arrivals) >= args.warmup, 120, interval=0.2)
                    time.sleep(2.0)
                freeze_startup_heap()  # the measuring process must not add collector pauses
                measure_from = time.monotonic()
                faults = lambda: [  # noqa: E731
                    e for e in all_faults() if e["monotonic"] >= measure_from
                ]
                _bench.progress(f"sending {args.faults} faults")
                send(args.faults)
                wait_until(lambda: len(faults()) >= args.faults, 120, interval=0.2)
                wait_until(
                    lambda: (
                        len(
                            {
                                g["payload"]["idempotency_key"]
                                for g in collector.got
                                if g["payload"]["fault"]
                            }
                        )
                        >= len(faults())
                    ),
                    120,
                    interval=0.2,
                )
                if proxy is not None:  # every fault's os-resetState reached nova-api
                    wait_until(lambda: len(proxy.arrivals) >= len(all_faults()), 120, interval=0.2)
                time.sleep(1.0)
                events = faults()
            collector.stop()
            got = {}
            counts: Counter = Counter()
            for g in collector.got:
                key = (g["payload"]["instance_uuid"], g["payload"]["monotonic"])
                counts[key] += 1
                got.setdefault(key, g["received_at"])
            latencies = [
                (got[(e["instance_uuid"], e["monotonic"])] - e["monotonic"]) * 1000
                for e in events
                if (e["instance_uuid"], e["monotonic"]) in got
            ]
            lost = sum(1 for e in events if (e["instance_uuid"], e["monotonic"]) not in got)
            duplicates = sum(n - 1 for n in counts.values() if n > 1)
            import json

            stages = (
                sqlite3.connect(db)
                .execute(
                    "SELECT e.body, e.received_at, d.done_at FROM deliveries d "
                    "JOIN events e ON e.key = d.key "
                    "WHERE d.reporter = 'notification' AND e.fault = 1"
                )
                .fetchall()
            )
            stages = [r for r in stages if json.loads(r[0])["monotonic"] >= measure_from]
            to_controller = [(r[1] - wall(json.loads(r[0])["time"])) * 1000 for r in stages]
            in_controller = [(r[2] - r[1]) * 1000 for r in stages if r[2]]
            nova_ms: list = []
            nova_done_ms: list = []
            if args.nova:
                rows = (
                    sqlite3.connect(db)
                    .execute(
                        "SELECT e.body, d.done_at FROM deliveries d JOIN events e ON e.key = d.key "
                        "WHERE d.reporter = 'nova' AND d.state = 'done' AND e.fault = 1"
                    )
                    .fetchall()
                )
                rows = [r for r in rows if json.loads(r[0])["monotonic"] >= measure_from]
                nova_done_ms = [
                    (done - wall(json.loads(body)["time"])) * 1000 for body, done in rows
                ]
                # Arrival at nova-api: the first request for that server after the event.
                arrivals = sorted(proxy.arrivals)
                for e in events:
                    at = wall(e["time"])
                    first = next(
                        (t for t, u in arrivals if u == e["instance_uuid"] and t >= at), None
                    )
                    if first is not None:
                        nova_ms.append((first - at) * 1000)
    finally:
        if proxy is not None:
            proxy.close()
        if cloud is not None:
            cloud.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "fault_pipeline",
        "faults": len(events),
        "report_ms_p50": round(_bench.percentile(latencies, 50), 2),
        "report_ms_p99": round(_bench.percentile(latencies, 99), 2),
        "report_ms_max": round(max(latencies), 2) if latencies else None,
        "lost": lost,
        "to_controller_ms_p50": round(_bench.percentile(to_controller, 50), 2),
        "to_controller_ms_p99": round(_bench.percentile(to_controller, 99), 2),
        "controller_to_reported_ms_p99": round(_bench.percentile(in_controller, 99), 2),
        "duplicates": duplicates,
        "dispatch_workers": args.workers,
        "warmup_faults": args.warmup,
        "machine": _bench.machine(),
    }
    if args.nova:
        result["nova_reported"] = len(nova_ms)
        result["nova_report_ms_p50"] = round(_bench.percentile(nova_ms, 50), 2)
        result["nova_report_ms_p99"] = round(_bench.percentile(nova_ms, 99), 2)
        result["nova_done_ms_p50"] = round(_bench.percentile(nova_done_ms, 50), 2)
        result["nova_done_ms_p99"] = round(_bench.percentile(nova_done_ms, 99), 2)
    _bench.emit(result)


if __name__ == "__main__":
    main()
