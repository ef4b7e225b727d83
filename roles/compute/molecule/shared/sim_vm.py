#!/usr/bin/env python3
"""Serve one simulated VM in a compute agent's socket folder until the agent sees it.

    sim_vm.py SOCKET_DIR STATUS_SOCKET UUID [--hold SECONDS]

Runs a ``guest_ha_dev.sim`` simulator (the in-process guest speaks the real protocol)
with one VM, polls the agent's status socket until that VM is registered and has
answered challenges, prints the agent's view of it as JSON and exits 0; exits 1
after 30 s. ``--hold`` keeps the VM up that much longer (so events can travel on).
Run it with the Python of the deployed venv: it checks the installed package. The
simulator is dev-only code, so it comes from this checkout's ``dev/`` folder.
"""

from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.append(os.path.join(REPO, "dev"))

from guest_ha.compute.cli import fetch_status  # noqa: E402
from guest_ha_dev.sim.vmsim import VmSimulator  # noqa: E402


def main() -> int:
    socket_dir, status_socket, vm_uuid = sys.argv[1:4]
    hold = float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--hold" else 0.0
    last = None
    with VmSimulator(socket_dir) as sim:
        sim.add_vm("sim", uuid=vm_uuid, name="molecule-vm", interval_ms=200)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status = fetch_status(status_socket)
            except (OSError, ValueError) as exc:
                last = str(exc)
                time.sleep(0.3)
                continue
            vms = [vm for vm in status.get("vms", []) if vm["instance_uuid"] == vm_uuid]
            last = vms
            if vms and vms[0]["registered"] and vms[0]["responses_ok"] >= 2:
                time.sleep(hold)
                print(json.dumps(vms[0]))
                return 0
            time.sleep(0.3)
    print(f"the agent did not register the VM: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
