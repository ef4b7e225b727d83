"""One booting Nova cloud (``guest_ha_dev.testing.nova_cloud.NovaCloud``) per test
session, with the baked test guest uploaded to Glance, the flavors the tests
need, a ``guest-ha-controller`` (reporters ``log`` + ``nova``, server groups from
Nova) and the compute agent in ``mode: nova``.

Servers cost about a third of a core each under TCG: modules share the servers
they boot (module-scoped fixtures) and keep at most two running at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator

import pytest

from guest_ha_dev.sim.harness import EngineProcess
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.nova_cloud import NovaCloud
from guest_ha_dev.testing.telemetry import Telemetry

#: Heartbeat interval the Nova test image asks for (kernel command line).
INTERVAL_MS = 1000  # TCG guests on a shared 2-core machine: 300 ms misses under load
BOOT_TIMEOUT = 240  # TCG guests on a 2-core machine shared with other test runs

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
        heartbeat={"restart_timeout_s": float(BOOT_TIMEOUT)},
        extra=cloud.agent_config(
            world.clouds_yaml, spool_dir=os.path.join(workdir, "spool"), nova_cloud="guest-ha"
        ),
    )


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def upload_with_playbook(
    cloud: NovaCloud, image_dir: str, name: str, cmdline_extra: str, workdir: str
) -> str:
    """Upload the baked test guest with ``playbooks/bake_guest_image.yml``'s
    Glance option (``openstack.cloud.image``, which sets
    ``hw_qemu_guest_agent=yes``); return the root image's id."""
    with open(os.path.join(image_dir, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    clouds = str(cloud.clouds_yaml(os.path.join(workdir, "clouds-playbook.yaml")))
    extra = {
        "guest_ha_bake_glance_upload": True,
        "guest_ha_bake_glance_cloud": "guest-ha",
        "guest_ha_bake_glance_image_name": name,
        "guest_ha_bake_glance_image_file": os.path.join(image_dir, manifest["rootfs"]),
        "guest_ha_bake_glance_kernel_file": os.path.join(image_dir, manifest["kernel"]),
        "guest_ha_bake_glance_ramdisk_file": os.path.join(image_dir, manifest["initrd"]),
        "guest_ha_bake_glance_disk_format": "ami",
        "guest_ha_bake_glance_properties": {
            "os_command_line": f"{manifest['cmdline']} {cmdline_extra}".strip()
        },
        "ansible_python_interpreter": sys.executable,
    }
    home = tempfile.mkdtemp(prefix="gha-ansible-")
    env = dict(
        os.environ,
        OS_CLIENT_CONFIG_FILE=clouds,
        ANSIBLE_HOME=home,
        ANSIBLE_LOCAL_TEMP=os.path.join(home, "tmp"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(home, "cp"),
    )
    try:
        proc = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                "-i",
                "localhost,",
                os.path.join(REPO, "playbooks", "bake_guest_image.yml"),
                "--tags",
                "glance",
                "-e",
                json.dumps(extra),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    status, payload = cloud._call(cloud.glance_url, "GET", f"/v2/images?name={name}")
    images = payload["images"]
    assert status == 200 and len(images) == 1, payload
    assert images[0]["hw_qemu_guest_agent"] == "yes"
    return str(images[0]["id"])


@pytest.fixture(scope="session")
def nova_world(guest_image: Any) -> Iterator[NovaWorld]:
    workdir = tempfile.mkdtemp(prefix="gha-nova-", dir="/var/tmp")
    image_dir = os.path.dirname(guest_image.rootfs)
    with NovaCloud() as cloud:
        clouds_yaml = str(cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml")))
        cmdline = f"guest_ha.interval_ms={INTERVAL_MS}"
        image = upload_with_playbook(cloud, image_dir, "gha-guest", cmdline, workdir)
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


@pytest.fixture(scope="session")
def telemetry(nova_world: NovaWorld) -> Iterator[Telemetry]:
    """Ceilometer and Aodh on the session's Nova cloud (started once, on first use)."""
    with Telemetry(nova_world.cloud) as tel:
        yield tel
