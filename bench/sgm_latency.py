"""Server group broadcast latency through the controller, over a real RabbitMQ node.

What runs:

- a real RabbitMQ node (``guest_ha_dev.testing.rabbitmq``);
- a real ``guest-ha-controller`` process with ``[server_groups]`` enabled,
  membership ``file``: G groups of M members in a YAML groups file;
- two "compute hosts" in this process: real oslo.messaging RPC servers on
  their per-host topics (``serve_compute``) recording each ``sg_deliver`` cast
  and its arrival time; members alternate between the two hosts. They report
  their VMs to the controller with ``vm_states`` as compute agents do.

Channels are simulated: this process casts ``sg_relay`` (what a compute agent
sends for a guest's ``broadcast``) at ``--rate`` per second, round-robin over
every member of every group, and measures from the cast to the arrival of the
``sg_deliver`` at the recording compute servers. The guest <-> compute agent
hop (virtio-serial) is not in the measurement.

    python bench/sgm_latency.py --groups 10 --members 4 --rate 500 --duration 20

``broadcast_ms_*``: from the cast to the arrival of the last of its M-1
deliveries (broadcasts delivered to every peer); ``delivery_ms_*``: per peer.
``lost``: expected peer deliveries (broadcasts x (M-1)) not received 5 s
after the last cast.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
import uuid as uuidlib
from typing import Any, Dict, List

import _bench
from guest_ha.messaging import options
from guest_ha.messaging.rpc import ControllerClient, get_transport, serve_compute, stop_server
from guest_ha.runtime import freeze_startup_heap
from guest_ha_dev.sim.harness import wait_until
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

HOSTS = ("bench-compute-a", "bench-compute-b")


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: List[tuple] = []  # (monotonic_ns, target uuid, msg_type, data)
        self.casts = 0

    def sg_deliver(self, ctxt: Dict[str, Any], deliveries: List[Dict[str, Any]]) -> None:
        now = time.monotonic_ns()
        with self.lock:
            self.casts += 1
            for d in deliveries:
                data = d.get("fields", {}).get("data")
                self.arrivals.append((now, d.get("instance_uuid"), d.get("msg_type"), data))

    def ping(self, ctxt: Dict[str, Any]) -> Dict[str, Any]:
        return {}


def _worst_second(
    per: Dict[int, List[int]], sent_at: Dict[int, int], start_ns: int, peers: int
) -> Dict[str, Any]:
    """The second of the run (from the first send) with the highest broadcast
    p99: tells one stall apart from a tail spread over the whole run."""
    by_second: Dict[int, List[float]] = {}
    for i, v in per.items():
        if len(v) == peers:
            by_second.setdefault((sent_at[i] - start_ns) // 10**9, []).append(max(v) / 1e6)
    if not by_second:
        return {}
    second, values = max(by_second.items(), key=lambda kv: _bench.percentile(kv[1], 99))
    return {"second": second, "p99_ms": round(_bench.percentile(values, 99), 2)}


def run_through_agents(args: argparse.Namespace) -> Dict[str, Any]:
    """Guest -> compute agent -> controller -> compute agent -> guest, with the
    guests simulated in this process (guest_ha_dev.sim) behind real compute agents."""
    from guest_ha.protocol import GUEST_TO_HOST, SERVER_GROUP, make
    from guest_ha_dev.sim import VmSimulator
    from guest_ha_dev.sim.harness import EngineProcess

    workdir = tempfile.mkdtemp(prefix="gha-bench-sgm-")
    arrivals: List[tuple] = []
    lock = threading.Lock()

    def on_sg(uuid: str, msg: Any, now_ns: int) -> None:
        if msg.msg_type == "broadcast" and isinstance(msg["data"], dict):
            with lock:
                arrivals.append((now_ns, uuid, msg["data"].get("i")))

    try:
        with (
            RabbitMQNode() as rabbit,
            VmSimulator(os.path.join(workdir, "vms"), on_server_group=on_sg) as sim,
        ):
            groups_file = os.path.join(workdir, "groups.yaml")
            with open(groups_file, "w", encoding="utf-8") as fh:
                fh.write("groups: {}\n")  # membership from the compute agents' reports
            members = []
            for g in range(args.groups):
                for _ in range(args.members):
                    members.append((f"g{g}", sim.add_vm(interval_ms=1000)))
            host_of = {vm.uuid: HOSTS[i % len(HOSTS)] for i, (_, vm) in enumerate(members)}
            # The agents' oslo.config file: which transport server-group traffic takes.
            messaging_config = os.path.join(workdir, "messaging.conf")
            with open(messaging_config, "w", encoding="utf-8") as fh:
                fh.write(f"[guest_ha]\nserver_group_transport = {args.sg_transport}\n")
            with ControllerProcess(
                workdir,
                rabbit.url,
                host="bench-ctl",
                extra={
                    "guest_ha": {"server_group_transport": args.sg_transport},
                    "server_groups": {
                        "enabled": "true",
                        "membership": "file",
                        "groups_file": groups_file,
                        "listen_notifications": "false",
                        "cast_interval_ms": str(args.cast_interval_ms),
                    },
                },
            ) as controller:
                engines = []
                for h in HOSTS:
                    vms = [
                        {
                            "uuid": vm.uuid,
                            "name": vm.name,
                            "socket": vm.socket_path,
                            "server_group": group,
                        }
                        for group, vm in members
                        if host_of[vm.uuid] == h
                    ]
                    engines.append(
                        EngineProcess(
                            os.path.join(workdir, h),
                            extra={
                                "vms": vms,
                                "controller": {
                                    "enabled": True,
                                    "transport_url": rabbit.url,
                                    "messaging_config": messaging_config,
                                    "host": h,
                                    "spool_dir": os.path.join(workdir, h, "spool"),
                                },
                            },
                        ).start()
                    )
                try:
                    _bench.progress("waiting for registration and membership")
                    for e in engines:
                        for _, vm in members:
                            if e.workdir.endswith(host_of[vm.uuid]):
                                e.wait_event("registered", vm.uuid, timeout=60)
                    wait_until(
                        lambda: (
                            controller.status()["server_groups"]["known_instances"] >= len(members)
                        ),
                        60,
                    )
                    time.sleep(1.0)
                    # The measuring process must not add collector pauses of its own.
                    freeze_startup_heap()
                    total = int(args.rate * args.duration)
                    sent_at: Dict[int, int] = {}
                    padding = "x" * max(0, args.payload - 40)
                    _bench.progress(f"{total} broadcasts at {args.rate}/s through the agents")
                    meter = _bench.CpuMeter(
                        {
                            "simulated_guests": os.getpid(),
                            "rabbitmq": rabbit.pid or 0,
                            "controller": controller.proc.pid if controller.proc else 0,
                            **{f"agent_{h[-1]}": e.pid for h, e in zip(HOSTS, engines)},
                        }
                    )
                    meter.start()
                    start = time.monotonic()
                    start_ns = time.monotonic_ns()
                    for i in range(total):
                        delay = start + i / args.rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                        _, vm = members[i % len(members)]
                        sent_at[i] = time.monotonic_ns()
                        sim.send_message(
                            vm.uuid,
                            make(
                                SERVER_GROUP,
                                "broadcast",
                                GUEST_TO_HOST,
                                data={"i": i, "p": padding},
                            ),
                            wait=False,
                        )
                    send_s = time.monotonic() - start
                    cpu_pct = meter.stop()
                    expected = total * (args.members - 1)
                    try:
                        wait_until(lambda: len(arrivals) >= expected, 5.0)
                    except TimeoutError:
                        pass
                    faults = sum(len(e.faults()) for e in engines)
                finally:
                    for e in engines:
                        e.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    per: Dict[int, List[int]] = {}
    with lock:
        for now_ns, _uuid, i in arrivals:
            if i in sent_at:
                per.setdefault(i, []).append(now_ns - sent_at[i])
    complete = [max(v) / 1e6 for v in per.values() if len(v) == args.members - 1]
    delivered = sum(len(v) for v in per.values())
    return {
        "benchmark": "sgm_latency",
        "path": "guest->agent->controller->agent->guest (simulated channels)",
        "groups": args.groups,
        "members": args.members,
        "rate": args.rate,
        "duration_s": round(send_s, 2),
        "broadcast_ms_p50": round(_bench.percentile(complete, 50), 2),
        "broadcast_ms_p99": round(_bench.percentile(complete, 99), 2),
        "broadcast_ms_max": round(max(complete), 2) if complete else None,
        "broadcasts_over_20ms": sum(1 for ms in complete if ms > 20),
        "worst_second": _worst_second(per, sent_at, start_ns, args.members - 1),
        "delivered": delivered,
        "lost": expected - delivered,
        "msgs_per_s": round(total / send_s, 1),
        "heartbeat_faults": faults,
        "cast_interval_ms": args.cast_interval_ms,
        "sg_transport": args.sg_transport,
        "cpu_pct_of_one_core": cpu_pct,
        # Whole-path CPU (guests, both agents, controller, RabbitMQ) per broadcast.
        "cpu_ms_per_broadcast": (
            round(cpu_pct["total"] / 100.0 * send_s * 1000.0 / total, 3) if total else None
        ),
        "machine": _bench.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--rate", type=float, default=500.0, help="broadcasts per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    parser.add_argument("--payload", type=int, default=200, help="bytes of broadcast data")
    parser.add_argument(
        "--cast-interval-ms",
        type=int,
        default=3,
        help="the controller's [server_groups] cast_interval_ms (per-host cast pacing)",
    )
    parser.add_argument(
        "--sg-transport",
        choices=["datagrams", "rpc"],
        default="datagrams",
        help="[guest_ha] server_group_transport of the agents and the controller "
        "(--path agents only)",
    )
    parser.add_argument(
        "--path",
        choices=["agents", "controller"],
        default="agents",
        help="agents: through real compute agents with simulated guests (default); "
        "controller: sg_relay casts straight to the controller",
    )
    args = parser.parse_args()
    if args.members < 2:
        parser.error("--members must be at least 2 (a broadcast goes to the other members)")
    if args.path == "agents":
        _bench.emit(run_through_agents(args))
        return
    workdir = tempfile.mkdtemp(prefix="gha-bench-sgm-")
    groups = {
        f"g{g}": [str(uuidlib.uuid4()) for _ in range(args.members)] for g in range(args.groups)
    }
    members = [(name, u) for name, uuids in groups.items() for u in uuids]
    host_of = {u: HOSTS[i % len(HOSTS)] for i, (_, u) in enumerate(members)}
    groups_file = os.path.join(workdir, "groups.yaml")
    with open(groups_file, "w", encoding="utf-8") as fh:
        json.dump({"groups": groups}, fh)
    try:
        with RabbitMQNode() as rabbit:
            options.configure(rabbit.url)
            transport = get_transport(rabbit.url)
            recorders = {h: Recorder() for h in HOSTS}
            servers = [serve_compute(transport, [r], h) for h, r in recorders.items()]
            controller = ControllerProcess(
                workdir,
                rabbit.url,
                host="bench-ctl",
                extra={
                    "server_groups": {
                        "enabled": "true",
                        "membership": "file",
                        "groups_file": groups_file,
                        "cast_interval_ms": str(args.cast_interval_ms),
                    }
                },
            ).start()
            try:
                clients = {h: ControllerClient(transport, h) for h in HOSTS}
                _bench.progress("reporting VMs (vm_states) and waiting for the controller")
                for h in HOSTS:
                    vms = [
                        {
                            "uuid": u,
                            "name": f"vm-{u[:8]}",
                            "state": "active",
                            "power_state": "running",
                        }
                        for _, u in members
                        if host_of[u] == h
                    ]
                    clients[h].call("vm_states", host=h, vms=vms, full=True)
                wait_until(
                    lambda: controller.status()["server_groups"]["known_instances"] == len(members),
                    30,
                )
                padding = "x" * max(0, args.payload - 40)
                # Warm-up: connections, queues, thread pools.
                for _, u in members[: min(20, len(members))]:
                    clients[host_of[u]].cast(
                        "sg_relay",
                        host=host_of[u],
                        instance_uuid=u,
                        msg_type="broadcast",
                        fields={"data": {"warmup": True}},
                        group=None,
                    )
                time.sleep(1.0)
                for r in recorders.values():
                    with r.lock:
                        r.arrivals.clear()
                        r.casts = 0
                freeze_startup_heap()  # the measuring process must not add collector pauses
                total = int(args.rate * args.duration)
                sent_at: Dict[int, int] = {}
                _bench.progress(
                    f"{total} broadcasts at {args.rate}/s, {args.groups} groups of {args.members}"
                )
                start = time.monotonic()
                late = 0
                for i in range(total):
                    due = start + i / args.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    elif delay < -0.05:
                        late += 1
                    _, u = members[i % len(members)]
                    h = host_of[u]
                    sent_at[i] = time.monotonic_ns()
                    clients[h].cast(
                        "sg_relay",
                        host=h,
                        instance_uuid=u,
                        msg_type="broadcast",
                        fields={"data": {"i": i, "p": padding}},
                        group=None,
                    )
                send_s = time.monotonic() - start
                expected = total * (args.members - 1)

                def received() -> int:
                    return sum(len(r.arrivals) for r in recorders.values())

                try:
                    wait_until(lambda: received() >= expected, 5.0)
                except TimeoutError:
                    pass
                per_broadcast: Dict[int, List[int]] = {}
                wrong = 0
                for r in recorders.values():
                    with r.lock:
                        for now, _target, msg_type, data in r.arrivals:
                            if msg_type != "broadcast" or not isinstance(data, dict):
                                wrong += 1
                                continue
                            i = data.get("i")
                            if i in sent_at:
                                per_broadcast.setdefault(i, []).append(now - sent_at[i])
                delivery_ms = [ns / 1e6 for v in per_broadcast.values() for ns in v]
                complete_ms = [
                    max(v) / 1e6 for v in per_broadcast.values() if len(v) == args.members - 1
                ]
                delivered = len(delivery_ms)
                status = controller.status()["server_groups"]
                casts = sum(r.casts for r in recorders.values())
            finally:
                controller.stop()
                for server in servers:
                    stop_server(server)
                transport.cleanup()
        result = {
            "benchmark": "sgm_latency",
            "groups": args.groups,
            "members": args.members,
            "rate": args.rate,
            "duration_s": args.duration,
            "payload_bytes": args.payload,
            "broadcasts": total,
            "broadcast_ms_p50": round(_bench.percentile(complete_ms, 50), 3),
            "broadcast_ms_p99": round(_bench.percentile(complete_ms, 99), 3),
            "broadcast_ms_max": round(max(complete_ms), 3) if complete_ms else None,
            "delivery_ms_p50": round(_bench.percentile(delivery_ms, 50), 3),
            "delivery_ms_p99": round(_bench.percentile(delivery_ms, 99), 3),
            "delivered": delivered,
            "expected": expected,
            "lost": expected - delivered,
            "unexpected": wrong,
            "msgs_per_s": round(total / send_s, 1),
            "late_sends": late,
            "sg_deliver_casts": casts,
            "controller_counters": {
                k: status.get(k) for k in ("broadcasts", "casts", "cast_errors", "nacks")
            },
            "channels": "simulated: sg_relay cast by the bench, as a compute agent does",
            "machine": _bench.machine(),
        }
        _bench.emit(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
