"""One guest of each hostile kind next to many good ones: false faults, agent CPU
and memory, and how much of the hostile guests' doing reaches the spool.

    python bench/hostile_guests.py --good 50 --interval-ms 100 --duration 600

The engine is the real ``guest-ha-compute`` process; the VMs are simulated (this
process plays QEMU's socket side). Events are counted in the engine's JSON-lines
sink, which receives exactly what the spool would (same events, same order).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Dict, List

import _bench
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until

KINDS = (
    "flood",
    "garbage",
    "oversized",
    "deep_nesting",
    "huge_numbers",
    "spoofed_identity",
    "reinit_churn",
    "never_reads",
    "slowloris",
    "sg_not_enabled",
    "accept_close",
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _count_kinds(events: List[dict]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for event in events:
        counts[event["kind"]] = counts.get(event["kind"], 0) + 1
    return counts


def _episodes(faults: List[dict], good: int) -> Dict[str, int]:
    """Group false faults that start within 1 s of each other. An episode that
    hits at least half the good VMs at once is a stall of everything (the host,
    the agent's loop or the simulator), not one VM disturbing another."""
    groups: List[List[dict]] = []
    for event in sorted(faults, key=lambda e: e["monotonic"]):
        if groups and event["monotonic"] - groups[-1][-1]["monotonic"] < 1.0:
            groups[-1].append(event)
        else:
            groups.append([event])
    wide = [g for g in groups if len({e["instance_uuid"] for e in g}) * 2 >= good]
    return {
        "episodes": len(groups),
        "episodes_hitting_half_the_good_vms": len(wide),
        "false_faults_outside_those": sum(len(g) for g in groups) - sum(len(g) for g in wide),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--good", type=int, default=50)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of hostility first")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated hostile kinds")
    args = parser.parse_args()
    kinds: List[str] = [k for k in args.kinds.split(",") if k]
    _bench.raise_fd_limit()
    workdir = tempfile.mkdtemp(prefix="gha-bench-")
    try:
        with VmSimulator(os.path.join(workdir, "vms"), seed=1) as sim:
            good = [sim.add_vm(interval_ms=args.interval_ms) for _ in range(args.good)]
            bad = {kind: sim.add_vm(interval_ms=args.interval_ms) for kind in kinds}
            every = [*good, *bad.values()]
            with EngineProcess(os.path.join(workdir, "engine"), every) as engine:
                _bench.progress(f"{args.good} good and {len(kinds)} hostile VMs registering")

                def all_registered() -> bool:
                    events = engine.events()
                    registered = {e["instance_uuid"] for e in events if e["kind"] == "registered"}
                    return len(registered) == len(every)

                wait_until(all_registered, timeout=60 + len(every) * 0.05, interval=0.2)
                for kind, vm in bad.items():
                    sim.set_hostile(vm.uuid, kind)
                if "accept_close" in bad:
                    sim.kill_connection(bad["accept_close"].uuid)
                _bench.progress(f"hostile for {args.warmup:g} s of warm-up")
                time.sleep(args.warmup)
                mark = len(engine.events())
                rss_before = rss_kib(engine.pid)
                cpu_before, wall_before = engine.cpu_seconds(), time.monotonic()
                sim_cpu_before = time.process_time()
                load_before = os.getloadavg()
                _bench.progress(f"measuring for {args.duration:g} s")
                end = wall_before + args.duration
                while time.monotonic() < end:
                    time.sleep(min(10.0, max(0.0, end - time.monotonic())))
                cpu_after, wall_after = engine.cpu_seconds(), time.monotonic()
                sim_cpu = time.process_time() - sim_cpu_before
                rss_after = rss_kib(engine.pid)
                events = engine.events()[mark:]
                all_events = engine.events()
                status = {v["instance_uuid"]: v for v in engine.status()["vms"]}
                load_after = os.getloadavg()
        elapsed = wall_after - wall_before
        good_uuids = {vm.uuid for vm in good}
        false_faults = [e for e in all_events if e["fault"] and e["instance_uuid"] in good_uuids]
        by_kind: Dict[str, Dict[str, int]] = {}
        for kind, vm in bad.items():
            counts: Dict[str, int] = {}
            for event in events:
                if event["instance_uuid"] == vm.uuid:
                    counts[event["kind"]] = counts.get(event["kind"], 0) + 1
            by_kind[kind] = counts
        per_min = {k: round(sum(c.values()) * 60.0 / elapsed, 2) for k, c in by_kind.items()}
        _bench.emit(
            {
                "benchmark": "hostile_guests",
                "good_vms": args.good,
                "hostile_kinds": kinds,
                "interval_ms": args.interval_ms,
                "duration_s": round(elapsed, 2),
                "false_faults": len(false_faults),
                "agent_cpu_percent": round(100.0 * (cpu_after - cpu_before) / elapsed, 2),
                "agent_rss_kib": rss_after,
                "simulator_cpu_percent": round(100.0 * sim_cpu / elapsed, 2),
                "false_faults_by_kind": _count_kinds(false_faults),
                "false_fault_episodes": _episodes(false_faults, args.good),
                "agent_rss_growth_kib": rss_after - rss_before,
                "events_from_hostile": by_kind,
                "events_from_hostile_per_min": per_min,
                "max_events_per_hostile_per_min": max(per_min.values()) if per_min else 0,
                "nacks_sent_by_kind": {
                    kind: status[vm.uuid]["nacks_by_code"] for kind, vm in bad.items()
                },
                "nacks_suppressed_by_kind": {
                    kind: status[vm.uuid]["counters"]["nacks_suppressed"]
                    for kind, vm in bad.items()
                },
                "reconnects_by_kind": {
                    kind: status[vm.uuid]["connects"] - 1 for kind, vm in bad.items()
                },
                "loadavg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
                "machine": _bench.machine(),
            }
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
