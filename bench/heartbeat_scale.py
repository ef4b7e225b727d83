"""How much CPU the compute engine needs to heartbeat many VMs, and whether any
false fault appears. Simulated VMs (in this process) answer every challenge; the
engine is the real ``guest-ha-compute`` process, measured alone
(``agent_cpu_percent``, ``cpu_us_per_round_trip``: engine CPU per answered
challenge). ``simulator_cpu_percent`` is this process (the simulated guests),
measured apart, so a run can show whether the simulated side kept up; the load
averages show what else ran.

    python bench/heartbeat_scale.py --vms 1000 --interval-ms 1000 --duration 60
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import _bench
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    _bench.raise_fd_limit()
    workdir = tempfile.mkdtemp(prefix="gha-bench-")
    try:
        with VmSimulator(os.path.join(workdir, "vms"), seed=1) as sim:
            _bench.progress(f"starting {args.vms} simulated VMs")
            vms = [sim.add_vm(interval_ms=args.interval_ms) for _ in range(args.vms)]
            with EngineProcess(os.path.join(workdir, "engine"), vms) as engine:
                _bench.progress("waiting for every VM to register")
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
                time.sleep(args.warmup)
                answered_before = sum(s["challenges_answered"] for s in sim.stats().values())
                faults_before = len(engine.faults())
                load_before = os.getloadavg()[0]
                sim_cpu_before = time.process_time()
                turns_before = engine.status()["loop_iterations"]
                cpu_before, wall_before = engine.cpu_seconds(), time.monotonic()
                _bench.progress(f"measuring for {args.duration:g} s")
                end = wall_before + args.duration
                while time.monotonic() < end:
                    time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                    left = end - time.monotonic()
                    if left > 1:
                        _bench.progress(
                            f"{left:.0f} s left, faults so far: "
                            f"{len(engine.faults()) - faults_before}"
                        )
                cpu_after, wall_after = engine.cpu_seconds(), time.monotonic()
                sim_cpu = time.process_time() - sim_cpu_before
                load_after = os.getloadavg()[0]
                answered = sum(s["challenges_answered"] for s in sim.stats().values())
                false_faults = engine.faults()[faults_before:]
                status = engine.status()
                turns = status["loop_iterations"] - turns_before
        rtts = [v["last_rtt_ms"] for v in status["vms"] if v["last_rtt_ms"] is not None]
        elapsed = wall_after - wall_before
        round_trips = answered - answered_before
        _bench.emit(
            {
                "benchmark": "heartbeat_scale",
                "vms": args.vms,
                "interval_ms": args.interval_ms,
                "duration_s": round(elapsed, 2),
                "agent_cpu_percent": round(100.0 * (cpu_after - cpu_before) / elapsed, 2),
                "false_faults": len(false_faults),
                "challenges_answered": round_trips,
                "expected_challenges": int(args.vms * elapsed * 1000 / args.interval_ms),
                "last_rtt_ms_p50": _bench.percentile(rtts, 50),
                "last_rtt_ms_max": max(rtts) if rtts else None,
                "cpu_us_per_round_trip": round(1e6 * (cpu_after - cpu_before) / round_trips, 2)
                if round_trips
                else None,
                "loop_turns_per_round_trip": round(turns / round_trips, 3) if round_trips else None,
                "simulator_cpu_percent": round(100.0 * sim_cpu / elapsed, 2),
                "load_avg_1min_before": round(load_before, 2),
                "load_avg_1min_after": round(load_after, 2),
                "machine": _bench.machine(),
            }
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
