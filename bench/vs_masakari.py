"""guest-ha vs Masakari's own introspective instance monitor, side by side on
Nova-booted TCG guests: each trial freezes one guest once (SIGSTOP of its
QEMU), and every monitor times that same freeze.

- **Masakari**: ``masakari-introspectiveinstancemonitor`` (masakari-monitors
  from PyPI, its own venv) pings the guest's qemu-ga (``guest-ping`` through
  libvirt) and sends a ``VM`` notification to masakari-api after
  ``guest_monitoring_failure_threshold`` further failed pings.  Two instances
  run at once: one at its **default** settings (interval 10 s, timeout 2 s,
  threshold 3), one at the most **aggressive** settings its code takes
  (interval 1 s, timeout 1 s, threshold 0; interval 0 is accepted too but
  makes its check loop spin on a core, and timeout 0 is libvirt's
  "don't wait", which fails every ping).  Its detection time: freeze -> its
  log line "Send a notification" for that instance.  It remembers that it
  reported a guest until the domain is started again, so both monitors are
  restarted after each trial.
- **guest-ha**: the compute agent (nova mode) with two servers, one whose
  guest asks for a 100 ms heartbeat and one for 1000 ms; detection time:
  freeze -> the agent's ``heartbeat_lost``.  Trials alternate between them.

Prints each monitor's detection p50/p99/max in ms, and ``ratio_default`` and
``ratio_tuned``: Masakari's p50 (default, aggressive) divided by guest-ha's
p50 at 100 ms.  ``missed`` counts, per monitor, freezes it did not report
within ``--timeout``.

    python bench/vs_masakari.py --trials 6
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import _bench
from guest_ha_dev.sim.harness import EngineProcess
from guest_ha_dev.sim.testguest import GuestImage, qemu_pid
from guest_ha_dev.testing.masakari import Masakari
from guest_ha_dev.testing.nova_cloud import NovaCloud
from guest_ha_dev.testing.procs import ProcessService, _write_ini
from guest_ha_dev.testing.venv_cache import ensure_venvs

BOOT_TIMEOUT = 240
MONITORS = {
    "default": {"guest_monitoring_interval": 10, "guest_monitoring_timeout": 2,
                "guest_monitoring_failure_threshold": 3},
    "aggressive": {"guest_monitoring_interval": 1, "guest_monitoring_timeout": 1,
                   "guest_monitoring_failure_threshold": 0},
}  # fmt: skip
SENT = re.compile(
    r"^(\S+ \S+) \d+ INFO \S+ \[.*?\] Send a notification\. .*'instance_uuid': '([0-9a-f-]+)'"
)


class MasakariMonitor:
    """One ``masakari-introspectiveinstancemonitor`` process (restartable)."""

    def __init__(self, name: str, venv: Path, workdir: str, cloud: NovaCloud, mk: Masakari):
        self.name = name
        self.conf = os.path.join(workdir, f"monitor-{name}.conf")
        self.log = Path(workdir) / f"monitor-{name}.log"
        assert cloud.keystone is not None
        # Its default, limited to this cloud's domains (Nova names the qemu-ga
        # socket /var/lib/libvirt/qemu/org.qemu.guest_agent.0.<domain>.sock).
        sock = (
            r"/var/lib/libvirt/qemu/org\.qemu\.guest_agent\..*\.instance-"
            + re.escape(cloud.name_tag)
            + r"-.*\.sock"
        )
        _write_ini(
            Path(self.conf),
            {
                "DEFAULT": {"use_stderr": "true", "debug": "false"},
                "libvirt": {"connection_uri": "qemu:///system"},
                "introspectiveinstancemonitor": {
                    **MONITORS[name],
                    "qemu_guest_agent_sock_path": sock,
                },
                "callback": {"retry_max": 0, "retry_interval": 1},
                "api": {
                    "auth_url": cloud.keystone.url + "/v3",
                    "username": mk.SERVICE_USER,
                    "password": mk.password,
                    "project_name": cloud.SERVICE_PROJECT,
                    "user_domain_name": cloud.DOMAIN,
                    "project_domain_name": cloud.DOMAIN,
                    "region": cloud.REGION,
                    "api_interface": "public",
                },
            },
        )
        self.proc = ProcessService(
            f"masakari-monitor-{name}",
            venv,
            ["masakari-introspectiveinstancemonitor", "--config-file", self.conf],
            self.log,
        )

    def restart(self) -> None:
        self.proc.stop()
        self.proc.start()

    def stop(self) -> None:
        self.proc.stop()

    def sent_at(self, uuid: str, after: float) -> Optional[float]:
        """Wall time of its first notification for ``uuid`` logged after ``after``."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            m = SENT.match(line)
            if m and m.group(2) == uuid:
                # oslo.log writes local time.
                at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
                if at >= after:
                    return at
        return None


