"""Start the machine's libvirtd (system instance) for tests that need a real one.

These machines have no systemd as PID 1, so tests start virtlogd and libvirtd
themselves (ENVIRONMENT.md). QEMU is told to run as root, which keeps libvirtd
restarts fast (no 20 s capability re-probe); this is for test machines only.
Tests name their domains ``gha-test-*`` and remove what they create.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

URI = "qemu:///system"
QEMU_CONF = "/etc/libvirt/qemu.conf"


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def _configure_qemu_user() -> None:
    try:
        with open(QEMU_CONF, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return
    if re.search(r'^\s*user\s*=\s*"root"', text, re.M):
        return
    with open(QEMU_CONF, "a", encoding="utf-8") as fh:
        fh.write('\n# added by guest-ha tests\nuser = "root"\ngroup = "root"\n')


def ensure_libvirtd(timeout: float = 60.0) -> str:
    """Make sure libvirtd answers on qemu:///system; skip the test if it cannot."""
    if not shutil.which("libvirtd") or not shutil.which("virsh"):
        pytest.skip("libvirtd is not installed (scripts/bootstrap.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("libvirt system tests need root")
    _configure_qemu_user()
    if not _running("virtlogd"):
        subprocess.run(["virtlogd", "-d"], check=True)
    if not _running("libvirtd"):
        subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.monotonic() + timeout
    while True:
        probe = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return URI
        if time.monotonic() > deadline:
            raise RuntimeError(f"libvirtd did not answer within {timeout} s: {probe.stderr}")
        time.sleep(0.2)
