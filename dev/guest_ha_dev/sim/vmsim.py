"""The simulator proper: one selectors loop in a background thread."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import heapq
import itertools
import os
import random
import selectors
import socket
import threading
import time
import tty
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional

from guest_ha.protocol import HEARTBEAT, SERVER_GROUP, GuestChannel, GuestHeartbeat, Message
from guest_ha.protocol.channel import HostPdu, LogRecord
from guest_ha.protocol.envelope import encode_envelope
from guest_ha.protocol.messages import HEALTHY, UNHEALTHY

MAX_PENDING = 256 * 1024
HOSTILE_KINDS = (
    "garbage",
    "malformed",
    "oversized",
    "flood",
    "spoof_broadcast",
    "deep_nesting",
    "huge_numbers",
    "spoofed_identity",
    "reinit_churn",
    "never_reads",
    "slowloris",
    "sg_not_enabled",
    "accept_close",
)
"""What a hostile guest does, each simulator turn (about every 5 ms): see
``_hostile_bytes``. ``never_reads`` stops reading the host's output;
``accept_close`` makes the simulated QEMU accept the host's connection and
close it at once."""


@dataclass(frozen=True)
class SimVmInfo:
    uuid: str
    name: str
    socket_path: str
    guest_port: Optional[str]
    """Path a real guest daemon opens as its port (pty guests only)."""


class _SimGuest:
    """An in-process guest daemon built on the same protocol core as the real one."""

    def __init__(self, name: str, interval_ms: int, corrective_action: Optional[str], now: float):
        self.interval_ms = interval_ms
        self.corrective_action = corrective_action
        self.name = name
        self.frozen = False
        self.frozen_at: Optional[float] = None
        self.hostile: Optional[str] = None
        self.hostile_bytes = 0
        self.restarts = 0
        self.stopped = False
        self.new_invocation(now)

    def new_invocation(self, now: float) -> None:
        self.heartbeat = GuestHeartbeat(
            name=self.name,
            interval_ms=self.interval_ms,
            invocation_id=uuidlib.uuid4().hex,
            corrective_action=self.corrective_action,
        )
        self.channel = GuestChannel(self.heartbeat, now)
        # What the channel handed out, the last 50 of each, for status().
        self.log: Deque[str] = collections.deque(maxlen=50)
        self.sg_received: Deque[Message] = collections.deque(maxlen=50)
        self.heartbeat.start(now)
        self.channel._flush()


class _SimVm:
    def __init__(self, info: SimVmInfo, listener: socket.socket) -> None:
        self.info = info
        self.listener: Optional[socket.socket] = listener
        self.conn: Optional[socket.socket] = None
        self.to_host = bytearray()
        self.to_guest = bytearray()
        self.guest: Optional[_SimGuest] = None
        self.master_fd: Optional[int] = None
        self.slave_fd: Optional[int] = None
        self.host_connects = 0
        self.dropped = 0
        self.scheduled_at: Optional[float] = None
        """The guest's deadline as queued in the simulator's timer heap (None: not queued)."""


class VmSimulator:
    """Simulated VMs served from a directory of sockets; thread-safe control API."""

    def __init__(
        self,
        workdir: str,
        seed: Optional[int] = None,
        on_server_group: Optional[Callable[[str, Message, int], None]] = None,
    ) -> None:
        self.workdir = workdir
        self.on_server_group = on_server_group
        """Called (in the simulator thread) with (vm uuid, PDU, monotonic_ns) for every
        server-group PDU a simulated guest receives; benchmarks time deliveries with it."""
        os.makedirs(workdir, exist_ok=True)
        self._selector = selectors.DefaultSelector()
        self._vms: Dict[str, _SimVm] = {}
        # (fn, future or None, rescan); deque appends and pops are thread-safe.
        self._commands: "collections.deque[tuple]" = collections.deque()
        self._wake_pending = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", ""))
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self._rng = random.Random(seed)
        # (deadline, n, vm uuid): when each guest's protocol machine must be ticked.
        # Stale entries (the guest's deadline moved since) are skipped when popped.
        self._timers: List[tuple] = []
        self._counter = itertools.count()
        self.loop_errors: List[str] = []
        self.loop_iterations = 0

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> "VmSimulator":
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="vmsim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._running = False
        self._wake()
        self._thread.join(timeout=5)
        self._thread = None
        for vm in list(self._vms.values()):
            self._teardown(vm, unlink=True)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> "VmSimulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- control API (any thread) -------------------------------------------------
    def call(self, fn: Callable[[], Any], timeout: float = 10.0, rescan: bool = True) -> Any:
        """Run ``fn`` in the simulator thread and return its result.

        ``rescan=False``: ``fn`` changes no guest's timers (raw bytes to the
        host), so the loop need not look at every guest afterwards.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.append((fn, future, rescan))
        self._wake()
        return future.result(timeout)

    def add_vm(
        self,
        guest: str = "sim",
        *,
        uuid: Optional[str] = None,
        name: Optional[str] = None,
        interval_ms: int = 1000,
        corrective_action: Optional[str] = None,
    ) -> SimVmInfo:
        """Add a running VM. ``guest``: ``sim`` (in-process), ``pty`` (real daemon), ``none``."""
        if guest not in ("sim", "pty", "none"):
            raise ValueError("guest must be sim, pty or none")
        vm_uuid = uuid or str(uuidlib.UUID(int=self._rng.getrandbits(128), version=4))
        vm_name = name or f"vm-{vm_uuid[:8]}"
        return self.call(
            lambda: self._add_vm(vm_uuid, vm_name, guest, interval_ms, corrective_action)
        )

    def freeze(self, vm_uuid: str) -> float:
        """Freeze a simulated guest (like SIGSTOP of its vCPUs); return the freeze time."""
        return self.call(lambda: self._set_frozen(vm_uuid, True))

    def thaw(self, vm_uuid: str) -> None:
        self.call(lambda: self._set_frozen(vm_uuid, False))

    def set_health(self, vm_uuid: str, healthy: bool, reason: str = "") -> None:
        def apply() -> None:
            guest = self._sim_guest(vm_uuid)
            guest.heartbeat.set_health(HEALTHY if healthy else UNHEALTHY, reason)

        self.call(apply)

    def set_hostile(self, vm_uuid: str, kind: Optional[str]) -> None:
        """Make a simulated guest send hostile bytes continuously (or stop, with None)."""
        if kind is not None and kind not in HOSTILE_KINDS:
            raise ValueError(f"hostile kind must be one of {HOSTILE_KINDS}")

        def apply() -> None:
            self._sim_guest(vm_uuid).hostile = kind

        self.call(apply)

    def guest_exit(self, vm_uuid: str) -> None:
        """The simulated guest daemon stops gracefully (sends exit)."""

        def apply() -> None:
            guest = self._sim_guest(vm_uuid)
            guest.heartbeat.exit(time.monotonic(), "simulated shutdown")
            guest.channel._flush()
            guest.stopped = True
            self._pump_guest(self._vms[vm_uuid])

        self.call(apply)

    def guest_restart(self, vm_uuid: str) -> None:
        """The simulated guest daemon restarts with a new invocation_id."""

        def apply() -> None:
            guest = self._sim_guest(vm_uuid)
            guest.restarts += 1
            guest.stopped = False
            guest.new_invocation(time.monotonic())
            self._pump_guest(self._vms[vm_uuid])

        self.call(apply)

    def kill_connection(self, vm_uuid: str) -> None:
        """QEMU drops the host's connection (the socket stays): the host reconnects."""

        def apply() -> None:
            vm = self._vms[vm_uuid]
            if vm.conn is None:
                return
            try:
                self._selector.unregister(vm.conn)
            except (KeyError, ValueError):
                pass
            vm.conn.close()
            vm.conn = None
            if vm.guest is not None:
                vm.guest.channel.host_disconnected(time.monotonic())

        self.call(apply)

    def kill(self, vm_uuid: str) -> None:
        """QEMU dies: the socket closes and disappears."""
        self.call(lambda: self._teardown(self._vms[vm_uuid], unlink=True))

    def inject(self, vm_uuid: str, data: bytes, wait: bool = True) -> None:
        """Send raw bytes from the guest side to the host (once).

        ``wait=False`` returns at once (load generators: no round trip to the
        simulator thread per message); errors then land in ``loop_errors``.
        """

        def apply() -> None:
            vm = self._vms[vm_uuid]
            vm.to_host += data
            self._send_to_host(vm)

        if wait:
            self.call(apply, rescan=False)
            return
        self._commands.append((apply, None, False))
        self._wake()

    def send_message(self, vm_uuid: str, msg: Message, wait: bool = True) -> None:
        self.inject(vm_uuid, msg.encode(), wait=wait)

    def stats(self, vm_uuid: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
        def collect() -> Dict[str, Dict[str, Any]]:
            out = {}
            for key, vm in self._vms.items():
                if vm_uuid is not None and key != vm_uuid:
                    continue
                entry: Dict[str, Any] = {
                    "name": vm.info.name,
                    "host_connected": vm.conn is not None,
                    "host_connects": vm.host_connects,
                    "dropped": vm.dropped,
                }
                if vm.guest is not None:
                    hb = vm.guest.heartbeat
                    entry.update(
                        state=hb.state,
                        invocation_id=hb.invocation_id,
                        challenges_answered=hb.challenges_answered,
                        effective_interval_ms=hb.effective_interval_ms,
                        frozen=vm.guest.frozen,
                        hostile_bytes=vm.guest.hostile_bytes,
                        nacks=[ln for ln in vm.guest.log if "nacked" in ln][-5:],
                        server_group_received=[
                            {"msg_type": m.msg_type, **m.fields} for m in vm.guest.sg_received
                        ],
                    )
                out[key] = entry
            return out

        return self.call(collect)

    # -- loop thread ----------------------------------------------------------------
    def _wake(self) -> None:
        # One byte per sleep of the loop is enough: skip the write while one is unread.
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _loop(self) -> None:
        # Ticking every guest on every wake-up costs O(VMs) per message, and with
        # a thousand guests one of them is always due: the simulator would eat
        # the CPU the agents under test need. A guest's deadline changes only with
        # time (the timer heap), with bytes from its own socket (only that guest
        # is ticked) or with a command (everything is ticked).
        hostile = False
        while self._running:
            if hostile:
                timeout = 0.005
            elif self._timers:
                timeout = min(0.05, max(0.0, self._timers[0][0] - time.monotonic()))
            else:
                timeout = 0.05
            ready = self._selector.select(timeout)
            self.loop_iterations += 1
            touched = set()
            for key, mask in ready:
                kind, vm_uuid = key.data
                if kind == "wake":
                    self._drain_wake()
                    continue
                touched.add(vm_uuid)
                try:
                    self._on_ready(kind, vm_uuid, mask)
                except Exception as exc:  # keep the simulator alive; tests check loop_errors
                    self.loop_errors.append(f"{kind} {vm_uuid}: {exc!r}")
            now = time.monotonic()
            if self._run_commands() or hostile:
                self._tick_guests(now)
                hostile = any(
                    vm.guest is not None and vm.guest.hostile for vm in self._vms.values()
                )
                continue
            for vm_uuid in touched:
                vm = self._vms.get(vm_uuid)
                if vm is not None:
                    self._schedule(vm, self._tick_guest(vm, now))
            while self._timers and self._timers[0][0] <= now:
                deadline, _, vm_uuid = heapq.heappop(self._timers)
                vm = self._vms.get(vm_uuid)
                if vm is None or vm.scheduled_at != deadline:
                    continue  # removed, or its deadline moved: a newer entry exists
                vm.scheduled_at = None
                self._schedule(vm, self._tick_guest(vm, now))

    def _schedule(self, vm: _SimVm, deadline: float) -> None:
        if deadline == float("inf"):
            vm.scheduled_at = None
            return
        if vm.scheduled_at == deadline:
            return
        vm.scheduled_at = deadline
        heapq.heappush(self._timers, (deadline, next(self._counter), vm.info.uuid))

    def _drain_wake(self) -> None:
        # Left unread, the pipe stays readable and select() never sleeps again.
        self._wake_pending = False
        try:
            while os.read(self._wake_r, 4096):
                pass
        except OSError:
            pass

    def _run_commands(self) -> bool:
        """Run queued commands; True if one of them may have changed guest timers."""
        rescan_needed = False
        while True:
            try:
                fn, future, rescan = self._commands.popleft()
            except IndexError:
                return rescan_needed
            rescan_needed = rescan_needed or rescan
            try:
                result = fn()
            except Exception as exc:
                if future is None:
                    self.loop_errors.append(f"command: {exc!r}")
                else:
                    future.set_exception(exc)
                continue
            if future is not None:
                future.set_result(result)

    def _add_vm(
        self, vm_uuid: str, name: str, guest: str, interval_ms: int, action: Optional[str]
    ) -> SimVmInfo:
        path = os.path.join(self.workdir, f"{vm_uuid}.sock")
        listener = self._listen(path)
        port = None
        master = slave = None
        if guest == "pty":
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            port = os.ttyname(slave)
        info = SimVmInfo(vm_uuid, name, path, port)
        vm = _SimVm(info, listener)
        vm.master_fd, vm.slave_fd = master, slave
        if guest == "sim":
            vm.guest = _SimGuest(name, interval_ms, action, time.monotonic())
            vm.guest.heartbeat.host_disconnected(time.monotonic())
        self._vms[vm_uuid] = vm
        self._selector.register(listener, selectors.EVENT_READ, ("listen", vm_uuid))
        if master is not None:
            self._selector.register(master, selectors.EVENT_READ, ("pty", vm_uuid))
        return info

    def _listen(self, path: str) -> socket.socket:
        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(1)
        sock.setblocking(False)
        return sock

    def _teardown(self, vm: _SimVm, unlink: bool) -> None:
        for sock in (vm.conn, vm.listener):
            if sock is not None:
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
        vm.conn = vm.listener = None
        for fd in (vm.master_fd, vm.slave_fd):
            if fd is not None:
                try:
                    self._selector.unregister(fd)
                except (KeyError, ValueError):
                    pass
                os.close(fd)
        vm.master_fd = vm.slave_fd = None
        if unlink:
            try:
                os.unlink(vm.info.socket_path)
            except OSError:
                pass

    def _sim_guest(self, vm_uuid: str) -> _SimGuest:
        guest = self._vms[vm_uuid].guest
        if guest is None:
            raise ValueError(f"{vm_uuid} has no simulated guest")
        return guest

    def _set_frozen(self, vm_uuid: str, frozen: bool) -> float:
        vm = self._vms[vm_uuid]
        guest = self._sim_guest(vm_uuid)
        now = time.monotonic()
        guest.frozen = frozen
        guest.frozen_at = now if frozen else None
        if not frozen and vm.to_guest:
            data, vm.to_guest = bytes(vm.to_guest), bytearray()
            guest.channel.receive_data(data, now)
            self._pump_guest(vm)
        self._update_conn_interest(vm)
        return now

    def _on_ready(self, kind: str, vm_uuid: str, mask: int) -> None:
        vm = self._vms.get(vm_uuid)
        if vm is None:
            return
        now = time.monotonic()
        if kind == "listen":
            assert vm.listener is not None
            try:
                conn, _ = vm.listener.accept()
            except BlockingIOError:
                return
            if vm.conn is not None or (vm.guest is not None and vm.guest.hostile == "accept_close"):
                vm.host_connects += vm.conn is None
                conn.close()  # QEMU serves one client at a time
                return
            conn.setblocking(False)
            vm.conn = conn
            vm.host_connects += 1
            self._selector.register(conn, selectors.EVENT_READ, ("conn", vm_uuid))
            if vm.guest is not None and not vm.guest.stopped:
                vm.guest.channel.host_connected(now)
                self._pump_guest(vm)
            self._send_to_host(vm)
        elif kind == "conn":
            if mask & selectors.EVENT_WRITE:
                self._send_to_host(vm)
            if mask & selectors.EVENT_READ:
                self._read_host(vm, now)
        elif kind == "pty":
            if mask & selectors.EVENT_READ:
                try:
                    data = os.read(vm.master_fd, 65536)  # type: ignore[arg-type]
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EIO):
                        return
                    raise
                self._queue_to_host(vm, data)
            if mask & selectors.EVENT_WRITE:
                self._write_pty(vm)

    def _read_host(self, vm: _SimVm, now: float) -> None:
        assert vm.conn is not None
        try:
            data = vm.conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            try:
                self._selector.unregister(vm.conn)
            except (KeyError, ValueError):
                pass
            vm.conn.close()
            vm.conn = None
            if vm.guest is not None:
                vm.guest.channel.host_disconnected(now)
            return
        if vm.guest is not None:
            if vm.guest.frozen or vm.guest.stopped:
                if vm.guest.frozen and len(vm.to_guest) < MAX_PENDING:
                    vm.to_guest += data
                return
            vm.guest.channel.receive_data(data, now)
            self._pump_guest(vm)
        elif vm.master_fd is not None:
            vm.to_guest += data
            self._write_pty(vm)

    def _write_pty(self, vm: _SimVm) -> None:
        if vm.master_fd is None:
            return
        while vm.to_guest:
            try:
                n = os.write(vm.master_fd, vm.to_guest[:4096])
            except BlockingIOError:
                break
            del vm.to_guest[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if vm.to_guest else 0)
        self._selector.modify(vm.master_fd, events, ("pty", vm.info.uuid))
        self._update_conn_interest(vm)

    def _queue_to_host(self, vm: _SimVm, data: bytes) -> None:
        room = MAX_PENDING - len(vm.to_host)
        if len(data) > room:
            vm.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        vm.to_host += data
        self._send_to_host(vm)

    def _pump_guest(self, vm: _SimVm) -> None:
        guest = vm.guest
        if guest is None:
            return
        now_ns = time.monotonic_ns()
        for item in guest.channel.next_items():
            if isinstance(item, HostPdu):
                if self.on_server_group is not None:
                    self.on_server_group(vm.info.uuid, item.msg, now_ns)
                else:
                    guest.sg_received.append(item.msg)
            else:
                guest.log.append(item.text if isinstance(item, LogRecord) else item)

        def to_host(data: bytes) -> int:
            self._queue_to_host(vm, data)  # takes it all (counting what overflows)
            return len(data)

        guest.channel.send_output(to_host)

    def _send_to_host(self, vm: _SimVm) -> None:
        if vm.conn is None or not vm.to_host:
            self._update_conn_interest(vm)
            return
        try:
            n = vm.conn.send(vm.to_host)
            del vm.to_host[:n]
        except BlockingIOError:
            pass
        except OSError:
            pass
        self._update_conn_interest(vm)

    def _update_conn_interest(self, vm: _SimVm) -> None:
        if vm.conn is None:
            return
        read = True
        if vm.guest is not None and vm.guest.hostile == "never_reads":
            read = False
        if vm.guest is not None and vm.guest.frozen and len(vm.to_guest) >= MAX_PENDING:
            read = False
        if vm.master_fd is not None and len(vm.to_guest) >= MAX_PENDING:
            read = False
        events = (selectors.EVENT_READ if read else 0) | (
            selectors.EVENT_WRITE if vm.to_host else 0
        )
        key = self._selector.get_map().get(vm.conn)
        if events == 0:
            if key is not None:
                self._selector.unregister(vm.conn)
        elif key is None:
            self._selector.register(vm.conn, events, ("conn", vm.info.uuid))
        elif key.events != events:
            self._selector.modify(vm.conn, events, ("conn", vm.info.uuid))

    def _tick_guests(self, now: float) -> None:
        """Tick every guest that is due and queue each one's next deadline."""
        for vm in list(self._vms.values()):
            self._schedule(vm, self._tick_guest(vm, now))

    def _tick_guest(self, vm: _SimVm, now: float) -> float:
        """Tick one guest if it is due; return its next deadline (or far away)."""
        guest = vm.guest
        if guest is None or guest.frozen or guest.stopped:
            return float("inf")
        deadline = guest.channel.next_deadline()
        if deadline is not None and deadline <= now:
            guest.channel.tick(now)
            self._pump_guest(vm)
            deadline = guest.channel.next_deadline()
        if guest.hostile and vm.conn is not None and len(vm.to_host) < 65536:
            payload = self._hostile_bytes(guest.hostile, vm)
            guest.hostile_bytes += len(payload)
            self._queue_to_host(vm, payload)
        return float("inf") if deadline is None else deadline

    def _hostile_bytes(self, kind: str, vm: _SimVm) -> bytes:
        rng = self._rng
        if kind == "garbage":
            return rng.randbytes(4096)
        if kind == "malformed":
            return b"\n{not json at all\n" * 200
        if kind == "oversized":
            return b"{" + b"x" * 16384
        if kind == "flood":
            msg = Message(
                HEARTBEAT,
                "challenge_response",
                {"seq": 1, "nonce": "00000000", "health": HEALTHY, "reason": ""},
            )
            return msg.encode() * 200
        if kind == "spoof_broadcast":
            other = next((u for u in self._vms if u != vm.info.uuid), vm.info.uuid)
            data = {"msg_type": "broadcast", "source_instance": other, "data": "x"}
            return encode_envelope(SERVER_GROUP, data) * 100
        if kind == "deep_nesting":
            deep = "[" * 1000 + "]" * 1000
            return _raw_heartbeat('"msg_type":"exit","invocation_id":"x","extra":' + deep) * 10
        if kind == "huge_numbers":
            big = "9" * 400
            return (
                _raw_heartbeat(f'"msg_type":"challenge_response","seq":{big},"nonce":"00000000"')
                + _raw_heartbeat('"msg_type":"exit","invocation_id":"x","n":1e400')
            ) * 10
        if kind == "spoofed_identity":
            # Claims to be another VM in every field it can: nothing may believe it.
            other = next((u for u in self._vms if u != vm.info.uuid), vm.info.uuid)
            data = {"msg_type": "broadcast", "source_instance": other, "data": {"from": other}}
            exit_other = {"msg_type": "exit", "invocation_id": other.replace("-", "")}
            return encode_envelope(SERVER_GROUP, data) + encode_envelope(HEARTBEAT, exit_other)
        if kind == "reinit_churn":
            guest = vm.guest
            assert guest is not None
            old = guest.heartbeat.invocation_id
            guest.heartbeat.invocation_id = uuidlib.uuid4().hex
            exit_old = {"msg_type": "exit", "invocation_id": old}
            return encode_envelope(HEARTBEAT, exit_old) + guest.heartbeat._init_message().encode()
        if kind == "never_reads" or kind == "accept_close":
            return b""
        if kind == "slowloris":
            return b"{" if rng.random() < 0.05 else b""  # about 10 bytes/s, never a newline
        if kind == "sg_not_enabled":
            query = Message(SERVER_GROUP, "status_query", {"seq": 1})
            return query.encode() * 20
        raise ValueError(kind)


def _raw_heartbeat(data_members: str) -> bytes:
    """A heartbeat frame whose ``data`` members are given as raw JSON text."""
    return (
        '\n{"version":1,"source_addr":"heartbeat","dest_addr":"heartbeat","data":{'
        + data_members
        + "}}\n"
    ).encode()
