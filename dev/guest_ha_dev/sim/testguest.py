"""Test domains on a real libvirtd: TCG domain XML, bookkeeping and cleanup.

Used by the e2e tests, the VM benchmarks and the demos. Domains are named
``gha-<purpose>-<random>`` so they are easy to spot and never clash.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid as uuidlib
from typing import Any, Dict, List, Optional, Sequence

GUEST_HA_NS = "https://opendev.org/guest-ha/metadata/1"
URI = "qemu:///system"
QEMU_CONF = "/etc/libvirt/qemu.conf"


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def _configure_qemu_user() -> bool:
    """Run QEMU as root (test guests use files in private folders). True if changed."""
    try:
        with open(QEMU_CONF, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return False
    if re.search(r'^\s*user\s*=\s*"root"', text, re.M):
        return False
    with open(QEMU_CONF, "a", encoding="utf-8") as fh:
        fh.write('\n# added by guest-ha tests\nuser = "root"\ngroup = "root"\n')
    return True


def _stop_libvirtd(timeout: float = 30.0) -> None:
    """Stop the running libvirtd (its QEMU guests keep running; a new one adopts them)."""
    subprocess.run(["pkill", "-TERM", "-x", "libvirtd"], check=False)
    deadline = time.monotonic() + timeout
    while _running("libvirtd"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"libvirtd did not stop within {timeout} s")
        time.sleep(0.2)


def ensure_libvirtd(timeout: float = 60.0) -> str:
    """Make sure libvirtd answers on qemu:///system (test machines only).

    Raises :class:`RuntimeError` when it is not installed, not root, or does
    not answer in time.
    """
    if not shutil.which("libvirtd") or not shutil.which("virsh"):
        raise RuntimeError("libvirtd is not installed (scripts/bootstrap.sh installs it)")
    if os.geteuid() != 0:
        raise RuntimeError("starting the system libvirtd needs root")
    if _configure_qemu_user() and _running("libvirtd"):
        # libvirtd reads qemu.conf only at start: one already running (the
        # compute role's, say) would keep starting QEMU as libvirt-qemu.
        _stop_libvirtd()
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


def domain_xml(
    name: str,
    uuid: str,
    *,
    optin: Optional[bool],
    controller: bool = True,
    kernel: Optional[str] = None,
    initrd: Optional[str] = None,
    cmdline: str = "",
    disks: Sequence[Dict[str, str]] = (),
    serial_log: Optional[str] = None,
    memory_mib: int = 256,
    server_group: Optional[str] = None,
) -> str:
    metadata = ""
    if optin is not None or server_group:
        group = f"<guest_ha:server_group name='{server_group}'/>" if server_group else ""
        heartbeat = (
            f"<guest_ha:heartbeat enabled='{str(optin).lower()}'/>" if optin is not None else ""
        )
        metadata = (
            f"<metadata><guest_ha:config xmlns:guest_ha='{GUEST_HA_NS}'>"
            f"{heartbeat}{group}</guest_ha:config></metadata>"
        )
    boot = ""
    if kernel:
        boot = f"<kernel>{kernel}</kernel><initrd>{initrd}</initrd><cmdline>{cmdline}</cmdline>"
    devices = []
    for i, disk in enumerate(disks):
        cache = f" cache='{disk['cache']}'" if disk.get("cache") else ""
        devices.append(
            f"<disk type='file' device='disk'><driver name='qemu' type='{disk['format']}'{cache}/>"
            f"<source file='{disk['path']}'/><target dev='vd{chr(97 + i)}' bus='virtio'/></disk>"
        )
    if controller:
        devices.append("<controller type='virtio-serial' index='0'/>")
    if serial_log:
        devices.append(
            f"<serial type='file'><source path='{serial_log}'/><target port='0'/></serial>"
        )
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  {metadata}
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {"".join(devices)}
    <memballoon model='none'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""


class Domains:
    """Defines test domains and removes every one of them at the end."""

    def __init__(self, conn: Any, prefix: str = "gha-e2e") -> None:
        self.conn = conn
        self.prefix = prefix
        self.names: List[str] = []

    def define(self, xml_for: Any, *, start: bool = True, **kwargs: Any) -> Any:
        name = f"{self.prefix}-{uuidlib.uuid4().hex[:8]}"
        uuid = str(uuidlib.uuid4())
        dom = self.conn.defineXML(xml_for(name, uuid, **kwargs))
        self.names.append(name)
        if start:
            dom.create()
        return dom

    def cleanup(self) -> None:
        import libvirt

        for name in self.names:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                dom.undefine()
            except libvirt.libvirtError:
                pass


def qemu_pid(name: str) -> int:
    with open(f"/run/libvirt/qemu/{name}.pid", encoding="ascii") as fh:
        return int(fh.read().strip())


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], check=True, capture_output=True, text=True
    ).stdout


class GuestImage:
    """The test guest built by ``scripts/build_test_guest.py`` (kernel, initrd, rootfs)."""

    def __init__(self, out_dir: str) -> None:
        with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as fh:
            self.manifest = json.load(fh)
        self.kernel = os.path.join(out_dir, self.manifest["kernel"])
        self.initrd = os.path.join(out_dir, self.manifest["initrd"])
        self.rootfs = os.path.join(out_dir, self.manifest["rootfs"])
        self.cmdline = self.manifest["cmdline"]

    @classmethod
    def build(cls, repo: str, out_dir: Optional[str] = None) -> "GuestImage":
        """Build (or reuse the cached) test guest image."""
        out_dir = out_dir or os.path.join(repo, ".cache", "guest-image", "out")
        subprocess.run(
            [
                sys.executable,
                os.path.join(repo, "scripts", "build_test_guest.py"),
                "--out",
                out_dir,
            ],
            check=True,
        )
        return cls(out_dir)

    def overlay(self, path: str) -> str:
        """A copy-on-write qcow2 overlay of the root filesystem, one per VM."""
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.rootfs, "-F", "raw", path],
            check=True,
        )
        return path

    def domain_kwargs(
        self,
        workdir: str,
        tag: str,
        interval_ms: int,
        control_disk: bool = True,
        extra_cmdline: str = "",
    ) -> Dict[str, Any]:
        """Keyword arguments for :func:`domain_xml` that boot this image."""
        disks = [{"path": self.overlay(os.path.join(workdir, f"{tag}.qcow2")), "format": "qcow2"}]
        if control_disk:
            ctl = os.path.join(workdir, f"{tag}.ctl")
            with open(ctl, "wb") as fh:
                fh.write(b"0" + b"\0" * (1024 * 1024 - 1))
            disks.append({"path": ctl, "format": "raw", "cache": "none"})
        return {
            "kernel": self.kernel,
            "initrd": self.initrd,
            "cmdline": f"{self.cmdline} guest_ha.interval_ms={interval_ms} {extra_cmdline}".strip(),
            "disks": disks,
            "serial_log": os.path.join(workdir, f"{tag}.console.log"),
        }


def set_control(path: str, unhealthy: bool, slow: bool = False, hang: bool = False) -> None:
    """Flip the test guest's control disk: its check script then fails (or passes;
    with ``slow``, passes after 1.5 s; with ``hang``, freezes the guest daemon)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"1" if unhealthy else b"2" if slow else b"3" if hang else b"0", 0)
        os.fsync(fd)
    finally:
        os.close(fd)
