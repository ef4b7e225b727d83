"""Time from freezing a guest to the engine's ``heartbeat_lost`` event, while
other VMs are heartbeated too. Simulated guests; the real engine process.

    python bench/detection_latency.py --vms 100 --interval-ms 100 --trials 50
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

import _bench
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    _bench.raise_fd_limit()
    rng = random.Random(args.seed)
    interval = args.interval_ms / 1000.0
    workdir = tempfile.mkdtemp(prefix="gha-bench-")
    latencies = []
    try:
        with VmSimulator(os.path.join(workdir, "vms"), seed=args.seed) as sim:
            vms = [sim.add_vm(interval_ms=args.interval_ms) for _ in range(args.vms)]
            with EngineProcess(os.path.join(workdir, "engine"), vms) as engine:
                _bench.progress(f"waiting for {args.vms} VMs to register")
                wait_until(
                    lambda: (
                        len(
                            {
                                e["instance_uuid"]
                                for e in engine.events()
                                if e["kind"] == "registered"
                            }
                        )
                        == args.vms
                    ),
                    timeout=60 + args.vms * 0.05,
                    interval=0.2,
                )
                time.sleep(1.0)
                for trial in range(args.trials):
                    victim = rng.choice(vms)
                    time.sleep(interval * (2 + rng.random()))  # random phase
                    start = len(engine.events())
                    frozen_at = sim.freeze(victim.uuid)
                    lost = engine.wait_event("heartbeat_lost", victim.uuid, 10, after=start)
                    latencies.append((lost["monotonic"] - frozen_at) * 1000.0)
                    sim.thaw(victim.uuid)
                    engine.wait_event("recovered", victim.uuid, 10, after=start)
                    if (trial + 1) % 10 == 0:
                        _bench.progress(f"{trial + 1}/{args.trials} trials")
                # Each trial causes exactly one heartbeat_lost; anything more is false.
                faults = engine.faults()
                false_faults = (
                    len(faults)
                    - args.trials
                    + sum(1 for e in faults if e["kind"] != "heartbeat_lost")
                )
        _bench.emit(
            {
                "benchmark": "detection_latency",
                "vms": args.vms,
                "interval_ms": args.interval_ms,
                "trials": args.trials,
                "detection_ms_p50": round(_bench.percentile(latencies, 50), 2),
                "detection_ms_p99": round(_bench.percentile(latencies, 99), 2),
                "detection_ms_max": round(max(latencies), 2),
                "detection_ms_min": round(min(latencies), 2),
                "false_faults": false_faults,
                "machine": _bench.machine(),
            }
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
