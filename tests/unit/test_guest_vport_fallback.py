"""Port fallback for guests without udev: find /dev/vportNpM by its name in sysfs."""

from __future__ import annotations

import os

import pytest

from guest_ha.guest import transport
from guest_ha.guest.transport import ChardevPort, port_opener, resolve_virtio_port

pytestmark = pytest.mark.unit

PORT = "/dev/virtio-ports/org.opnfv.ha.0"


def fake_sysfs(root, ports):
    """``root/class/virtio-ports/<vport>/name`` for each {vport: name} (None: no file)."""
    base = root / "class" / "virtio-ports"
    for vport, name in ports.items():
        (base / vport).mkdir(parents=True)
        if name is not None:
            (base / vport / "name").write_text(name + "\n")
    return str(base)


def test_existing_path_is_used_as_is(tmp_path):
    sysfs = fake_sysfs(tmp_path, {"vport0p1": "org.opnfv.ha.0"})
    dev = tmp_path / "org.opnfv.ha.0"
    dev.write_text("")
    assert resolve_virtio_port(str(dev), sysfs, "/dev") == str(dev)


def test_missing_link_falls_back_to_named_port(tmp_path):
    sysfs = fake_sysfs(
        tmp_path,
        {"vport0p0": None, "vport0p1": "org.qemu.guest_agent.0", "vport1p3": "org.opnfv.ha.0"},
    )
    assert resolve_virtio_port(PORT, sysfs, "/fakedev") == "/fakedev/vport1p3"


def test_unknown_name_or_missing_sysfs_keeps_the_path(tmp_path):
    sysfs = fake_sysfs(tmp_path, {"vport0p1": "org.opnfv.ha.1", "vport0p2": ""})
    assert resolve_virtio_port(PORT, sysfs, "/dev") == PORT
    assert resolve_virtio_port(PORT, str(tmp_path / "nope"), "/dev") == PORT
    assert resolve_virtio_port("/dev/virtio-ports/", sysfs, "/dev") == "/dev/virtio-ports/"


def test_opener_opens_the_vport_node(tmp_path, monkeypatch):
    """The virtio opener resolves at every attempt (the port may be hot-plugged later)."""
    sysfs_root = tmp_path / "sys"
    dev = tmp_path / "dev"
    dev.mkdir()
    monkeypatch.setattr(transport, "SYSFS_VIRTIO_PORTS", str(sysfs_root / "class/virtio-ports"))
    monkeypatch.setattr(transport, "DEV_DIR", str(dev))
    opener = port_opener("virtio", PORT, 115200)
    with pytest.raises(FileNotFoundError):
        opener()  # no such port yet: the daemon keeps waiting

    fake_sysfs(sysfs_root, {"vport2p1": "org.opnfv.ha.0"})
    master, slave = os.openpty()
    try:
        os.symlink(os.ttyname(slave), dev / "vport2p1")
        port = opener()
        try:
            assert isinstance(port, ChardevPort)
            assert port.path == str(dev / "vport2p1")
            assert port.write(b"ping") == 4
            assert os.read(master, 4) == b"ping"
        finally:
            port.close()
    finally:
        os.close(master)
        os.close(slave)
