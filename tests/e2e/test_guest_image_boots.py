"""The baked test guest boots under QEMU (TCG) and heartbeats with the real compute engine.

The image comes from ``scripts/build_test_guest.py`` (cached; the first build
takes about a minute). QEMU is started directly: the rootfs through a qcow2
overlay, a raw control disk whose first byte the guest's ``50-test-control``
check reads, the virtio-serial port ``org.opnfv.ha.0`` on a UNIX socket and QMP
for the ACPI power button. The compute engine connects to the port's socket
like it does to a libvirt channel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Iterator, Optional

import pytest

from guest_ha_dev.sim import SimVmInfo
from guest_ha_dev.sim.harness import EngineProcess, wait_until

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "build_test_guest.py")
QEMU = "qemu-system-x86_64"
INTERVAL_MS = 200
BOOT_TIMEOUT_S = 60.0  # ~5 s alone; generous for a loaded 2-core machine


def load_builder():
    spec = importlib.util.spec_from_file_location("build_test_guest", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image() -> dict:
    if os.geteuid() != 0:
        pytest.skip("building the test guest needs root")
    for tool in (QEMU, "qemu-img", "mke2fs"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (scripts/bootstrap.sh)")
    return load_builder().build()


class Guest:
    """One QEMU process running the test image."""

    def __init__(self, image: dict, workdir: str, interval_ms: int = INTERVAL_MS) -> None:
        self.dir = workdir
        self.uuid = str(uuid.uuid4())
        self.port_socket = os.path.join(workdir, "ha.sock")
        self.qmp_socket = os.path.join(workdir, "qmp.sock")
        self.console = os.path.join(workdir, "console.log")
        self.control = os.path.join(workdir, "ctl.img")
        overlay = os.path.join(workdir, "root.qcow2")
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                image["rootfs"],
                "-F",
                "raw",
                overlay,
            ],
            check=True,
        )
        with open(self.control, "wb") as fh:
            fh.write(b"0" + b"\0" * (1024 * 1024 - 1))
        cmdline = f"console=ttyS0 root=/dev/vda rw panic=-1 guest_ha.interval_ms={interval_ms}"
        self.cmd = [
            QEMU, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", image["kernel"], "-initrd", image["initrd"], "-append", cmdline,
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={self.control},if=virtio,format=raw,cache=none",
            "-device", "virtio-serial",
            "-chardev", f"socket,id=ha,path={self.port_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=ha,name=org.opnfv.ha.0",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-serial", f"file:{self.console}",
            "-monitor", "none", "-display", "none",
        ]  # fmt: skip
        self._out = open(os.path.join(workdir, "qemu.out"), "wb")  # noqa: SIM115 - closed in kill()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=self._out, stderr=subprocess.STDOUT)
        wait_until(lambda: os.path.exists(self.port_socket) or self.proc.poll() is not None, 15)
        if self.proc.poll() is not None:
            raise RuntimeError(f"QEMU exited at start:\n{self.text('qemu.out')}")

    def text(self, name: str = "console.log") -> str:
        try:
            with open(os.path.join(self.dir, name), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def set_control(self, byte: bytes) -> None:
        """What the guest's 50-test-control check reads: b"1" unhealthy, b"0" healthy."""
        with open(self.control, "r+b") as fh:
            fh.write(byte)
            fh.flush()
            os.fsync(fh.fileno())

    def qmp(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.qmp_socket)
            stream = sock.makefile("rwb")
            stream.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": cmd}).encode() + b"\n")
                stream.flush()
                while True:  # skip asynchronous events until the reply
                    reply = json.loads(stream.readline())
                    if "return" in reply or "error" in reply:
                        break
                assert "error" not in reply, reply

    def wait_exit(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def guest(image: dict) -> Iterator[Guest]:
    # Short (UNIX socket paths <= 107 bytes), and not tmpfs: the control disk is
    # opened with O_DIRECT (cache=none), which tmpfs refuses.
    workdir = tempfile.mkdtemp(prefix="gha-vm-", dir="/var/tmp")
    vm = None
    try:
        vm = Guest(image, workdir)
        yield vm
    finally:
        if vm is not None:
            vm.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def engine(guest: Guest) -> Iterator[EngineProcess]:
    vm = SimVmInfo(
        uuid=guest.uuid, name="guest-ha-test", socket_path=guest.port_socket, guest_port=None
    )
    proc = EngineProcess(os.path.join(guest.dir, "engine"), [vm], log_level="debug").start()
    try:
        yield proc
    finally:
        proc.stop()


def test_guest_boots_registers_reports_health_and_deregisters_on_acpi_shutdown(
    guest: Guest, engine: EngineProcess
) -> None:
    def context() -> str:
        return (
            f"\n--- console ---\n{guest.text()[-4000:]}"
            f"\n--- engine ---\n{engine.log_text()[-3000:]}"
        )

    try:
        registered = engine.wait_event("registered", guest.uuid, timeout=BOOT_TIMEOUT_S)
    except TimeoutError as exc:
        pytest.fail(f"{exc}{context()}")
    boot_s = time.monotonic() - guest.started
    sys.stderr.write(f"\nboot to registered: {boot_s:.1f} s\n")
    assert "guest-ha-guestd" in guest.text()
    assert registered["fault"] is False

    # The host toggles the guest's control disk: the check fails, then passes again.
    mark = len(engine.events())
    guest.set_control(b"1")
    try:
        unhealthy = engine.wait_event("unhealthy", guest.uuid, timeout=20, after=mark)
    except TimeoutError as exc:
        pytest.fail(f"{exc}{context()}")
    assert unhealthy["fault"] is True
    assert "50-test-control" in json.dumps(unhealthy)
    mark = len(engine.events())
    guest.set_control(b"0")
    try:
        engine.wait_event("recovered", guest.uuid, timeout=20, after=mark)
    except TimeoutError as exc:
        pytest.fail(f"{exc}{context()}")

    # ACPI power button (what "virsh shutdown" sends): the test init stops the
    # daemon first, which deregisters with "exit", then powers off.
    mark = len(engine.events())
    guest.qmp("system_powerdown")
    try:
        engine.wait_event("exit", guest.uuid, timeout=20, after=mark)
    except TimeoutError as exc:
        pytest.fail(f"{exc}{context()}")
    assert guest.wait_exit(30) is not None, "guest did not power off" + context()
    time.sleep(3 * INTERVAL_MS / 1000)
    after_exit = engine.events()[mark:]
    assert not [e for e in after_exit if e["kind"] == "heartbeat_lost"], after_exit
