"""Fault detection on real TCG guests: freeze a QEMU process (SIGSTOP) and time
the compute agent's ``heartbeat_lost``; also boot-to-first-heartbeat.

The guests boot from the image baked with our guest role and run the real guest
daemon; the agent discovers them through libvirt and hot-attaches the channel.

    python bench/vm_detection.py --vms 4 --interval-ms 100 --trials 40
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

import _bench
from guest_ha_dev.sim.harness import EngineProcess
from guest_ha_dev.sim.testguest import Domains, GuestImage, domain_xml, ensure_libvirtd, qemu_pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import libvirt

    # Clean up the domains on SIGTERM too (finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    rng = random.Random(args.seed)
    interval = args.interval_ms / 1000.0
    uri = ensure_libvirtd()
    _bench.progress("building (or reusing) the test guest image")
    image = GuestImage.build(_bench.REPO)
    workdir = tempfile.mkdtemp(prefix="gha-bench-", dir="/var/tmp")
    conn = libvirt.open(uri)
    domains = Domains(conn, prefix="gha-bench")
    boot_ms, detect_ms = [], []
    windows = []
    unexpected = []
    try:
        with EngineProcess(
            os.path.join(workdir, "agent"),
            heartbeat={"restart_timeout_s": 300.0},
            extra={"libvirt": {"enabled": True}},
        ) as engine:
            started = {}
            for i in range(args.vms):
                kwargs = image.domain_kwargs(
                    workdir, f"vm{i}", args.interval_ms, control_disk=False
                )
                t0 = time.monotonic()
                dom = domains.define(domain_xml, optin=True, **kwargs)
                started[dom.UUIDString()] = (dom, t0)
            _bench.progress(f"booting {args.vms} TCG guests")
            for uuid, (_dom, t0) in started.items():
                event = engine.wait_event("registered", uuid, timeout=180)
                boot_ms.append((event["monotonic"] - t0) * 1000)
            _bench.progress(
                f"all registered; boot to heartbeat p50 {_bench.percentile(boot_ms, 50):.0f} ms"
            )
            time.sleep(2.0)
            doms = [d for d, _ in started.values()]
            for trial in range(args.trials):
                dom = rng.choice(doms)
                uuid = dom.UUIDString()
                time.sleep(interval * (3 + rng.random()))
                mark = len(engine.events())
                pid = qemu_pid(dom.name())
                stopped_at = time.monotonic()
                os.kill(pid, signal.SIGSTOP)
                try:
                    lost = engine.wait_event("heartbeat_lost", uuid, timeout=30, after=mark)
                except TimeoutError:
                    state = [v for v in engine.status()["vms"] if v["instance_uuid"] == uuid]
                    _bench.progress(f"no fault for frozen {dom.name()} (pid {pid}): {state}")
                    raise
                finally:
                    os.kill(pid, signal.SIGCONT)
                detect_ms.append((lost["monotonic"] - stopped_at) * 1000)
                recovered = engine.wait_event("recovered", uuid, timeout=60, after=mark)
                windows.append((uuid, stopped_at, recovered["monotonic"]))
                if (trial + 1) % 10 == 0:
                    _bench.progress(f"{trial + 1}/{args.trials} trials")
            # A fault is expected only for the frozen VM between its freeze and recovery.
            unexpected = [
                f
                for f in engine.faults()
                if not any(
                    f["instance_uuid"] == u and start <= f["monotonic"] <= end
                    for u, start, end in windows
                )
            ]
    finally:
        domains.cleanup()
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    _bench.emit(
        {
            "benchmark": "vm_detection",
            "vms": args.vms,
            "interval_ms": args.interval_ms,
            "trials": args.trials,
            "detection_ms_p50": round(_bench.percentile(detect_ms, 50), 1),
            "detection_ms_p99": round(_bench.percentile(detect_ms, 99), 1),
            "detection_ms_max": round(max(detect_ms), 1),
            "boot_to_heartbeat_ms_p50": round(_bench.percentile(boot_ms, 50), 1),
            "boot_to_heartbeat_ms_max": round(max(boot_ms), 1),
            "false_faults": len(unexpected),
            "false_fault_kinds": sorted({f["kind"] for f in unexpected}),
            "machine": _bench.machine(),
        }
    )


if __name__ == "__main__":
    main()
