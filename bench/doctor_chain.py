"""The Doctor chain end to end on real services: from freezing a Nova-booted TCG
guest (SIGSTOP of its QEMU) to the VNF manager's Aodh webhook.

Path ``vitrage`` (A): the controller's ``vitrage`` reporter -> our datasource's
alarm on the ``nova.instance`` -> our template's ``mark_down`` ->
vitrage-notifier's ``nova`` notifier (``reset_state error``) -> the same
telemetry; on recovery Vitrage undoes ``mark_down`` (``active``).

Path ``nova`` (B): compute agent (nova mode) ``heartbeat_lost`` -> controller's
``nova`` reporter (``os-resetState error``) -> Nova's ``compute.instance.update``
-> ceilometer-agent-notification -> aodh-listener -> aodh-notifier -> webhook
at the VNFM stand-in (``guest_ha_dev.testing.vnfm``).  Each trial then thaws
the guest, waits until the server is ACTIVE again (the reporter's reset on
``recovered``) and re-arms the alarm.

Per trial, and as p50/p99/max:

- ``webhook_ms``: SIGSTOP -> webhook received (``missed`` counts trials with no
  webhook within ``--timeout``);
- ``detection_ms``: SIGSTOP -> the agent's ``heartbeat_lost``;
- ``compute_to_controller_ms``: ``heartbeat_lost`` -> the controller stored it;
- ``controller_to_nova_ms``: stored -> Nova emitted the update (the Ceilometer
  event's ``generated``; through Vitrage on path ``vitrage``);
- ``nova_to_webhook_ms``: Nova emitted -> webhook received.

``spurious`` counts webhooks of alarms whose server was not frozen;
``false_faults`` the agent's faults outside the freeze windows (a missed
heartbeat of a loaded TCG guest: the chain then rightly reports it, and its
webhook is one of the ``spurious``).

    python bench/doctor_chain.py --trials 20 --interval-ms 100 --path nova
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import shutil
import signal
import sqlite3
import tempfile
import time
from typing import Any, Dict, List, Tuple

import _bench
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import GuestImage, qemu_pid
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.nova_cloud import NovaCloud
from guest_ha_dev.testing.telemetry import Telemetry
from guest_ha_dev.testing.vitrage_path import VitragePath
from guest_ha_dev.testing.vnfm import VnfmStandIn

BOOT_TIMEOUT = 180
STAGES = (
    "webhook_ms",
    "detection_ms",
    "compute_to_controller_ms",
    "controller_to_nova_ms",
    "nova_to_webhook_ms",
)


def iso_wall(ts: str) -> float:
    ts = ts.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in ts else "%Y-%m-%dT%H:%M:%S"
    parsed = datetime.datetime.strptime(ts, fmt)
    return parsed.replace(tzinfo=datetime.timezone.utc).timestamp()


def stored_at(db: str, uuid: str, after: float) -> float:
    """When the controller stored the first fault of ``uuid`` received after ``after``."""
    with sqlite3.connect(db) as con:
        row = con.execute(
            "SELECT received_at FROM events WHERE instance_uuid = ? AND fault = 1"
            " AND received_at >= ? ORDER BY seq LIMIT 1",
            (uuid, after),
        ).fetchone()
    return float(row[0]) if row else float("nan")


def summary(values: Dict[str, List[float]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for stage in STAGES:
        got = [v for v in values[stage] if v == v]
        base = stage[: -len("_ms")]
        out[f"{base}_ms_p50"] = round(_bench.percentile(got, 50), 1) if got else None
        out[f"{base}_ms_p99"] = round(_bench.percentile(got, 99), 1) if got else None
        out[f"{base}_ms_max"] = round(max(got), 1) if got else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--path", choices=["nova", "vitrage"], default="nova")
    parser.add_argument("--servers", type=int, default=2, help="servers (at most 2 TCG guests)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait per webhook")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    image_dir = os.path.dirname(GuestImage.build(_bench.REPO).rootfs)
    workdir = tempfile.mkdtemp(prefix="gha-bench-doctor-", dir="/var/tmp")
    values: Dict[str, List[float]] = {stage: [] for stage in STAGES}
    missed = spurious = 0
    windows: List[Tuple[str, float, float]] = []
    false_faults = 0
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        with NovaCloud() as cloud, Telemetry(cloud) as telemetry:
            setup_s = time.monotonic() - started
            clouds = str(cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml")))
            image = cloud.upload_test_guest(
                image_dir, "bench-guest", cmdline_extra=f"guest_ha.interval_ms={args.interval_ms}"
            )
            flavor = cloud.flavor("bench.ha", {"guest_ha:heartbeat": "true"})
            creds = {"clouds_yaml": clouds, "cloud": "guest-ha", "interface": "public"}
            db = os.path.join(workdir, "controller.sqlite")
            if args.path == "nova":
                reporter = {"reporter_nova": {**creds, "reset_on_recovery": "true"}}
                vitrage: Any = contextlib.nullcontext()
            else:
                reporter = {"reporter_vitrage": creds}
                vitrage = VitragePath(cloud)
            with (
                vitrage,
                ControllerProcess(
                    workdir,
                    cloud.rabbit_url or "",
                    host="bench-ctl",
                    reporters=[args.path],
                    database=db,
                    extra=reporter,
                ),
                EngineProcess(
                    os.path.join(workdir, "agent"),
                    heartbeat={"restart_timeout_s": 300.0},
                    extra=cloud.agent_config(clouds, spool_dir=os.path.join(workdir, "spool")),
                ) as agent,
                VnfmStandIn(cloud, telemetry) as vnfm,
            ):
                servers = [vnfm.boot(f"bench-vnf-{i}", flavor, image) for i in range(args.servers)]
                for uuid in servers:
                    cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
                    agent.wait_event("registered", uuid, BOOT_TIMEOUT)
                alarms = {uuid: vnfm.create_alarm(uuid) for uuid in servers}
                _bench.progress(f"{len(servers)} servers heartbeating; {args.trials} trials")
                for trial in range(args.trials):
                    uuid = rng.choice(servers)
                    time.sleep(args.interval_ms / 1000 * (3 + rng.random()))
                    mark, events = vnfm.mark(), len(agent.events())
                    pid = qemu_pid(cloud.instance_name(uuid))
                    wall0, mono0 = time.time(), time.monotonic()
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        lost = agent.wait_event("heartbeat_lost", uuid, 60, after=events)
                        try:
                            hook = vnfm.wait_webhook(alarms[uuid], mark, args.timeout)
                        except TimeoutError:
                            hook = None
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    lost_wall = wall0 + (lost["monotonic"] - mono0)
                    values["detection_ms"].append((lost["monotonic"] - mono0) * 1000)
                    stored = stored_at(db, uuid, wall0)
                    values["compute_to_controller_ms"].append((stored - lost_wall) * 1000)
                    if hook is None:
                        missed += 1
                    else:
                        generated = iso_wall(hook.body["reason_data"]["event"]["generated"])
                        values["webhook_ms"].append((hook.monotonic - mono0) * 1000)
                        values["controller_to_nova_ms"].append((generated - stored) * 1000)
                        values["nova_to_webhook_ms"].append((hook.wall - generated) * 1000)
                    recovered = agent.wait_event("recovered", uuid, 60, after=events)
                    windows.append((uuid, mono0, recovered["monotonic"]))
                    wait_until(lambda u=uuid: cloud.server(u)["status"] == "ACTIVE", 60)
                    time.sleep(0.3)
                    spurious += sum(1 for w in vnfm.webhooks[mark:] if w.alarm_id != alarms[uuid])
                    # Re-arm every alarm that fired (a false fault of the other
                    # server fires its alarm too), once its server is ACTIVE.
                    for other, alarm in alarms.items():
                        if vnfm.alarm_state(alarm) == "alarm":
                            wait_until(lambda u=other: cloud.server(u)["status"] == "ACTIVE", 60)
                            vnfm.rearm(alarm)
                    if (trial + 1) % 5 == 0:
                        _bench.progress(f"{trial + 1}/{args.trials} trials, {missed} missed")
                false_faults = sum(
                    1
                    for f in agent.faults()
                    if not any(
                        f["instance_uuid"] == u and a <= f["monotonic"] <= b for u, a, b in windows
                    )
                )
                for uuid in servers:
                    cloud.delete(uuid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result: Dict[str, Any] = {
        "benchmark": "doctor_chain",
        "path": args.path,
        "trials": args.trials,
        "interval_ms": args.interval_ms,
        "servers": args.servers,
        "missed": missed,
        "spurious": spurious,
        "false_faults": false_faults,
        "setup_s": round(setup_s, 1),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": _bench.machine(),
    }
    result.update(summary(values))
    _bench.emit(result)


if __name__ == "__main__":
    main()
