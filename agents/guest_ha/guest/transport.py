"""Port transports for the guest daemon and the link that ties one to a GuestChannel.

Two raw transports:

* :class:`ChardevPort`: the virtio-serial character device (also works on a pty
  slave already put in raw mode), opened non-blocking, never reconfigured;
* :class:`SerialPort`: a legacy serial tty through pyserial (imported lazily).

:class:`PortLink` runs the port's life cycle: wait for the device to appear
(hotplug), notice when no host process is connected (virtio reports POLLHUP and
``read()`` returns 0), hold writes back while nobody listens, and go back to
waiting when the device disappears (EIO/ENXIO/ENODEV).
"""

from __future__ import annotations

import errno
import logging
import os
import select
from typing import Any, Callable, Optional, Tuple

from ..protocol.channel import GuestChannel

READ_CHUNK = 65536
OPEN_RETRY_S = 0.5
HANGUP_RECHECK_S = 0.1

# Where virtio-serial ports are listed (each vportNpM/name holds the port's name) and
# where their device nodes live; module-level so tests can point them elsewhere.
SYSFS_VIRTIO_PORTS = "/sys/class/virtio-ports"
DEV_DIR = "/dev"

# errno values that mean the device itself went away (hot-unplug, pty master closed).
GONE_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF})


class DeviceGone(Exception):
    """The port's device disappeared; close it and wait for it again."""


class RawPort:
    """Interface of an open port. ``read`` returns None when no data is ready."""

    supports_hangup = True

    def fileno(self) -> int:
        raise NotImplementedError

    def read(self) -> Optional[bytes]:
        raise NotImplementedError

    def write(self, data: bytes) -> int:
        raise NotImplementedError

    def hangup(self) -> bool:
        """True while the port reports that no host process is connected."""
        return False

    def close(self) -> None:
        raise NotImplementedError


