"""roles/guest baked into a real Debian root filesystem through the chroot connection.

Uses the debootstrap root cached by ``scripts/build_test_guest.py`` (built on
first use: about 40 s). Each test unpacks a fresh copy and runs
``playbooks/bake_guest_image.yml`` against it, exactly as an operator would.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from typing import Dict

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "build_test_guest.py")

CHECK = "#!/bin/sh\n# from the role test\nexit 0\n"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_test_guest", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_test_guest", module)
    spec.loader.exec_module(module)
    return module


builder = load_builder()


@pytest.fixture(scope="module")
def rootfs_tarball() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    if not os.path.exists(builder.ROOTFS_TARBALL) and not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (scripts/bootstrap.sh)")
    return builder.ensure_rootfs_tarball()


@pytest.fixture
def rootdir(rootfs_tarball: str, tmp_path) -> str:
    return builder.extract_rootfs(str(tmp_path / "root"), rootfs_tarball)


def recap(output: str) -> Dict[str, int]:
    match = re.search(r"^test-image\s*:\s*(.*)$", output, re.MULTILINE)
    assert match, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def bake(rootdir: str, extra: Dict[str, object]) -> Dict[str, int]:
    proc = builder.bake(rootdir, extra, capture=True)
    return recap(proc.stdout)


def in_root(rootdir: str, *parts: str) -> str:
    return os.path.join(rootdir, *(p.lstrip("/") for p in parts))


def read(rootdir: str, path: str) -> str:
    with open(in_root(rootdir, path), encoding="utf-8") as fh:
        return fh.read()


def test_bake_installs_everything_and_is_idempotent(rootdir: str, tmp_path) -> None:
    extra = {
        "guest_ha_guest_build_dir": str(tmp_path / "pyz"),
        "guest_ha_guest_name": "web-1",
        "guest_ha_guest_interval_ms": 500,
        "guest_ha_guest_corrective_action": "reboot",
        "guest_ha_guest_check_interval_ms": 2000,
        "guest_ha_guest_log": "syslog",
        "guest_ha_guest_checks": [
            {"name": "10-role-test", "content": CHECK},
            {"name": "20-gone", "state": "absent"},
        ],
        "guest_ha_guest_unit_extra": ["Environment=GUEST_HA_TEST=1"],
    }
    first = bake(rootdir, extra)
    assert first["failed"] == 0
    assert first["changed"] > 0
    second = bake(rootdir, extra)
    assert second["failed"] == 0
    assert second["changed"] == 0, "second bake changed something (not idempotent)"

    # The daemon: zipapp and both commands.
    pyz = "/usr/local/lib/guest-ha/guestd.pyz"
    assert os.path.getsize(in_root(rootdir, pyz)) > 10_000
    for name, tail in (("guest-ha-guestd", ""), ("guest-ha-health", " health")):
        wrapper = in_root(rootdir, "/usr/local/bin", name)
        assert os.stat(wrapper).st_mode & 0o777 == 0o755
        assert f'exec /usr/bin/python3 {pyz}{tail} "$@"' in read(rootdir, wrapper[len(rootdir) :])

    # Config: the daemon itself accepts it, with our values.
    check = subprocess.run(
        [
            "chroot",
            rootdir,
            "python3",
            pyz,
            "--check-config",
            "--config",
            "/etc/guest-ha/guestd.conf",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    effective = dict(line.split(" = ", 1) for line in check.stdout.splitlines() if " = " in line)
    assert effective["name"] == "web-1"
    assert effective["interval_ms"] == "500"
    assert effective["corrective_action"] == "reboot"
    assert effective["check_interval_ms"] == "2000"
    assert effective["checks_dir"] == "/etc/guest-ha/checks.d"
    assert effective["port"] == "/dev/virtio-ports/org.opnfv.ha.0"
    assert effective["log"] == "syslog"
    # ... and so does the wrapper.
    via_wrapper = subprocess.run(
        ["chroot", rootdir, "/usr/local/bin/guest-ha-guestd", "--check-config"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert via_wrapper.returncode == 0, via_wrapper.stderr
    assert "name = web-1" in via_wrapper.stdout

    # Check scripts.
    check_path = in_root(rootdir, "/etc/guest-ha/checks.d/10-role-test")
    assert read(rootdir, "/etc/guest-ha/checks.d/10-role-test") == CHECK
    assert os.stat(check_path).st_mode & 0o777 == 0o755

    # systemd unit, enabled by symlink only (bake mode starts nothing).
    unit = read(rootdir, "/etc/systemd/system/guest-ha-guestd.service")
    assert "ExecStart=/usr/local/bin/guest-ha-guestd --config /etc/guest-ha/guestd.conf" in unit
    assert "Restart=always" in unit
    assert "NoNewPrivileges=yes" in unit
    assert "Environment=GUEST_HA_TEST=1" in unit
    assert "WantedBy=multi-user.target" in unit
    assert "virtio\\x2dports" not in unit
    wants = in_root(rootdir, "/etc/systemd/system/multi-user.target.wants/guest-ha-guestd.service")
    assert os.readlink(wants) == "/etc/systemd/system/guest-ha-guestd.service"

    # Port links: udev rule and the init hook for guests without udev.
    rule = read(rootdir, "/etc/udev/rules.d/60-guest-ha-virtio-ports.rules")
    assert 'KERNEL=="vport*"' in rule
    assert 'SYMLINK+="virtio-ports/$attr{name}"' in rule
    hook = in_root(rootdir, "/usr/local/sbin/guest-ha-vport-links")
    assert os.access(hook, os.X_OK)
    sysfs = tmp_path / "sys"
    for vport, name in (("vport0p1", "org.opnfv.ha.0"), ("vport0p2", "org.qemu.guest_agent.0")):
        (sysfs / "class/virtio-ports" / vport).mkdir(parents=True)
        (sysfs / "class/virtio-ports" / vport / "name").write_text(name + "\n")
    dev = tmp_path / "dev"
    env = dict(os.environ, GUEST_HA_SYSFS=str(sysfs), GUEST_HA_DEV=str(dev))
    subprocess.run(["sh", hook], env=env, check=True)
    subprocess.run(["sh", hook], env=env, check=True)  # again: still fine
    assert os.readlink(dev / "virtio-ports/org.opnfv.ha.0") == "../vport0p1"
    assert os.readlink(dev / "virtio-ports/org.qemu.guest_agent.0") == "../vport0p2"

    # Nothing left behind by Ansible in the image.
    assert not os.path.exists(in_root(rootdir, "/root/.ansible"))


def test_unit_passes_systemd_analyze_verify(rootdir: str, tmp_path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    bake(rootdir, {"guest_ha_guest_build_dir": str(tmp_path / "pyz")})
    # The image has no systemd of its own: verify on the host, with ExecStart
    # pointing into the image so the "is executable" check sees the real wrapper.
    unit = read(rootdir, "/etc/systemd/system/guest-ha-guestd.service")
    unit = unit.replace("ExecStart=/usr/local/bin/", f"ExecStart={rootdir}/usr/local/bin/")
    copy = tmp_path / "guest-ha-guestd.service"
    copy.write_text(unit)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    complaints = [line for line in proc.stderr.splitlines() if "guest-ha-guestd.service" in line]
    assert complaints == []


def test_disabled_service_and_no_udev_rule(rootdir: str, tmp_path) -> None:
    extra = {
        "guest_ha_guest_build_dir": str(tmp_path / "pyz"),
        "guest_ha_guest_service_enabled": False,
        "guest_ha_guest_udev_rule": False,
    }
    bake(rootdir, extra)
    assert os.path.exists(in_root(rootdir, "/etc/systemd/system/guest-ha-guestd.service"))
    assert not os.path.lexists(
        in_root(rootdir, "/etc/systemd/system/multi-user.target.wants/guest-ha-guestd.service")
    )
    assert not os.path.exists(in_root(rootdir, "/etc/udev/rules.d/60-guest-ha-virtio-ports.rules"))


def test_prebuilt_pyz_is_used(rootdir: str, tmp_path) -> None:
    pyz = tmp_path / "prebuilt.pyz"
    subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "build_guestd_pyz.py"), str(pyz)],
        check=True,
        capture_output=True,
    )
    bake(rootdir, {"guest_ha_guest_pyz_src": str(pyz), "guest_ha_guest_build_dir": "/nonexistent"})
    with open(in_root(rootdir, "/usr/local/lib/guest-ha/guestd.pyz"), "rb") as fh:
        assert fh.read() == pyz.read_bytes()


def test_missing_python_fails_with_a_clear_message(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    root = tmp_path / "nopython"
    builder.make_shell_root(str(root))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        builder.bake(str(root), {"guest_ha_guest_build_dir": str(tmp_path / "pyz")}, capture=True)
    assert "needs Python 3.8 or later" in failed.value.output
    assert "is missing or does not run" in failed.value.output


def test_service_manager_none_installs_no_unit(rootdir: str, tmp_path) -> None:
    """Not baking, no systemd: files only, nothing enabled or started, no handler runs."""
    extra = {
        "guest_ha_guest_build_dir": str(tmp_path / "pyz"),
        "guest_ha_guest_bake": False,
        "guest_ha_guest_service_manager": "none",
    }
    assert bake(rootdir, extra)["failed"] == 0
    assert os.path.exists(in_root(rootdir, "/usr/local/bin/guest-ha-guestd"))
    assert not os.path.exists(in_root(rootdir, "/etc/systemd/system/guest-ha-guestd.service"))
    assert not os.path.lexists(
        in_root(rootdir, "/etc/systemd/system/multi-user.target.wants/guest-ha-guestd.service")
    )
