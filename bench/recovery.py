"""Automatic recovery with Masakari on real services: from hanging a Nova-booted
TCG guest's daemon to the guest heartbeating again after masakari-engine
stopped and started the server through Nova.

Chain: the guest daemon hangs (``hang_guest_daemon``: the test image's control
check SIGSTOPs it; QEMU and the guest kernel keep running, so Nova's stop is a
clean ACPI shutdown) -> compute agent (nova mode) ``heartbeat_lost`` ->
controller's ``masakari`` reporter -> masakari-api -> masakari-engine (stop,
start, confirm ACTIVE) -> the guest boots and registers again.

Per trial, and as p50/max:

- ``recovery_s``: hang -> the agent's ``registered`` of the rebooted guest
  (``missed`` counts trials not recovered within ``--timeout``);
- ``detection_s``: hang -> ``heartbeat_lost``;
- ``engine_s``: ``heartbeat_lost`` -> Masakari's notification ``finished``
  (stored, stop, start, ACTIVE confirmed; polled every 0.5 s);
- ``boot_s``: ``finished`` -> ``registered``.

Masakari's settings are its defaults except
``duplicate_notification_detection_interval = 0`` (every trial hangs the same
server: with the default 180 s window its next notification would be refused as
a duplicate, docs/masakari.md) and ``notification_delay_max = 0`` (one API
worker); Nova's ``shutdown_timeout`` is its default (the guest answers ACPI, so
it is not reached).

    python bench/recovery.py --trials 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List

import _bench
from guest_ha_dev.sim.harness import EngineProcess
from guest_ha_dev.sim.testguest import GuestImage
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.masakari import Masakari, hang_guest_daemon
from guest_ha_dev.testing.nova_cloud import NovaCloud

BOOT_TIMEOUT = 240
ENGINE_CONF = {"DEFAULT": {"duplicate_notification_detection_interval": 0}}
STAGES = ("recovery_s", "detection_s", "engine_s", "boot_s")


def finished(masakari: Masakari, uuid: str) -> int:
    return sum(
        1
        for n in masakari.notifications()
        if n["payload"].get("instance_uuid") == uuid and n["status"] == "finished"
    )


def agent_process(cloud: NovaCloud, workdir: str, clouds: str) -> EngineProcess:
    return EngineProcess(
        os.path.join(workdir, "agent"),
        heartbeat={"restart_timeout_s": float(BOOT_TIMEOUT)},
        extra=cloud.agent_config(clouds, spool_dir=os.path.join(workdir, "spool")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--interval-ms", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per recovery")
    args = parser.parse_args()
    image_dir = os.path.dirname(GuestImage.build(_bench.REPO).rootfs)
    workdir = tempfile.mkdtemp(prefix="gha-bench-recovery-", dir="/var/tmp")
    values: Dict[str, List[float]] = {stage: [] for stage in STAGES}
    missed = 0
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        with NovaCloud() as cloud, Masakari(cloud, engine_conf=ENGINE_CONF) as masakari:
            setup_s = time.monotonic() - started
            clouds = str(cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml")))
            image = cloud.upload_test_guest(
                image_dir, "bench-guest", cmdline_extra=f"guest_ha.interval_ms={args.interval_ms}"
            )
            flavor = cloud.flavor("bench.ha", {"guest_ha:heartbeat": "true"})
            creds = {"clouds_yaml": clouds, "cloud": "guest-ha", "interface": "public"}
            with (
                ControllerProcess(
                    workdir,
                    cloud.rabbit_url or "",
                    host="bench-ctl",
                    reporters=["masakari"],
                    extra={"reporter_masakari": creds},
                ),
                agent_process(cloud, workdir, clouds) as agent,
            ):
                uuid = cloud.boot("bench-ha", flavor, image)
                cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
                status, payload = cloud.api(
                    "POST", f"/servers/{uuid}/metadata", {"metadata": {"HA_Enabled": "True"}}
                )
                assert status == 200, payload
                agent.wait_event("registered", uuid, BOOT_TIMEOUT)
                _bench.progress(f"server heartbeating; {args.trials} trials")
                for trial in range(args.trials):
                    time.sleep(3.0)
                    events = len(agent.events())
                    domain = cloud.instance_name(uuid)
                    mono0 = time.monotonic()
                    hang_guest_daemon(domain, os.path.join(workdir, f"hang-{trial}.ctl"))
                    try:
                        lost = agent.wait_event("heartbeat_lost", uuid, 60, after=events)
                        while finished(masakari, uuid) < trial + 1:
                            if time.monotonic() - mono0 > args.timeout:
                                raise TimeoutError("masakari did not finish")
                            time.sleep(0.5)
                        done = time.monotonic()
                        left = max(1.0, args.timeout - (done - mono0))
                        back = agent.wait_event("registered", uuid, left, after=events)
                    except TimeoutError as exc:
                        missed += 1
                        _bench.progress(f"trial {trial + 1}: not recovered ({exc})")
                        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
                        agent.wait_event("registered", uuid, BOOT_TIMEOUT, after=events)
                        continue
                    values["recovery_s"].append(back["monotonic"] - mono0)
                    values["detection_s"].append(lost["monotonic"] - mono0)
                    values["engine_s"].append(done - lost["monotonic"])
                    values["boot_s"].append(back["monotonic"] - done)
                    _bench.progress(
                        f"trial {trial + 1}/{args.trials}: recovered in "
                        f"{values['recovery_s'][-1]:.1f} s"
                    )
                cloud.delete(uuid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result: Dict[str, Any] = {
        "benchmark": "recovery",
        "trials": args.trials,
        "interval_ms": args.interval_ms,
        "missed": missed,
        "setup_s": round(setup_s, 1),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": _bench.machine(),
    }
    for stage in STAGES:
        got = values[stage]
        base = stage[: -len("_s")]
        result[f"{base}_s_p50"] = round(_bench.percentile(got, 50), 1) if got else None
        result[f"{base}_s_max"] = round(max(got), 1) if got else None
    _bench.emit(result)


if __name__ == "__main__":
    main()
