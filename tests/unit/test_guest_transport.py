"""PortLink life cycle with a scripted fake port (virtio quirks without a VM)."""

from __future__ import annotations

import errno
import logging
import select

import pytest

from channel_support import take_output
from guest_ha.guest.transport import DeviceGone, PortLink, RawPort
from guest_ha.protocol import GuestChannel, GuestHeartbeat

pytestmark = pytest.mark.unit


class FakePort(RawPort):
    def __init__(self, script):
        self.script = script
        self.written = bytearray()

    def fileno(self):
        return 99

    def read(self):
        data = self.script.reads.pop(0) if self.script.reads else None
        if isinstance(data, Exception):
            raise data
        return data

    def write(self, data):
        if self.script.write_error:
            raise DeviceGone("write: EIO")
        if self.script.hup:
            raise AssertionError("wrote while the host was away")
        self.written += data
        return len(data)

    def hangup(self):
        return self.script.hup

    def close(self):
        self.script.closed += 1


class Script:
    def __init__(self):
        self.open_errors = []
        self.reads = []
        self.hup = False
        self.write_error = False
        self.closed = 0
        self.ports = []

    def opener(self):
        if self.open_errors:
            raise OSError(self.open_errors.pop(0), "nope")
        port = FakePort(self)
        self.ports.append(port)
        return port


@pytest.fixture
def setup(caplog):
    caplog.set_level(logging.INFO)
    hb = GuestHeartbeat(name="vm", interval_ms=1000, invocation_id="abc123")
    channel = GuestChannel(hb, 0.0)
    hb.host_disconnected(0.0)
    hb.start(0.0)
    channel.tick(0.0)
    script = Script()
    link = PortLink("/dev/fake", script.opener, channel, logging.getLogger("test.port"))
    return link, channel, script, caplog


def test_waits_logging_once_then_sends_init(setup):
    link, channel, script, caplog = setup
    script.open_errors = [errno.ENOENT] * 5 + [errno.EBUSY] * 2
    t = 0.0
    for _ in range(7):
        link.tick(t)
        assert link.state == PortLink.WAITING
        assert link.next_deadline() == pytest.approx(t + 0.5)
        t += 0.5
    text = caplog.text
    assert text.count("waiting for port") == 1
    assert text.count("is busy") == 1
    assert not channel.wants_write  # nothing queued while no port
    link.tick(t)
    assert link.state == PortLink.CONNECTED
    link.flush(t)
    assert b'"init"' in script.ports[0].written


def test_hangup_holds_writes_and_reconnect_resends_init(setup):
    link, channel, script, _ = setup
    link.tick(0.0)
    port = script.ports[0]
    link.flush(0.0)
    port.written.clear()
    script.hup = True
    script.reads = [b""]
    link.handle(select.POLLIN | select.POLLHUP, 1.0)
    assert link.state == PortLink.HANGUP
    assert link.poll_registration() is None  # no busy loop on POLLHUP
    assert link.next_deadline() == pytest.approx(1.1)
    channel.heartbeat.exit(1.0)  # something to send while nobody listens
    channel.tick(1.0)
    link.flush(1.0)
    assert port.written == b""
    link.tick(1.05)  # not due yet
    assert link.state == PortLink.HANGUP
    script.hup = False
    link.tick(1.1)
    assert link.state == PortLink.CONNECTED


def test_device_gone_goes_back_to_waiting(setup):
    link, channel, script, caplog = setup
    link.tick(0.0)
    script.reads = [DeviceGone("read: EIO")]
    link.handle(select.POLLIN, 1.0)
    assert link.state == PortLink.WAITING
    assert script.closed == 1
    assert not channel.wants_write
    assert "went away" in caplog.text
    link.tick(1.5)
    assert link.state == PortLink.CONNECTED
    assert len(script.ports) == 2


def test_write_error_is_device_gone(setup):
    link, _channel, script, _ = setup
    link.tick(0.0)
    script.write_error = True
    link.flush(0.0)
    assert link.state == PortLink.WAITING


def test_opened_in_hangup_sends_nothing(setup):
    link, channel, script, _ = setup
    script.hup = True
    link.tick(0.0)
    assert link.state == PortLink.HANGUP
    assert not channel.wants_write
    script.hup = False
    link.tick(0.1)
    assert link.state == PortLink.CONNECTED
    assert b'"init"' in take_output(channel)
