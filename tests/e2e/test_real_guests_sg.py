"""Server group messaging between real TCG guests, standalone mode: two domains
in group "demo" (domain metadata), each running the real guest daemon and the
image's demo peer app (which uses the same Python client VNF developers use).
The compute agent discovers them through libvirt and relays over a private
RabbitMQ node to a real controller with file membership."""

from __future__ import annotations

import os
import re

import pytest

pytest.importorskip("oslo_messaging")

from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import domain_xml
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.e2e


def console(e2e_dir: str, tag: str) -> str:
    try:
        with open(os.path.join(e2e_dir, f"{tag}.console.log"), errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def test_broadcast_between_real_guests(domains, guest_image, e2e_dir) -> None:
    with RabbitMQNode() as rabbit:
        groups_file = os.path.join(e2e_dir, "server-groups.yaml")
        with open(groups_file, "w") as fh:
            fh.write("groups: {}\n")  # membership comes from the compute agents' reports
        extra = {
            "server_groups": {
                "enabled": "true",
                "membership": "file",
                "groups_file": groups_file,
                "listen_notifications": "false",
            }
        }
        with ControllerProcess(e2e_dir, rabbit.url, host="ctl-1", extra=extra) as ctl:
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
                for tag in ("a", "b"):
                    kwargs = guest_image.domain_kwargs(
                        e2e_dir, tag, 500, control_disk=False, extra_cmdline="guest_ha.demo_peer=1"
                    )
                    doms[tag] = domains.define(
                        domain_xml, optin=True, server_group="demo", **kwargs
                    )
                for dom in doms.values():
                    engine.wait_event("registered", dom.UUIDString(), timeout=120)
                a_uuid = doms["a"].UUIDString()
                b_uuid = doms["b"].UUIDString()
                # b's app prints what it receives; the source is stamped by the host.
                wait_until(lambda: f"RECEIVED broadcast from {a_uuid}" in console(e2e_dir, "b"), 90)
                wait_until(lambda: f"RECEIVED broadcast from {b_uuid}" in console(e2e_dir, "a"), 30)
                received = re.findall(
                    r"RECEIVED broadcast from ([0-9a-f-]{36})", console(e2e_dir, "a")
                )
                assert set(received) == {b_uuid}  # never its own
                assert ctl.status()["server_groups"]
                assert engine.faults() == []
            finally:
                engine.stop()
