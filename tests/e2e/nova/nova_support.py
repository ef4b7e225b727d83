"""One booting Nova cloud (``guest_ha.testing.nova_cloud.NovaCloud``) per test
session, with the baked test guest uploaded to Glance, the flavors the tests
need, a ``guest-ha-controller`` (reporters ``log`` + ``nova``, server groups from
Nova) and the compute agent in ``mode: nova``.

Servers cost about a third of a core each under TCG: modules share the servers
they boot (module-scoped fixtures) and keep at most two running at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator

import pytest

from guest_ha.sim.harness import EngineProcess
from guest_ha.testing.controller import ControllerProcess
from guest_ha.testing.nova_cloud import NovaCloud

#: Heartbeat interval the Nova test image asks for (kernel command line).
INTERVAL_MS = 300
BOOT_TIMEOUT = 120

HA_SPECS = {"guest_ha:heartbeat": "true"}
SGM_SPECS = {"guest_ha:heartbeat": "true", "guest_ha:server_group_messaging": "true"}


@dataclass
class NovaWorld:
    cloud: NovaCloud
    workdir: str
    clouds_yaml: str
    image: str
    """Test guest with ``hw_qemu_guest_agent=yes`` (Nova adds a virtio-serial controller)."""
    image_no_qga: str
    flavors: Dict[str, str]
    controller: ControllerProcess
    agent: EngineProcess

    def start_agent(self, tag: str) -> EngineProcess:
        """Another compute agent in nova mode (after the session one was stopped)."""
        return agent_process(self, os.path.join(self.workdir, tag)).start()


def agent_process(world: Any, workdir: str) -> EngineProcess:
    cloud = world.cloud
    return EngineProcess(
        workdir,
        heartbeat={"restart_timeout_s": 120.0},
        extra={
            "libvirt": {
                "enabled": True,
                "mode": "nova",
                "nova_clouds_yaml": world.clouds_yaml,
                "nova_cloud": "guest-ha",
                "nova_interface": "public",
                # Nova destroys domains on hard reboot, stop and delete.
                "destroyed_is_fault": False,
            },
            "controller": {
                "enabled": True,
                "transport_url": cloud.rabbit_url,
                "messaging_config": None,
                "spool_dir": os.path.join(workdir, "spool"),
                "host": cloud.compute_host,
            },
        },
    )


@pytest.fixture(scope="session")
def nova_world(guest_image: Any) -> Iterator[NovaWorld]:
    workdir = tempfile.mkdtemp(prefix="gha-nova-", dir="/var/tmp")
    image_dir = os.path.dirname(guest_image.rootfs)
    with NovaCloud() as cloud:
        clouds_yaml = str(cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml")))
        cmdline = f"guest_ha.interval_ms={INTERVAL_MS}"
        image = cloud.upload_test_guest(image_dir, "gha-guest", cmdline_extra=cmdline)
        image_no_qga = cloud.upload_test_guest(
            image_dir, "gha-guest-noqga", cmdline_extra=cmdline, qemu_guest_agent=False
        )
        flavors = {
            "ha": cloud.flavor("gha.ha", HA_SPECS),
            "sgm": cloud.flavor("gha.sgm", SGM_SPECS),
            "plain": cloud.flavor("gha.plain", {}),
        }
        creds = {"clouds_yaml": clouds_yaml, "cloud": "guest-ha", "interface": "public"}
        controller = ControllerProcess(
            workdir,
            cloud.rabbit_url or "",
            host="ctl-1",
            reporters=["log", "nova"],
            extra={
                "reporter_nova": {**creds, "reset_on_recovery": "true"},
                "server_groups": {
                    "enabled": "true",
                    "membership": "nova",
                    "clouds_yaml": clouds_yaml,
                    "cloud": "guest-ha",
                    "notification_transport_url": cloud.rabbit_url,
                },
            },
        ).start()
        world = NovaWorld(
            cloud,
            workdir,
            clouds_yaml,
            image,
            image_no_qga,
            flavors,
            controller,
            None,  # type: ignore[arg-type]
        )
        world.agent = agent_process(world, os.path.join(workdir, "agent")).start()
        try:
            yield world
        finally:
            if world.agent is not None:
                world.agent.stop()
            controller.stop()
    shutil.rmtree(workdir, ignore_errors=True)
