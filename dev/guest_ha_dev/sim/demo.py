"""Local heartbeat demo: the real compute engine heartbeating simulated VMs and
one real guest daemon, with a fault injected, detected and recovered.

    python -m guest_ha_dev.sim.demo [--vms 5] [--interval-ms 200]

No hypervisor is needed: guest_ha_dev.sim plays QEMU's part. It is the light,
seconds-long companion of the all-in-one demo (``scripts/aio.sh``), which deploys
with Ansible and runs real QEMU guests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from guest_ha.compute.cli import format_status

from .harness import EngineProcess, start_guest_daemon
from .vmsim import SimVmInfo, VmSimulator


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(engine: EngineProcess) -> None:
    print(format_status(engine.status()), flush=True)


def start_demo_daemon(vm: SimVmInfo, workdir: str, interval_ms: int) -> subprocess.Popen:
    checks = os.path.join(workdir, "checks.d")
    os.makedirs(checks, exist_ok=True)
    return start_guest_daemon(
        str(vm.guest_port),
        name=vm.name,
        interval_ms=interval_ms,
        app_socket=os.path.join(workdir, "app.sock"),
        checks_dir=checks,
        log_path=os.path.join(workdir, "guestd.log"),
    )


def run(vms: int, interval_ms: int) -> Dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="gha-demo-")
    summary: Dict[str, Any] = {}
    daemon: Optional[subprocess.Popen] = None
    try:
        with VmSimulator(os.path.join(workdir, "vms"), seed=42) as sim:
            say(f"starting {vms} simulated VMs and one VM running the real guest daemon")
            sims: List[SimVmInfo] = [
                sim.add_vm(interval_ms=interval_ms, name=f"sim-vm-{i}") for i in range(vms)
            ]
            real = sim.add_vm("pty", name="real-guestd-vm")
            daemon = start_demo_daemon(real, workdir, interval_ms)
            all_vms = [*sims, real]
            with EngineProcess(os.path.join(workdir, "engine"), all_vms) as engine:
                say("compute engine started; waiting for every guest to register")
                for vm in all_vms:
                    engine.wait_event("registered", vm.uuid, timeout=30)
                time.sleep(3 * interval_ms / 1000)
                show(engine)

                victim = sims[0]
                say(f"freezing {victim.name} (its guest stops answering, like SIGSTOP)")
                mark = len(engine.events())
                frozen_at = sim.freeze(victim.uuid)
                lost = engine.wait_event("heartbeat_lost", victim.uuid, 10, after=mark)
                detect_ms = (lost["monotonic"] - frozen_at) * 1000
                print(f"    FAULT heartbeat_lost for {victim.uuid} after {detect_ms:.0f} ms")
                show(engine)
                say(f"thawing {victim.name}")
                sim.thaw(victim.uuid)
                engine.wait_event("recovered", victim.uuid, 10, after=mark)
                print("    recovered")

                say(f"freezing the real guest daemon process (kill -STOP {daemon.pid})")
                mark = len(engine.events())
                stopped_at = time.monotonic()
                os.kill(daemon.pid, signal.SIGSTOP)
                lost = engine.wait_event("heartbeat_lost", real.uuid, 10, after=mark)
                real_ms = (lost["monotonic"] - stopped_at) * 1000
                print(f"    FAULT heartbeat_lost for {real.uuid} after {real_ms:.0f} ms")
                os.kill(daemon.pid, signal.SIGCONT)
                engine.wait_event("recovered", real.uuid, 10, after=mark)
                print("    kill -CONT: recovered")

                say("an application inside a guest reports itself unhealthy")
                sick = sims[1]
                sim.set_health(sick.uuid, False, "replication broken")
                fault = engine.wait_event("unhealthy", sick.uuid, 10)
                print(f"    FAULT unhealthy for {sick.uuid}: {fault['detail']['reason']}")
                sim.set_health(sick.uuid, True)
                engine.wait_event("recovered", sick.uuid, 10, after=engine.events().index(fault))
                print("    recovered")

                say("stopping the real guest daemon gracefully (SIGTERM): no fault")
                mark = len(engine.events())
                daemon.terminate()
                daemon.wait(10)
                engine.wait_event("exit", real.uuid, 10, after=mark)
                print("    exit received, heartbeating stopped without a fault")
                show(engine)
                faults = engine.faults()
                summary = {
                    "vms": len(all_vms),
                    "interval_ms": interval_ms,
                    "simulated_freeze_detection_ms": round(detect_ms, 1),
                    "real_daemon_freeze_detection_ms": round(real_ms, 1),
                    "faults": [(f["kind"], f["domain"]) for f in faults],
                }
    finally:
        if daemon is not None and daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGCONT)
            daemon.kill()
            daemon.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vms", type=int, default=5, help="simulated VMs besides the real one")
    parser.add_argument("--interval-ms", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        summary = run(args.vms, args.interval_ms)
    except (TimeoutError, RuntimeError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    say("summary")
    for key, value in summary.items():
        print(f"    {key}: {value}")
    print("\nEverything ran in a temporary folder that has been removed; nothing to tear down.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