def stats(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(_bench.percentile(values, 50), 1),
        "p99": round(_bench.percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=6, help="freezes (alternating servers)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per freeze")
    args = parser.parse_args()
    image_dir = os.path.dirname(GuestImage.build(_bench.REPO).rootfs)
    workdir = tempfile.mkdtemp(prefix="gha-bench-vsm-", dir="/var/tmp")
    monitors_venv = ensure_venvs(["masakari-monitors"])["masakari-monitors"]
    values: Dict[str, List[float]] = {
        k: [] for k in ("default", "aggressive", "gha_100", "gha_1000")
    }
    missed = dict.fromkeys(values, 0)
    load_before = os.getloadavg()
    started = time.monotonic()
    monitors: List[MasakariMonitor] = []
    try:
        with NovaCloud() as cloud, Masakari(cloud) as masakari:
            setup_s = time.monotonic() - started
            clouds = str(cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml")))
            flavor = cloud.flavor("bench.ha", {"guest_ha:heartbeat": "true"})
            agent = EngineProcess(
                os.path.join(workdir, "agent"),
                heartbeat={"restart_timeout_s": float(BOOT_TIMEOUT)},
                extra=cloud.agent_config(clouds),
            ).start()
            try:
                servers: Dict[str, str] = {}
                for ms in (100, 1000):
                    image = cloud.upload_test_guest(
                        image_dir, f"bench-{ms}", cmdline_extra=f"guest_ha.interval_ms={ms}"
                    )
                    servers[f"gha_{ms}"] = cloud.boot(f"bench-{ms}", flavor, image)
                for uuid in servers.values():
                    cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
                    agent.wait_event("registered", uuid, BOOT_TIMEOUT)
                monitors = [
                    MasakariMonitor(n, monitors_venv, workdir, cloud, masakari) for n in MONITORS
                ]
                _bench.progress(f"2 servers heartbeating; {args.trials} trials")
                for trial in range(args.trials):
                    key = "gha_100" if trial % 2 == 0 else "gha_1000"
                    uuid = servers[key]
                    for mon in monitors:
                        mon.restart()
                    # Each monitor must have seen the guest answer (discovery ->
                    # healthy) before the freeze: one interval plus a ping.
                    time.sleep(max(m["guest_monitoring_interval"] for m in MONITORS.values()) + 5)
                    events = len(agent.events())
                    pid = qemu_pid(cloud.instance_name(uuid))
                    wall0, mono0 = time.time(), time.monotonic()
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        try:
                            lost = agent.wait_event("heartbeat_lost", uuid, 30, after=events)
                            values[key].append((lost["monotonic"] - mono0) * 1000)
                        except TimeoutError:
                            missed[key] += 1
                        pending = {m.name: m for m in monitors}
                        while pending and time.monotonic() - mono0 < args.timeout:
                            for name, mon in list(pending.items()):
                                at = mon.sent_at(uuid, wall0)
                                if at is not None:
                                    values[name].append((at - wall0) * 1000)
                                    del pending[name]
                            time.sleep(0.2)
                        for name in pending:
                            missed[name] += 1
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    agent.wait_event("recovered", uuid, 60, after=events)
                    _bench.progress(
                        f"trial {trial + 1}/{args.trials} ({key}): "
                        + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in values.items() if v)
                    )
                for uuid in servers.values():
                    cloud.delete(uuid)
            finally:
                for mon in monitors:
                    mon.stop()
                agent.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result: Dict[str, Any] = {
        "benchmark": "vs_masakari",
        "trials": args.trials,
        "freeze": "SIGSTOP of the guest's QEMU",
        "masakari_default": MONITORS["default"],
        "masakari_aggressive": MONITORS["aggressive"],
        "missed": missed,
        "setup_s": round(setup_s, 1),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "machine": _bench.machine(),
    }
    for key, got in values.items():
        for stat, value in stats(got).items():
            result[f"{key}_detection_ms_{stat}"] = value
    base = result["gha_100_detection_ms_p50"]
    for name, label in (("default", "ratio_default"), ("aggressive", "ratio_tuned")):
        p50 = result[f"{name}_detection_ms_p50"]
        result[label] = round(p50 / base, 1) if p50 and base else None
    _bench.emit(result)


if __name__ == "__main__":
    main()
