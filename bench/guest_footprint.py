"""Memory and CPU of the C and the Python guest daemon, side by side in one run.

Both daemons heartbeat at the same interval (default 100 ms) against the real
compute engine process, each on its own simulated VM (a pty per VM, as in the
integration tests), each with one check script run every second. After a
warm-up, CPU time is sampled over the measurement window and RSS at its end.

    python bench/guest_footprint.py --interval-ms 100 --seconds 30

Last stdout line: {"c": {"rss_kib", "cpu_percent", ...}, "python": {...},
"ratio": {"rss", "cpu"}, ...} with ratio = Python / C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import _bench
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import (
    EngineProcess,
    process_cpu_seconds,
    start_guest_daemon,
)

C_DIR = os.path.join(_bench.REPO, "agents", "guest-c")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of the reaped children (the check scripts) of ``pid``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="gha-footprint-")
    procs = {}
    try:
        build = os.path.join(work, "cbuild")
        _bench.progress("building the C daemon (make guestd)")
        subprocess.run(["make", "-s", "-C", C_DIR, f"BUILD={build}", "guestd"], check=True)
        commands = {
            "c": [os.path.join(build, "guest-ha-guestd")],
            "python": [sys.executable, "-m", "guest_ha.guest.daemon"],
        }
        with VmSimulator(os.path.join(work, "vms"), seed=3) as sim:
            vms = {name: sim.add_vm("pty", name=f"footprint-{name}") for name in commands}
            for name, vm in vms.items():
                checks = os.path.join(work, name, "checks.d")
                os.makedirs(checks)
                script = os.path.join(checks, "10-ok")
                with open(script, "w") as fh:
                    fh.write("#!/bin/sh\nexit 0\n")
                os.chmod(script, 0o755)
                procs[name] = start_guest_daemon(
                    str(vm.guest_port),
                    name=vm.name,
                    interval_ms=args.interval_ms,
                    app_socket=os.path.join(work, name, "app.sock"),
                    checks_dir=checks,
                    log_path=os.path.join(work, name, "guestd.log"),
                    extra_args=["--check-interval-ms", "1000"],
                    command=commands[name],
                )
            with EngineProcess(os.path.join(work, "engine"), list(vms.values())) as engine:
                for vm in vms.values():
                    engine.wait_event("registered", vm.uuid, timeout=30)
                _bench.progress(f"warm-up {args.warmup} s, then {args.seconds} s measured")
                time.sleep(args.warmup)
                cpu0 = {n: process_cpu_seconds(p.pid) for n, p in procs.items()}
                kids0 = {n: children_cpu_seconds(p.pid) for n, p in procs.items()}
                t0 = time.monotonic()
                before = {v["instance_uuid"]: v["responses_ok"] for v in engine.status()["vms"]}
                time.sleep(args.seconds)
                wall = time.monotonic() - t0
                cpu1 = {n: process_cpu_seconds(p.pid) for n, p in procs.items()}
                kids1 = {n: children_cpu_seconds(p.pid) for n, p in procs.items()}
                status = {v["instance_uuid"]: v for v in engine.status()["vms"]}
                result = {}
                for name, proc in procs.items():
                    uuid = vms[name].uuid
                    result[name] = {
                        "rss_kib": rss_kib(proc.pid),
                        "cpu_percent": round(100 * (cpu1[name] - cpu0[name]) / wall, 2),
                        "checks_cpu_percent": round(100 * (kids1[name] - kids0[name]) / wall, 2),
                        "responses": status[uuid]["responses_ok"] - before[uuid],
                    }
                faults = engine.faults()
        out = {
            "interval_ms": args.interval_ms,
            "seconds": args.seconds,
            "checks": "1 script, every 1000 ms",
            **result,
            "ratio": {
                "rss": round(result["python"]["rss_kib"] / result["c"]["rss_kib"], 1),
                "cpu": round(
                    result["python"]["cpu_percent"] / max(result["c"]["cpu_percent"], 0.01), 1
                ),
            },
            "faults": len(faults),
            "machine": _bench.machine(),
            "load_1min": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(out))
        return 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
