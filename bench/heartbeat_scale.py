"""How much CPU the compute engine needs to heartbeat many VMs, and whether any
false fault appears. Simulated VMs answer every challenge; the engine is the
real ``guest-ha-compute`` process, measured alone (``agent_cpu_percent``,
``cpu_us_per_round_trip``: engine CPU per answered challenge).

The simulated VMs run in ``--sim-processes`` worker processes (default: one per
500 VMs), as real VMs are separate QEMU processes: one Python thread answering
2000 guests' challenges is a bottleneck no real host has, and on a loaded machine
it made guests answer late (false faults that were the bench's, not the engine's).
``simulator_cpu_percent`` is the workers' CPU, measured apart; the load averages
show what else ran.

    python bench/heartbeat_scale.py --vms 1000 --interval-ms 1000 --duration 60
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time

import _bench
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, process_cpu_seconds, wait_until


def _sim_worker(
    conn: "multiprocessing.connection.Connection",
    workdir: str,
    vms: int,
    interval_ms: int,
    seed: int,
) -> None:
    """One worker: ``vms`` simulated VMs; answers "answered" until told "stop"."""
    with VmSimulator(workdir, seed=seed) as sim:
        conn.send([sim.add_vm(interval_ms=interval_ms) for _ in range(vms)])
        while conn.recv() != "stop":
            conn.send(sum(s.get("challenges_answered", 0) for s in sim.stats().values()))


class SimWorkers:
    """The simulated VMs, spread over worker processes."""

    def __init__(self, workdir: str, vms: int, interval_ms: int, processes: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.workers = []
        self.vms = []
        shares = [vms // processes + (1 if i < vms % processes else 0) for i in range(processes)]
        for i, share in enumerate(shares):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_sim_worker,
                args=(child, os.path.join(workdir, f"vms{i}"), share, interval_ms, i + 1),
                daemon=True,
            )
            proc.start()
            self.workers.append((proc, parent))
        for _, conn in self.workers:
            self.vms += conn.recv()

    def answered(self) -> int:
        for _, conn in self.workers:
            conn.send("answered")
        return sum(conn.recv() for _, conn in self.workers)

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(proc.pid) for proc, _ in self.workers)

    def stop(self) -> None:
        for proc, conn in self.workers:
            try:
                conn.send("stop")
            except OSError:
                pass
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--sim-processes", type=int, default=0, help="simulator workers (0: one per 500 VMs)"
    )
    args = parser.parse_args()
    _bench.raise_fd_limit()
    workdir = tempfile.mkdtemp(prefix="gha-bench-")
    try:
        processes = args.sim_processes or max(1, -(-args.vms // 500))
        _bench.progress(f"starting {args.vms} simulated VMs in {processes} processes")
        sim = SimWorkers(workdir, args.vms, args.interval_ms, processes)
        vms = sim.vms
        try:
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
                answered_before = sim.answered()
                faults_before = len(engine.faults())
                load_before = os.getloadavg()[0]
                sim_cpu_before = sim.cpu_seconds()
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
                sim_cpu = sim.cpu_seconds() - sim_cpu_before
                load_after = os.getloadavg()[0]
                answered = sim.answered()
                false_faults = engine.faults()[faults_before:]
                status = engine.status()
                turns = status["loop_iterations"] - turns_before
        finally:
            sim.stop()
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
                "simulator_processes": processes,
                "load_avg_1min_before": round(load_before, 2),
                "load_avg_1min_after": round(load_after, 2),
                "machine": _bench.machine(),
            }
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