class ChardevPort(RawPort):
    """A character device opened with ``O_RDWR|O_NOCTTY|O_NONBLOCK`` (no termios calls)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self._probe = select.poll()
        self._probe.register(self.fd, select.POLLIN)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> Optional[bytes]:
        try:
            return os.read(self.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                raise DeviceGone(f"read: {os.strerror(exc.errno)}") from None
            raise

    def write(self, data: bytes) -> int:
        try:
            return os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno in GONE_ERRNOS or exc.errno == errno.EPIPE:
                raise DeviceGone(f"write: {os.strerror(exc.errno)}") from None
            raise

    def hangup(self) -> bool:
        """POLLHUP without a dead device: virtio's "no host connected".

        A hung-up tty (pty whose master closed) also reports POLLHUP and reads
        0, but fails every write with EIO: a zero-length write tells them apart
        (virtio-serial returns 0 for it without touching the host side).
        """
        for _fd, revents in self._probe.poll(0):
            if revents & select.POLLNVAL:
                raise DeviceGone("descriptor no longer valid")
            if revents & (select.POLLHUP | select.POLLERR):
                self.write(b"")
                return bool(revents & select.POLLHUP)
        return False

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class SerialPort(RawPort):
    """A legacy serial tty driven through pyserial (``timeout=0``: non-blocking)."""

    supports_hangup = False

    def __init__(self, path: str, baudrate: int) -> None:
        serial = import_pyserial()
        self.path = path
        self._exc = serial.SerialException
        try:
            self._ser = serial.Serial(path, baudrate, timeout=0, write_timeout=0)
        except serial.SerialException as exc:
            err = getattr(exc, "errno", None) or errno.EIO
            raise OSError(err, str(exc).splitlines()[0] if str(exc) else "cannot open") from None

    def fileno(self) -> int:
        return int(self._ser.fileno())

    def read(self) -> Optional[bytes]:
        try:
            data = self._ser.read(READ_CHUNK)
        except self._exc as exc:
            raise DeviceGone(f"read: {exc}") from None
        except OSError as exc:
            raise DeviceGone(f"read: {exc}") from None
        return bytes(data) if data else None

    def write(self, data: bytes) -> int:
        try:
            written = self._ser.write(data)
        except self._exc as exc:
            if "timeout" in type(exc).__name__.lower():
                return 0
            raise DeviceGone(f"write: {exc}") from None
        except OSError as exc:
            raise DeviceGone(f"write: {exc}") from None
        return int(written or 0)

    def close(self) -> None:
        try:
            self._ser.close()
        except Exception:
            pass


def import_pyserial() -> Any:
    """Import pyserial or raise a RuntimeError that says how to get it."""
    try:
        import serial
    except ImportError:
        raise RuntimeError(
            "transport = serial needs pyserial, which is not installed "
            "(install python3-serial or 'pip install pyserial')"
        ) from None
    return serial


def resolve_virtio_port(
    path: str, sysfs_dir: Optional[str] = None, dev_dir: Optional[str] = None
) -> str:
    """``path``, or the ``/dev/vportNpM`` node of the port named like its basename.

    Guests without udev have no ``/dev/virtio-ports/<name>`` links; the port is
    then found by its name in ``/sys/class/virtio-ports/*/name``. Returns
    ``path`` unchanged when it exists or no port has that name.
    """
    if os.path.exists(path):
        return path
    name = os.path.basename(path)
    sysfs_dir = SYSFS_VIRTIO_PORTS if sysfs_dir is None else sysfs_dir
    try:
        ports = sorted(os.listdir(sysfs_dir))
    except OSError:
        return path
    for port in ports:
        try:
            with open(os.path.join(sysfs_dir, port, "name"), encoding="utf-8") as fh:
                found = fh.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if name and found == name:
            return os.path.join(DEV_DIR if dev_dir is None else dev_dir, port)
    return path


def port_opener(transport: str, path: str, baudrate: int) -> Callable[[], RawPort]:
    """A function that opens the configured port (raises OSError while it cannot)."""
    if transport == "serial":
        import_pyserial()  # fail at start-up, not on the first retry
        return lambda: SerialPort(path, baudrate)
    return lambda: ChardevPort(resolve_virtio_port(path))


class PortLink:
    """Keeps one port open and connected to a :class:`GuestChannel`."""

    WAITING = "waiting"
    CONNECTED = "connected"
    HANGUP = "hangup"

    def __init__(
        self,
        path: str,
        opener: Callable[[], RawPort],
        channel: GuestChannel,
        log: logging.Logger,
    ) -> None:
        self.path = path
        self.opener = opener
        self.channel = channel
        self.log = log
        self.state = self.WAITING
        self.port: Optional[RawPort] = None
        self._next_try = 0.0
        self._wait_reason: Optional[str] = None
        self.counters = {"bytes_in": 0, "bytes_out": 0, "opens": 0, "hangups": 0, "gone": 0}

    # -- poll integration ----------------------------------------------------------
    def poll_registration(self) -> Optional[Tuple[int, int]]:
        """(fd, events) to poll, or None (waiting, or in hang-up: re-checked on a timer)."""
        if self.port is None or self.state != self.CONNECTED:
            return None
        events = select.POLLIN
        if self.channel.wants_write:
            events |= select.POLLOUT
        return self.port.fileno(), events

    def next_deadline(self) -> Optional[float]:
        if self.state == self.CONNECTED:
            return None
        return self._next_try

    def handle(self, revents: int, now: float) -> None:
        """React to poll events on the port while connected."""
        if self.port is None:
            return
        try:
            if revents & select.POLLNVAL:
                raise DeviceGone("descriptor no longer valid")
            if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
                data = self.port.read()
                if data:
                    self.counters["bytes_in"] += len(data)
                    self.channel.receive_data(data, now)
                elif data == b"" or revents & select.POLLHUP:
                    hung_up = self.port.supports_hangup and self.port.hangup()
                    if hung_up or data == b"":
                        self._enter_hangup(now)
                        return
            if revents & select.POLLOUT:
                self.flush(now)
        except DeviceGone as exc:
            self._gone(now, str(exc))

    def tick(self, now: float) -> None:
        """Retry opening, or re-check a hang-up, when due."""
        if self.state == self.CONNECTED or now < self._next_try:
            return
        if self.state == self.WAITING:
            self._try_open(now)
        elif self.state == self.HANGUP:
            self._recheck_hangup(now)

    def flush(self, now: float) -> None:
        """Write queued output, only while a host is connected."""
        if self.port is None or self.state != self.CONNECTED:
            return
        try:
            sent = self.channel.send_output(self.port.write)
        except DeviceGone as exc:
            self._gone(now, str(exc))
            return
        self.counters["bytes_out"] += sent

    def close(self) -> None:
        if self.port is not None:
            self.port.close()
            self.port = None
        self.state = self.WAITING

    # -- state changes -------------------------------------------------------------
    def _try_open(self, now: float) -> None:
        self._next_try = now + OPEN_RETRY_S
        try:
            port = self.opener()
        except OSError as exc:
            self._log_wait(exc)
            return
        except RuntimeError as exc:
            self._log_wait_text("error", str(exc))
            return
        self.port = port
        self._wait_reason = None
        self.counters["opens"] += 1
        try:
            hung_up = port.supports_hangup and port.hangup()
        except DeviceGone as exc:
            self._gone(now, str(exc))
            return
        if hung_up:
            self.log.info("opened %s; no host connected yet", self.path)
            self._enter_hangup(now, count=False)
        else:
            self.log.info("opened %s; host connected", self.path)
            self._connect(now)

    def _log_wait(self, exc: OSError) -> None:
        if exc.errno in (errno.ENOENT, errno.ENXIO, errno.ENODEV):
            self._log_wait_text("missing", f"waiting for port {self.path} to appear")
        elif exc.errno == errno.EBUSY:
            self._log_wait_text(
                "busy", f"port {self.path} is busy (another process has it open); retrying"
            )
        else:
            reason = exc.strerror or str(exc)
            self._log_wait_text(reason, f"cannot open port {self.path}: {reason}; retrying")

    def _log_wait_text(self, key: str, text: str) -> None:
        if self._wait_reason != key:
            self._wait_reason = key
            (self.log.info if key == "missing" else self.log.warning)(text)

    def _connect(self, now: float) -> None:
        self.state = self.CONNECTED
        self.channel.host_connected(now)

    def _enter_hangup(self, now: float, count: bool = True) -> None:
        if count:
            self.counters["hangups"] += 1
            self.log.info("host disconnected from %s", self.path)
        self.state = self.HANGUP
        self.channel.host_disconnected(now)
        self._next_try = now + HANGUP_RECHECK_S

    def _recheck_hangup(self, now: float) -> None:
        assert self.port is not None
        self._next_try = now + HANGUP_RECHECK_S
        try:
            if self.port.hangup():
                # Whatever is buffered came from a host that is gone: drop it.
                for _ in range(16):
                    if not self.port.read():
                        break
                return
        except DeviceGone as exc:
            self._gone(now, str(exc))
            return
        self.log.info("host connected to %s", self.path)
        self._connect(now)

    def _gone(self, now: float, why: str) -> None:
        self.counters["gone"] += 1
        self.log.warning("port %s went away (%s); waiting for it again", self.path, why)
        if self.port is not None:
            self.port.close()
            self.port = None
        self.state = self.WAITING
        self.channel.host_disconnected(now)
        self.channel.discard_output()
        self._wait_reason = None
        self._next_try = now + OPEN_RETRY_S
