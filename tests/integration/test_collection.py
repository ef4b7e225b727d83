"""The Ansible collection guest_ha.guest_ha, built and installed, used by its
fully-qualified names from a playbook outside this repository.

``scripts/build_collection.py`` builds the tarball; ``ansible-galaxy collection
install`` puts it in a private collections folder; the playbooks run from a
temporary folder with an empty ansible.cfg, so nothing of the repository's
``library``/``module_utils``/``roles_path`` settings helps. The module works
on a real libvirtd (a defined, shut-off domain) and is idempotent; a role
resolves by its FQCN, checks its ``argument_specs`` and bakes a root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from typing import Dict

import pytest

from libvirt_support import ensure_libvirtd

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='KiB'>65536</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <controller type='virtio-serial' index='0'/>
  </devices>
</domain>
"""


def _run(argv, cwd: str, env: Dict[str, str], check: bool = True) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, out[-4000:]
    return out


def _recap(out: str, host: str = "localhost") -> Dict[str, int]:
    match = re.search(rf"^{host}\s*:\s*(.*)$", out, re.MULTILINE)
    assert match, out[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Dict[str, str]:
    """Build the tarball, install it into a private folder; the env that uses it."""
    base = tmp_path_factory.mktemp("collection")
    build = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "build_collection.py"),
            "--out",
            str(base / "build"),
        ],
        cwd=REPO,
        env={**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    out = build.stdout
    tarball = out.strip().splitlines()[-1]
    assert tarball.endswith("guest_ha-guest_ha-0.1.0.tar.gz") and os.path.isfile(tarball)
    play_dir = base / "elsewhere"
    play_dir.mkdir()
    (play_dir / "ansible.cfg").write_text("[defaults]\ninterpreter_python = auto_silent\n")
    env = {
        **os.environ,
        "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
        "ANSIBLE_CONFIG": str(play_dir / "ansible.cfg"),
        "ANSIBLE_HOME": str(base / "ansible-home"),
        "ANSIBLE_COLLECTIONS_PATH": str(base / "collections"),
        "ANSIBLE_LOCAL_TEMP": str(base / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    for key in ("ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS", "ANSIBLE_ROLES_PATH"):
        env.pop(key, None)
    # Its dependencies (community.general, ...) come with the "ansible" package;
    # Galaxy is unreachable here.
    _run(
        [
            "ansible-galaxy",
            "collection",
            "install",
            "--no-deps",
            "-p",
            str(base / "collections"),
            tarball,
        ],
        cwd=str(play_dir),
        env=env,
    )
    listing = _run(
        ["ansible-galaxy", "collection", "list", "guest_ha.guest_ha"], str(play_dir), env
    )
    assert "guest_ha.guest_ha" in listing and "0.1.0" in listing
    return {"dir": str(play_dir), **env}


def test_module_by_fqcn_is_idempotent_on_real_libvirt(installed: Dict[str, str]) -> None:
    uri = ensure_libvirtd()
    env = dict(installed)
    play_dir = env.pop("dir")
    name = f"gha-coll-{uuid.uuid4().hex[:8]}"
    xml_path = os.path.join(play_dir, f"{name}.xml")
    with open(xml_path, "w", encoding="utf-8") as fh:
        fh.write(DOMAIN.format(name=name, uuid=uuid.uuid4()))
    subprocess.run(["virsh", "-c", uri, "define", xml_path], check=True, capture_output=True)
    try:
        playbook = os.path.join(play_dir, "channel.yml")
        with open(playbook, "w", encoding="utf-8") as fh:
            fh.write(
                "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
                "    - name: The guest-ha channel, by the collection's name\n"
                "      guest_ha.guest_ha.guest_ha_channel:\n"
                f"        name: {name}\n        uri: {uri}\n        live: false\n"
            )
        assert _recap(_run(["ansible-playbook", playbook], play_dir, env))["changed"] == 1
        assert _recap(_run(["ansible-playbook", playbook], play_dir, env))["changed"] == 0
        xml = subprocess.run(
            ["virsh", "-c", uri, "dumpxml", "--inactive", name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "org.opnfv.ha.0" in xml
        doc = _run(["ansible-doc", "guest_ha.guest_ha.guest_ha_channel"], play_dir, env)
        assert "virtio-serial" in doc
    finally:
        subprocess.run(["virsh", "-c", uri, "undefine", name], capture_output=True, check=False)


@pytest.fixture
def image_root(tmp_path) -> str:
    """A fresh copy of the test image's debootstrap root (cached tarball)."""
    import importlib.util

    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    script = os.path.join(REPO, "scripts", "build_test_guest.py")
    spec = importlib.util.spec_from_file_location("build_test_guest", script)
    assert spec and spec.loader
    builder = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_test_guest", builder)
    spec.loader.exec_module(builder)
    return builder.extract_rootfs(str(tmp_path / "root"), builder.ensure_rootfs_tarball())


def test_role_by_fqcn_bakes_an_image_idempotently(
    installed: Dict[str, str], image_root: str, tmp_path
) -> None:
    env = dict(installed)
    play_dir = env.pop("dir")
    inventory = os.path.join(play_dir, "images.ini")
    with open(inventory, "w", encoding="utf-8") as fh:
        fh.write(
            f"test-image ansible_connection=community.general.chroot ansible_host={image_root} "
            "ansible_python_interpreter=/usr/bin/python3\n"
        )
    playbook = os.path.join(play_dir, "role.yml")
    with open(playbook, "w", encoding="utf-8") as fh:
        fh.write(
            "- hosts: test-image\n  gather_facts: false\n  tasks:\n"
            "    - name: The guest role, by the collection's name\n"
            "      ansible.builtin.include_role:\n        name: guest_ha.guest_ha.guest\n"
        )
    # The role's own sources default to the collection's folder, which holds no
    # guest-ha sources: the operator names a checkout (or uses a prebuilt pyz).
    common = [
        "ansible-playbook",
        "-i",
        inventory,
        playbook,
        "-e",
        "guest_ha_guest_bake=true",
        "-e",
        f"guest_ha_guest_source_dir={REPO}",
        "-e",
        f"guest_ha_guest_build_dir={tmp_path / 'pyz'}",
    ]
    # The role's argument_specs answer a wrong value with a clear error.
    bad = _run([*common, "-e", "guest_ha_guest_interval_ms=fast"], play_dir, env, check=False)
    assert "guest_ha_guest_interval_ms" in bad and "failed=1" in bad, bad[-3000:]
    first = _recap(_run(common, play_dir, env), "test-image")
    assert first["failed"] == 0 and first["changed"] > 0
    assert _recap(_run(common, play_dir, env), "test-image")["changed"] == 0
    pyz = os.path.join(image_root, "usr/local/lib/guest-ha/guestd.pyz")
    assert os.path.getsize(pyz) > 10_000
