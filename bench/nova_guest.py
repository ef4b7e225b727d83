"""The compute agent in ``mode: nova`` on servers booted by real Nova
(``guest_ha_dev.testing.nova_cloud.NovaCloud``: Nova 34 + placement + glance +
nova-compute on this libvirtd, TCG).

Boots N servers of an opt-in flavor through the Nova API, then per server a
hard reboot, a soft reboot, stop/start, pause/unpause, suspend/resume and a
resize on the same host (``allow_resize_to_same_host``), then
T SIGSTOP trials on random servers (heartbeat interval ``--interval-ms``):

- ``boot_to_heartbeat_s_p50``: from ``POST /servers`` to the first heartbeat
  (the agent's ``registered`` event);
- ``hard_reboot_to_heartbeat_s_p50``: from the reboot call to ``registered``;
- ``detection_ms_p99``: SIGSTOP of QEMU to ``heartbeat_lost``;
- ``false_faults``: faults outside the SIGSTOP windows, across all of it.

    python bench/nova_guest.py --servers 2 --trials 20
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

import _bench
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import GuestImage, qemu_pid
from guest_ha_dev.testing.nova_cloud import NovaCloud

TIMEOUT = 180


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rng = random.Random(args.seed)
    image_dir = os.path.dirname(GuestImage.build(_bench.REPO).rootfs)
    workdir = tempfile.mkdtemp(prefix="gha-bench-nova-", dir="/var/tmp")
    boot_s: List[float] = []
    reboot_s: List[float] = []
    detect_ms: List[float] = []
    windows: List[Tuple[str, float, float]] = []
    unexpected: List[Dict[str, Any]] = []
    started = time.monotonic()
    try:
        with NovaCloud() as cloud:
            cloud_s = time.monotonic() - started
            clouds = str(cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml")))
            image = cloud.upload_test_guest(
                image_dir, "bench-guest", cmdline_extra=f"guest_ha.interval_ms={args.interval_ms}"
            )
            flavor = cloud.flavor("bench.ha", {"guest_ha:heartbeat": "true"})
            bigger = cloud.flavor("bench.ha.2", {"guest_ha:heartbeat": "true"}, ram=640)
            with EngineProcess(
                os.path.join(workdir, "agent"),
                heartbeat={"restart_timeout_s": 300.0},
                extra=cloud.agent_config(clouds),
            ) as agent:
                servers = []
                _bench.progress(f"booting {args.servers} servers through Nova, one at a time")
                for i in range(args.servers):
                    t0 = time.monotonic()
                    uuid = cloud.boot(f"bench-{i}", flavor, image)
                    servers.append((uuid, t0))
                    boot_s.append(agent.wait_event("registered", uuid, TIMEOUT)["monotonic"] - t0)
                uuids = [u for u, _ in servers]

                def op(uuid: str, run: Callable[[], None], restarts: bool) -> float:
                    mark = len(agent.events())
                    t0 = time.monotonic()
                    run()
                    if restarts:
                        return (
                            agent.wait_event("registered", uuid, TIMEOUT, after=mark)["monotonic"]
                            - t0
                        )
                    return 0.0

                for uuid in uuids:
                    _bench.progress(f"lifecycle operations on {uuid}")
                    reboot_s.append(
                        op(uuid, lambda u=uuid: cloud.action(u, {"reboot": {"type": "HARD"}}), True)
                    )
                    op(uuid, lambda u=uuid: cloud.action(u, {"reboot": {"type": "SOFT"}}), True)
                    cloud.wait_status(uuid, "ACTIVE", TIMEOUT)
                    for first, state, second in (
                        ("os-stop", "SHUTOFF", "os-start"),
                        ("pause", "PAUSED", "unpause"),
                        ("suspend", "SUSPENDED", "resume"),
                    ):

                        def pair(u: str = uuid, a: str = first, s: str = state, b: str = second):
                            cloud.action(u, {a: None})
                            cloud.wait_status(u, s, TIMEOUT)
                            cloud.action(u, {b: None})
                            cloud.wait_status(u, "ACTIVE", TIMEOUT)

                        op(uuid, pair, first == "os-stop")

                    def resize(u: str = uuid) -> None:
                        cloud.action(u, {"resize": {"flavorRef": bigger}})
                        cloud.wait_status(u, "VERIFY_RESIZE", TIMEOUT)
                        cloud.action(u, {"confirmResize": None})
                        cloud.wait_status(u, "ACTIVE", TIMEOUT)

                    op(uuid, resize, True)
                    wait_until(lambda u=uuid: _answered(agent, u) > 0, 60)
                time.sleep(2.0)
                interval = args.interval_ms / 1000
                for trial in range(args.trials):
                    uuid = rng.choice(uuids)
                    time.sleep(interval * (3 + rng.random()))
                    mark = len(agent.events())
                    pid = qemu_pid(cloud.instance_name(uuid))
                    stopped_at = time.monotonic()
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        lost = agent.wait_event("heartbeat_lost", uuid, 30, after=mark)
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    detect_ms.append((lost["monotonic"] - stopped_at) * 1000)
                    recovered = agent.wait_event("recovered", uuid, 60, after=mark)
                    windows.append((uuid, stopped_at, recovered["monotonic"]))
                    if (trial + 1) % 10 == 0:
                        _bench.progress(f"{trial + 1}/{args.trials} trials")
                unexpected = [
                    f
                    for f in agent.faults()
                    if not any(
                        f["instance_uuid"] == u and a <= f["monotonic"] <= b for u, a, b in windows
                    )
                ]
                for uuid in uuids:
                    cloud.delete(uuid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _bench.emit(
        {
            "benchmark": "nova_guest",
            "servers": args.servers,
            "trials": args.trials,
            "interval_ms": args.interval_ms,
            "cloud_start_s": round(cloud_s, 1),
            "boot_to_heartbeat_s_p50": round(_bench.percentile(boot_s, 50), 2),
            "boot_to_heartbeat_s_max": round(max(boot_s), 2),
            "hard_reboot_to_heartbeat_s_p50": round(_bench.percentile(reboot_s, 50), 2),
            "detection_ms_p50": round(_bench.percentile(detect_ms, 50), 1),
            "detection_ms_p99": round(_bench.percentile(detect_ms, 99), 1),
            "false_faults": len(unexpected),
            "false_fault_kinds": sorted({f["kind"] for f in unexpected}),
            "wall_s": round(time.monotonic() - started, 1),
            "machine": _bench.machine(),
        }
    )


def _answered(agent: EngineProcess, uuid: str) -> int:
    for vm in agent.status()["vms"]:
        if vm["instance_uuid"] == uuid:
            return int(vm["responses_ok"])
    return 0


if __name__ == "__main__":
    main()
