"""The no-Python test guest (busybox and the static C guest-ha-guestd only,
``scripts/build_test_guest.py --variant c``) under libvirt TCG with the real
compute agent: registration, freeze, failing check, SIGTERM; and server group
broadcasts between a C guest and a Python guest in one group, both ways."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import GuestImage, domain_xml, qemu_pid, set_control

pytestmark = [pytest.mark.e2e, pytest.mark.c_guest]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INTERVAL_MS = 300
INTERVAL_S = INTERVAL_MS / 1000
BOOT_TIMEOUT = 90


@pytest.fixture(scope="session")
def c_guest_image() -> GuestImage:
    out = os.path.join(REPO, ".cache", "guest-image", "out-c")
    subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "build_test_guest.py"), "--variant", "c",
         "--out", out],
        check=True,
    )  # fmt: skip
    return GuestImage(out)


def console(e2e_dir: str, tag: str) -> str:
    try:
        with open(os.path.join(e2e_dir, f"{tag}.console.log"), errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def stop_daemon(ctl_path: str) -> None:
    """The test init's stop switch: byte 1 of the control disk = "S"."""
    fd = os.open(ctl_path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"S", 1)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_no_python_guest_heartbeats_fails_and_exits_cleanly(
    domains, c_guest_image, e2e_dir
) -> None:
    assert c_guest_image.manifest["variant"] == "c"
    dom = domains.define(
        domain_xml, optin=True, **c_guest_image.domain_kwargs(e2e_dir, "c", INTERVAL_MS)
    )
    uuid = dom.UUIDString()
    engine = EngineProcess(
        os.path.join(e2e_dir, "agent"),
        heartbeat={"restart_timeout_s": 120},
        extra={"libvirt": {"enabled": True}},
    ).start()
    try:
        registered = engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
        assert registered["detail"]["name"] == "guest-ha-test-c"
        assert registered["detail"]["interval_ms"] == INTERVAL_MS
        assert "no Python: busybox + static C guest-ha-guestd" in console(e2e_dir, "c")
        time.sleep(4 * INTERVAL_S)
        assert engine.faults() == []

        # freeze: the whole VM stops (SIGSTOP of QEMU) -> heartbeat_lost -> recovered
        pid = qemu_pid(dom.name())
        os.kill(pid, signal.SIGSTOP)
        try:
            lost = engine.wait_event("heartbeat_lost", uuid, timeout=10)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert lost["detail"]["last_response_age_s"] <= 2 * INTERVAL_S + 0.1
        engine.wait_event("recovered", uuid, timeout=30)

        # a failing check script (busybox sh) -> unhealthy -> recovered
        ctl = os.path.join(e2e_dir, "c.ctl")
        set_control(ctl, unhealthy=True)
        fault = engine.wait_event("unhealthy", uuid, timeout=30)
        assert "check 50-test-control: exit 1" in fault["detail"]["reason"]
        set_control(ctl, unhealthy=False)
        mark = len(engine.events())
        engine.wait_event("recovered", uuid, timeout=30, after=mark - 1)

        # SIGTERM to the daemon -> exit, no fault (then the test init powers off)
        faults_before = len(engine.faults())
        stop_daemon(ctl)
        exited = engine.wait_event("exit", uuid, timeout=30)
        assert exited["fault"] is False
        wait_until(lambda: not dom.isActive(), BOOT_TIMEOUT)
        time.sleep(4 * INTERVAL_S)
        assert len(engine.faults()) == faults_before, console(e2e_dir, "c")[-3000:]
        assert "guest-ha-guestd stopped" in console(e2e_dir, "c")
    finally:
        engine.stop()


def test_broadcast_between_c_and_python_guests_both_ways(
    domains, guest_image, c_guest_image, e2e_dir
) -> None:
    pytest.importorskip("oslo_messaging")
    from guest_ha_dev.testing.controller import ControllerProcess
    from guest_ha_dev.testing.rabbitmq import RabbitMQNode

    with RabbitMQNode() as rabbit:
        groups_file = os.path.join(e2e_dir, "server-groups.yaml")
        with open(groups_file, "w") as fh:
            fh.write("groups: {}\n")
        extra = {
            "server_groups": {
                "enabled": "true",
                "membership": "file",
                "groups_file": groups_file,
                "listen_notifications": "false",
            }
        }
        with ControllerProcess(e2e_dir, rabbit.url, host="ctl-1", extra=extra):
            engine = EngineProcess(
                os.path.join(e2e_dir, "agent"),
                heartbeat={"restart_timeout_s": 120},
                extra={
                    "libvirt": {"enabled": True},
                    "controller": {
                        "enabled": True,
                        "transport_url": rabbit.url,
                        "messaging_config": None,
                        "host": "e2e-host",
                        "spool_dir": os.path.join(e2e_dir, "spool"),
                    },
                },
            ).start()
            try:
                doms = {}
                for tag, image in (("py", guest_image), ("c", c_guest_image)):
                    kwargs = image.domain_kwargs(
                        e2e_dir, tag, 500, control_disk=False, extra_cmdline="guest_ha.demo_peer=1"
                    )
                    doms[tag] = domains.define(
                        domain_xml, optin=True, server_group="demo", **kwargs
                    )
                for tag, dom in doms.items():
                    try:
                        engine.wait_event("registered", dom.UUIDString(), timeout=120)
                    except TimeoutError as exc:
                        log = console(e2e_dir, tag)[-4000:]
                        raise AssertionError(f"{tag}: {exc}\n{log}") from None
                py_uuid, c_uuid = doms["py"].UUIDString(), doms["c"].UUIDString()
                # Python guest's demo peer prints what it gets from the C guest ...
                wait_until(
                    lambda: f"RECEIVED broadcast from {c_uuid}" in console(e2e_dir, "py"), 90
                )
                # ... and the C example app prints, as JSON, what it gets from Python.
                wait_until(lambda: f'"source_instance":"{py_uuid}"' in console(e2e_dir, "c"), 60)
                line = next(
                    ln
                    for ln in console(e2e_dir, "c").splitlines()
                    if f'"source_instance":"{py_uuid}"' in ln
                )
                event = json.loads(line[line.index("{") :])
                assert event["event"] == "broadcast" and event["data"]["hello"]
                received = re.findall(r'"source_instance":"([0-9a-f-]{36})"', console(e2e_dir, "c"))
                assert set(received) == {py_uuid}  # never its own
                assert engine.faults() == []
            finally:
                engine.stop()
