"""The ``compute`` role on this test cloud's Nova host: its real ``nova.conf``
and its real compute host (``NovaCloud``'s nova-compute on libvirtd).

The role edits Nova's notification settings in the cloud's ``nova.conf``, which
first loses them (as on a host before guest-ha), writes the Nova API
credentials (``no_log``, mode 0600) and runs the agent in ``mode: nova``
(service manager ``daemon``, under a temporary root; ``install_method: none``
with this checkout's venv, because installing is the Molecule scenarios'
subject).  A second run changes nothing.  The agent the role started then
heartbeats a server Nova boots.  The session's own agent is stopped meanwhile:
two agents must not share a domain's channel."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from nova_support import BOOT_TIMEOUT, REPO, NovaWorld

from guest_ha_dev.sim.harness import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.nova]

#: What the role sets in nova.conf: (section, option, role variable).
NOTIFICATION_OPTIONS = (
    ("notifications", "notify_on_state_change", "guest_ha_compute_nova_notify_on_state_change"),
    ("notifications", "notification_format", "guest_ha_compute_nova_notification_format"),
    ("oslo_messaging_notifications", "driver", "guest_ha_compute_nova_notification_driver"),
)

PLAYBOOK = """\
- name: guest-ha compute role on the Nova test cloud's host
  hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: compute
"""


def read_ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def as_dict(parser: configparser.RawConfigParser) -> Dict[str, Dict[str, str]]:
    out = {"DEFAULT": dict(parser.defaults())}
    for section in parser.sections():
        out[section] = {k: v for k, v in parser.items(section) if k not in parser.defaults()}
    return out


def run_role(workdir: str, extra_vars: Dict[str, Any]) -> Tuple[str, Dict[str, int]]:
    """``ansible-playbook -v --diff`` of the role; its output and the recap's counts."""
    playbook = os.path.join(workdir, "compute.yml")
    Path(playbook).write_text(PLAYBOOK)
    varfile = os.path.join(workdir, "vars.json")
    Path(varfile).write_text(json.dumps(extra_vars))
    os.chmod(varfile, 0o600)
    home = tempfile.mkdtemp(prefix="gha-ansible-")
    env = dict(
        os.environ,
        ANSIBLE_HOME=home,
        ANSIBLE_LOCAL_TEMP=os.path.join(home, "tmp"),
        ANSIBLE_ROLES_PATH=os.path.join(REPO, "roles"),
        ANSIBLE_LIBRARY=os.path.join(REPO, "library"),
        ANSIBLE_MODULE_UTILS=os.path.join(REPO, "module_utils"),
        ANSIBLE_NOCOLOR="1",
    )
    try:
        proc = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                "-v",
                "--diff",  # without no_log, file contents would be shown
                "-i",
                "localhost,",
                playbook,
                "-e",
                f"@{varfile}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    recap = re.search(
        r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out
    )
    assert recap, out[-2000:]
    ok, changed, unreachable, failed = map(int, recap.groups())
    return out, {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}


@pytest.fixture(scope="module")
def role_host(nova_world: NovaWorld) -> Iterator[Dict[str, Any]]:
    """The role's variables for this cloud; stops the session agent, and after
    the module stops the role's agent, restores nova.conf, restarts the session agent."""
    cloud = nova_world.cloud
    workdir = tempfile.mkdtemp(prefix="gha-nova-role-", dir="/var/tmp")
    root = os.path.join(workdir, "root")
    nova_conf = cloud.nova_conf_path
    original_text = nova_conf.read_text()
    original = read_ini(nova_conf)
    clouds = json.loads(Path(nova_world.clouds_yaml).read_text())["clouds"]
    extra_vars: Dict[str, Any] = {
        "ansible_python_interpreter": sys.executable,
        "guest_ha_root": root,
        "guest_ha_compute_service_manager": "daemon",
        "guest_ha_compute_systemd_unit": False,
        "guest_ha_compute_manage_packages": False,
        "guest_ha_compute_install_method": "none",
        "guest_ha_compute_venv": sys.prefix,
        "guest_ha_compute_libvirt_mode": "nova",
        "guest_ha_compute_libvirt_destroyed_is_fault": False,
        "guest_ha_compute_nova_clouds": clouds,
        "guest_ha_compute_nova_cloud": "guest-ha",
        "guest_ha_compute_nova_interface": "public",
        "guest_ha_compute_heartbeat_restart_timeout_s": 120.0,
        "guest_ha_compute_events_jsonl": f"{root}/var/log/guest-ha/events.jsonl",
        "guest_ha_compute_transport_url": cloud.rabbit_url,
        "guest_ha_compute_host": cloud.compute_host,
        "guest_ha_compute_nova_conf": str(nova_conf),
        # The values this cloud's Nova runs with (and emits its notifications by).
        **{var: original.get(section, option) for section, option, var in NOTIFICATION_OPTIONS},
    }
    nova_world.agent.stop()
    try:
        yield {
            "vars": extra_vars,
            "workdir": workdir,
            "root": root,
            "original": original,
            "password": clouds["guest-ha"]["auth"]["password"],
        }
    finally:
        subprocess.run(
            [f"{root}/usr/local/sbin/guest-ha-compute-daemon", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        nova_conf.write_text(original_text)
        nova_world.agent = nova_world.start_agent("agent-after-role")
        shutil.rmtree(workdir, ignore_errors=True)


def test_compute_role_on_the_nova_host(nova_world: NovaWorld, role_host) -> None:
    cloud = nova_world.cloud
    nova_conf = cloud.nova_conf_path
    root, extra_vars = role_host["root"], role_host["vars"]
    # A Nova host before guest-ha: no notification settings of ours.
    stripped = read_ini(nova_conf)
    for section, option, _ in NOTIFICATION_OPTIONS:
        stripped.remove_option(section, option)
    with open(nova_conf, "w") as fh:
        stripped.write(fh)

    out, recap = run_role(role_host["workdir"], extra_vars)
    assert recap["changed"] > 0 and recap["failed"] == 0
    # nova.conf: the notification settings are back, nothing else was touched.
    assert as_dict(read_ini(nova_conf)) == as_dict(role_host["original"])
    # Credentials: written private, never shown (the run was verbose, with --diff).
    etc = Path(root) / "etc" / "guest-ha"
    assert (etc / "clouds.yaml").stat().st_mode & 0o777 == 0o600
    assert role_host["password"] in (etc / "clouds.yaml").read_text()
    assert role_host["password"] not in out
    assert cloud.rabbit_url and cloud.rabbit_url not in out  # messaging.conf's URL
    config = read_compute_yaml(etc / "compute.yaml")
    assert config["libvirt"]["mode"] == "nova"
    assert config["libvirt"]["nova_clouds_yaml"] == str(etc / "clouds.yaml")

    _, again = run_role(role_host["workdir"], extra_vars)
    assert again["changed"] == 0, again

    # The agent the role runs, in Nova mode, heartbeats a server Nova boots.
    events = Path(extra_vars["guest_ha_compute_events_jsonl"])
    uuid = cloud.boot("gha-role-1", nova_world.flavors["ha"], nova_world.image)
    try:
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
        wait_until(lambda: uuid in registered(events), BOOT_TIMEOUT)
    finally:
        cloud.delete(uuid)
    assert [e for e in read_events(events) if e.get("fault")] == []


def read_compute_yaml(path: Path) -> Dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(path.read_text()))


def read_events(path: Path) -> list:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def registered(path: Path) -> set:
    return {e["instance_uuid"] for e in read_events(path) if e["kind"] == "registered"}
