"""Recovery without OpenStack on a real TCG guest: hang it, and time from the
hang until the guest heartbeats again after the compute agent's recovery action.

One guest boots from the image baked with our guest role; the agent runs with
recovery on (``--actions``, default ``reset,destroy-and-start``). Two ways to
hang it (``--freeze``):

- ``guest`` (default): the guest's own check freezes its guest daemon (the test
  image's control disk, byte ``3``): a hung guest whose QEMU still answers, as
  with a hung guest kernel or userland. The agent's reset works at once.
- ``qemu``: SIGSTOP of the QEMU process. A stopped QEMU cannot carry a reset
  out, so after ``--action-timeout-s`` the agent power-cycles it, and libvirt
  itself waits about 10 s for the stopped process to take SIGTERM before it
  kills it.

Each trial waits for the guest's first healthy answer (``recovered``).

    python bench/standalone_recovery.py --trials 5 --interval-ms 500 [--freeze qemu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter

import _bench
from guest_ha_dev.sim.harness import EngineProcess
from guest_ha_dev.sim.testguest import (
    Domains,
    GuestImage,
    domain_xml,
    ensure_libvirtd,
    qemu_pid,
    set_control,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=500)
    parser.add_argument("--actions", default="reset,destroy-and-start")
    parser.add_argument("--action-timeout-s", type=float, default=2.0)
    parser.add_argument("--freeze", choices=("guest", "qemu"), default="guest")
    args = parser.parse_args()
    if args.trials < 1 or args.interval_ms < 100 or args.action_timeout_s <= 0:
        parser.error("need --trials >= 1, --interval-ms >= 100, --action-timeout-s > 0")
    import libvirt

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    uri = ensure_libvirtd()
    _bench.progress("building (or reusing) the test guest image")
    image = GuestImage.build(_bench.REPO)
    workdir = tempfile.mkdtemp(prefix="gha-bench-", dir="/var/tmp")
    conn = libvirt.open(uri)
    domains = Domains(conn, prefix="gha-bench")
    recovery_s, detect_s = [], []
    actions: Counter = Counter()
    missed = 0
    policy = {
        "enabled": True,
        "actions": args.actions.split(","),
        "action_timeout_s": args.action_timeout_s,
        "max_actions": args.trials + 1,
    }
    try:
        with EngineProcess(
            os.path.join(workdir, "agent"),
            heartbeat={"restart_timeout_s": 120.0},
            extra={"libvirt": {"enabled": True}, "recovery": policy},
        ) as engine:
            kwargs = image.domain_kwargs(workdir, "vm", args.interval_ms)
            ctl = os.path.join(workdir, "vm.ctl")
            dom = domains.define(domain_xml, optin=True, **kwargs)
            uuid = dom.UUIDString()
            _bench.progress("booting the TCG guest")
            engine.wait_event("registered", uuid, timeout=180)
            for trial in range(args.trials):
                time.sleep(3 * args.interval_ms / 1000.0)
                mark = len(engine.events())
                pid = qemu_pid(dom.name())
                frozen_at = time.monotonic()
                if args.freeze == "qemu":
                    os.kill(pid, signal.SIGSTOP)
                else:
                    set_control(ctl, unhealthy=False, hang=True)
                try:
                    lost = engine.wait_event("heartbeat_lost", uuid, timeout=30, after=mark)
                    if args.freeze == "guest":
                        set_control(ctl, unhealthy=False)  # it boots up well again
                    started = engine.wait_event("recovery_started", uuid, timeout=30, after=mark)
                    recovered = engine.wait_event("recovered", uuid, timeout=180, after=mark)
                except TimeoutError:
                    missed += 1
                    _bench.progress(f"trial {trial + 1}: no recovery")
                    continue
                finally:
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass  # recovery replaced that QEMU
                detect_s.append(lost["monotonic"] - frozen_at)
                recovery_s.append(recovered["monotonic"] - frozen_at)
                actions[started["detail"]["action"]] += 1
                done = [e for e in engine.events()[mark:] if e["kind"] == "recovery_done"]
                how = done[-1]["detail"].get("seconds") if done else None
                _bench.progress(
                    f"trial {trial + 1}/{args.trials}: recovered in {recovery_s[-1]:.1f} s "
                    f"(registered {how} s after the action)"
                )
            actions_taken = sum(1 for e in engine.events() if e["kind"] == "recovery_started")
    finally:
        domains.cleanup()
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    _bench.emit(
        {
            "benchmark": "standalone_recovery",
            "trials": args.trials,
            "interval_ms": args.interval_ms,
            "freeze": args.freeze,
            "policy_actions": policy["actions"],
            "action_timeout_s": args.action_timeout_s,
            "recovery_s_p50": round(_bench.percentile(recovery_s, 50), 2) if recovery_s else None,
            "recovery_s_max": round(max(recovery_s), 2) if recovery_s else None,
            "detection_s_p50": round(_bench.percentile(detect_s, 50), 3) if detect_s else None,
            "actions": actions_taken,
            "actions_by_kind": dict(actions),
            "missed": missed,
            "machine": _bench.machine(),
        }
    )


if __name__ == "__main__":
    main()
