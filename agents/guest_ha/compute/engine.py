"""The heartbeat engine: one selectors loop driving every VM's channel.

No thread per VM. Each VM has a :class:`VmConnection` holding its socket and
its sans-I/O :class:`~guest_ha.protocol.HostChannel`; all timing goes through
one heap of deadlines. A VM that floods is throttled by its own read budget and
rate limits, so it never delays another VM's challenges.
"""

from __future__ import annotations

import dataclasses
import errno
import heapq
import itertools
import json
import logging
import os
import queue
import selectors
import socket
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..protocol import SERVER_GROUP, HeartbeatEvent, HostChannel, Message, ProtocolError
from ..protocol.channel import GuestPdu, LogRecord
from ..protocol.events import EventKind
from ..protocol.faulthold import FaultHold
from ..protocol.messages import HEALTHY, HOST_TO_GUEST, make
from ..protocol.transitions import HostState
from .backoff import ReconnectBackoff
from .config import ComputeConfig, ReconnectPolicy, VmSpec
from .sinks import EventSink, VmEvent

LOG = logging.getLogger("guest_ha.compute")

READ_CHUNK = 64 * 1024
CONFIRM_TIMEOUT_S = 1.0
TIMER_SLACK_S = 0.002
"""How late a timer may run so that timers due close together run in one loop
turn (one ``epoll_wait`` for many VMs' challenges, not one each). Never early:
a guest always gets at least its full interval to answer."""
REMOVED_FAULTS_MAX = 4096
_RETRY_ERRNOS = (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ENOTSOCK, errno.EACCES)

NOT_ENABLED = "server group messaging is not enabled for this VM"
DISCONNECTED = "disconnected"
CONNECTED = "connected"
REMOVED = "removed"


class VmConnection:
    """One VM's socket, channel and bookkeeping."""

    def __init__(self, spec: VmSpec, channel: HostChannel, reconnect: ReconnectPolicy) -> None:
        self.spec = spec
        self.channel = channel
        self.sock: Optional[socket.socket] = None
        self.state = DISCONNECTED
        self.backoff = ReconnectBackoff(reconnect.initial_s, reconnect.max_s, reconnect.stable_s)
        self.read_paused = False
        self.events = 0
        """The selector events registered for ``sock`` (0: not registered)."""
        self.scheduled_tick: Optional[float] = None
        self.fault_hold = FaultHold()
        """Events waiting for the hypervisor to confirm a fault (protocol core)."""
        self.source = "config"
        """Who asked for this VM: ``config``, ``socket_dir`` or ``libvirt``."""
        self.lifecycle_suspended = ""
        """Non-empty while a lifecycle operation (pause, shutdown...) is in progress."""
        self.connect_failures = 0
        self.connects = 0
        self.last_error = ""

    @property
    def log_prefix(self) -> str:
        return f"[instance {self.spec.uuid}]"


class HeartbeatEngine:
    """Heartbeats every configured VM; emits events to ``sink``."""

    def __init__(
        self,
        config: ComputeConfig,
        sink: EventSink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.sink = sink
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.vms: Dict[str, VmConnection] = {}
        self._timers: List[Tuple[float, int, str, str]] = []
        self._counter = itertools.count()
        self._dirty: set = set()
        self._running = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._posted: "queue.Queue[Callable[[], None]]" = queue.Queue()
        self._status_sock: Optional[socket.socket] = None
        self._status_clients: Dict[int, Tuple[socket.socket, bytearray, float]] = {}
        self.started_at = clock()
        self.sg_relay: Optional[Callable[[VmSpec, Message], None]] = None
        """Set when a controller link exists: takes a VM's server-group PDU (must not
        block: it runs in the heartbeat loop)."""
        self.sg_delivered = 0
        self.sg_undeliverable = 0
        self.unattachable: Dict[str, Dict[str, str]] = {}
        """Opted-in domains that cannot get the channel (uuid -> domain, reason)."""
        self.fault_confirmer: Optional[Callable[[str, Callable[[bool, str], None]], None]] = None
        """Set in libvirt mode: asks whether a domain still runs before a heartbeat
        fault is reported (see ``_hold``)."""
        self.loop_iterations = 0
        self.removed_faults: "OrderedDict[str, Tuple[str, str]]" = OrderedDict()
        """Faults still active when their VM was removed (uuid -> health, reason):
        carried over if the same VM is added again (Nova's stop and start undefine
        and redefine the domain), so it then reports ``recovered``.  At most
        ``REMOVED_FAULTS_MAX``, oldest dropped."""
        self.recovery: Optional[Any] = None
        """Set when the operator enabled recovery (``compute.recovery.RecoveryController``):
        told of every event, it may act on the VM through the hypervisor."""

    # -- VM set -------------------------------------------------------------------
    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the engine's loop thread soon; safe from any thread."""
        self._posted.put(fn)
        try:
            os.write(self._wake_w, b"p")
        except OSError:
            pass

    def add_vm(self, spec: VmSpec, source: str = "config") -> None:
        if spec.uuid in self.vms:
            return
        now = self.clock()
        policy = self.config.heartbeat
        if not spec.heartbeat:  # messaging only: no registration is expected
            policy = dataclasses.replace(policy, restart_timeout_s=0.0)
        channel = HostChannel(policy, self.config.limits, now)
        carried = self.removed_faults.pop(spec.uuid, None)
        if carried is not None:
            channel.carry_fault(*carried)
        vm = VmConnection(spec, channel, self.config.reconnect)
        vm.source = source
        self.vms[spec.uuid] = vm
        LOG.info("%s added %s, socket %s", vm.log_prefix, spec.name, spec.socket_path)
        self._try_connect(vm, now)

    def remove_vm(self, uuid: str) -> None:
        vm = self.vms.pop(uuid, None)
        if vm is None:
            return
        vm.state = REMOVED
        self._close(vm)
        view = vm.channel.heartbeat_view
        if view.health != HEALTHY:
            self.removed_faults[uuid] = (view.health, view.health_reason)
            while len(self.removed_faults) > REMOVED_FAULTS_MAX:
                self.removed_faults.popitem(last=False)
        if self.recovery is not None:
            self.recovery.forget(uuid)
        LOG.info("%s removed", vm.log_prefix)

    def upsert_vm(self, spec: VmSpec, source: str) -> None:
        """Add a VM, or point a known one at a (possibly new) socket and connect now.

        Its heartbeat state (a fault still active, for instance) is kept, so a
        VM that crashed and was started again reports ``recovered``.
        """
        vm = self.vms.get(spec.uuid)
        if vm is None:
            self.add_vm(spec, source)
            return
        vm.source = source
        now = self.clock()
        if vm.spec.socket_path == spec.socket_path:
            vm.spec = spec  # opt-in changes only
        else:
            LOG.info("%s channel socket is now %s", vm.log_prefix, spec.socket_path)
            if vm.sock is not None:
                self._close(vm)
                vm.state = DISCONNECTED
                vm.channel.connection_lost(now)
                self._after_channel_activity(vm)
            vm.spec = spec
        if vm.state == DISCONNECTED:
            vm.backoff.reset()
            self._try_connect(vm, now)

    def lifecycle(self, uuid: str, action: str, reason: str) -> None:
        """Apply a hypervisor lifecycle change: ``suspend``, ``resume`` or ``restart``.

        ``suspend`` stops heartbeating without a fault (pause, shutdown,
        migration); ``resume`` carries on; ``restart`` (boot, reboot) expects the
        guest to register again within ``restart_timeout``.
        """
        vm = self.vms.get(uuid)
        if vm is None:
            return
        now = self.clock()
        channel = vm.channel
        if action == "suspend":
            vm.lifecycle_suspended = reason
            channel.suspend(now, reason)
        elif action == "resume":
            vm.lifecycle_suspended = ""
            channel.resume(now)
        elif action == "restart":
            vm.lifecycle_suspended = ""
            channel.expect_registration(now, reason)
        else:
            raise ValueError(f"unknown lifecycle action {action!r}")
        LOG.info("%s lifecycle %s (%s)", vm.log_prefix, action, reason)
        self._after_channel_activity(vm)

    def report_fault(self, uuid: str, kind: str, reason: str, **detail: object) -> None:
        """A fault the hypervisor saw (crash, panic): reported like heartbeat faults."""
        vm = self.vms.get(uuid)
        if vm is None:
            return
        vm.channel.report_fault(self.clock(), kind, reason, **detail)
        self._after_channel_activity(vm)

    def channel_unavailable(self, uuid: str, name: str, reason: str) -> None:
        """An opted-in domain cannot get the channel: shown in the status and
        sent once as a ``channel_unavailable`` event (not a fault); ``reason``
        says how to fix it.  An empty ``reason`` clears the entry."""
        if not reason:
            self.unattachable.pop(uuid, None)
            return
        if self.unattachable.get(uuid, {}).get("reason") == reason:
            return
        self.unattachable[uuid] = {"domain": name, "reason": reason}
        now = self.clock()
        self.sink.emit(
            VmEvent(
                kind="channel_unavailable",
                instance_uuid=uuid,
                domain=name,
                monotonic=now,
                wall_time=time.time(),
                fault=False,
                detail={"reason": reason},
            )
        )

    def discover(self) -> None:
        """Sync the configured VMs and the socket directory (libvirt VMs are kept)."""
        wanted = {spec.uuid: spec for spec in self.config.vms}
        sources = dict.fromkeys(wanted, "config")
        if self.config.socket_dir:
            found = scan_socket_dir(self.config.socket_dir)
            wanted.update(found)
            sources.update(dict.fromkeys(found, "socket_dir"))
        for uuid, vm in list(self.vms.items()):
            if vm.source == "libvirt":
                continue
            if uuid not in wanted or wanted[uuid].socket_path != vm.spec.socket_path:
                self.remove_vm(uuid)
        for spec in wanted.values():
            if spec.uuid not in self.vms:
                self.add_vm(spec, sources[spec.uuid])

    # -- loop ---------------------------------------------------------------------
    def run(self, until: Optional[Callable[[], bool]] = None) -> None:
        self._running = True
        self.discover()
        if self.config.socket_dir:
            self._schedule(self.clock() + self.config.rescan_interval_s, "rescan", "")
        if self.config.status_socket:
            self._open_status_socket(self.config.status_socket)
        try:
            while self._running and not (until and until()):
                self.run_once()
        finally:
            self.close()

    def stop(self) -> None:
        """Ask the loop to stop; safe from signal handlers and other threads."""
        self._running = False
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run_once(self, max_wait: float = 1.0) -> None:
        self.loop_iterations += 1
        # Timers due by ``now`` run after this select has read every answer that
        # had arrived by then: a loop turn that ran long (a stall of this process,
        # many ready sockets) never makes a guest's answer, waiting unread in its
        # socket, look missed. Timers that fell due during the turn run in the next
        # one, after its select.
        now = self.clock()
        timeout = max_wait
        if self._timers:
            timeout = max(0.0, min(max_wait, self._timers[0][0] + TIMER_SLACK_S - now))
        for key, mask in self.selector.select(timeout):
            kind, uuid = key.data
            if kind == "vm":
                vm = self.vms.get(uuid)
                if vm is not None:
                    self._on_ready(vm, mask)
            elif kind == "wake":
                try:
                    os.read(self._wake_r, 512)
                except OSError:
                    pass
                self._run_posted()
            elif kind == "status":
                self._serve_status()
            elif kind == "status_client":
                self._write_status_client(uuid)
        self._run_timers(now)
        self._flush_dirty()

    def _run_posted(self) -> None:
        while True:
            try:
                fn = self._posted.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                LOG.exception("posted task failed")

    def close(self) -> None:
        for vm in list(self.vms.values()):
            self._close(vm)
        if self._status_sock is not None:
            try:
                self.selector.unregister(self._status_sock)
            except (KeyError, ValueError):
                pass
            self._status_sock.close()
            self._status_sock = None
            if self.config.status_socket:
                try:
                    os.unlink(self.config.status_socket)
                except OSError:
                    pass

    # -- timers -------------------------------------------------------------------
    def _schedule(self, when: float, kind: str, uuid: str) -> None:
        heapq.heappush(self._timers, (when, next(self._counter), kind, uuid))

    def schedule(self, when: float, kind: str, uuid: str) -> None:
        """A timer of an engine extension (``recovery``), run in the loop at ``when``."""
        self._schedule(when, kind, uuid)

    def _reschedule_tick(self, vm: VmConnection) -> None:
        deadline = vm.channel.next_deadline()
        if deadline is not None and deadline != vm.scheduled_tick:
            vm.scheduled_tick = deadline
            self._schedule(deadline, "tick", vm.spec.uuid)

    def _run_timers(self, due_by: float) -> None:
        """Run the timers due by ``due_by``, at the current clock."""
        timers = self._timers
        now = self.clock()
        while timers and timers[0][0] <= due_by:
            when, _, kind, uuid = heapq.heappop(timers)
            if kind == "rescan":
                self.discover()
                self._schedule(now + self.config.rescan_interval_s, "rescan", "")
                continue
            vm = self.vms.get(uuid)
            if vm is None:
                continue
            if kind == "tick":
                if vm.scheduled_tick != when:
                    continue  # superseded by a newer deadline
                vm.scheduled_tick = None
                vm.channel.tick(now)
                self._after_channel_activity(vm)
                if vm.channel.wants_write:
                    # A challenge's deadline counts from ``now``: it leaves now, not
                    # at the end of a turn that may run long.
                    self._dirty.discard(uuid)
                    self._flush(vm)
            elif kind == "connect" and vm.state == DISCONNECTED:
                self._try_connect(vm, now)
            elif kind == "confirm_timeout" and vm.fault_hold.holding:
                LOG.warning("%s no answer from the hypervisor: reporting the fault", vm.log_prefix)
                self._confirmed(uuid, vm.fault_hold.token, True, "unknown")
            elif kind == "recovery" and self.recovery is not None:
                self.recovery.on_timer(uuid)
            elif kind == "resume_read" and vm.read_paused and vm.sock is not None:
                vm.read_paused = False
                self._update_interest(vm)

    # -- sockets ------------------------------------------------------------------
    def _try_connect(self, vm: VmConnection, now: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(vm.spec.socket_path)
        except OSError as exc:
            sock.close()
            vm.connect_failures += 1
            if exc.errno not in _RETRY_ERRNOS:
                LOG.warning("%s cannot connect to %s: %s", vm.log_prefix, vm.spec.socket_path, exc)
            elif vm.last_error != exc.strerror:
                LOG.info("%s waiting for %s: %s", vm.log_prefix, vm.spec.socket_path, exc.strerror)
            vm.last_error = exc.strerror or str(exc)
            self._schedule(now + vm.backoff.failed(), "connect", vm.spec.uuid)
            return
        vm.sock = sock
        vm.state = CONNECTED
        vm.connects += 1
        vm.last_error = ""
        vm.backoff.connected(now)
        self.selector.register(sock, selectors.EVENT_READ, ("vm", vm.spec.uuid))
        vm.events = selectors.EVENT_READ
        LOG.info("%s channel connected", vm.log_prefix)
        vm.channel.connection_made(now)
        if vm.lifecycle_suspended:
            vm.channel.suspend(now, vm.lifecycle_suspended)
        self._after_channel_activity(vm)

    def _close(self, vm: VmConnection) -> None:
        if vm.sock is not None:
            try:
                self.selector.unregister(vm.sock)
            except (KeyError, ValueError):
                pass
            vm.sock.close()
            vm.sock = None
        vm.events = 0
        vm.read_paused = False

    def _connection_lost(self, vm: VmConnection, now: float, why: str) -> None:
        LOG.info("%s channel lost: %s", vm.log_prefix, why)
        self._close(vm)
        vm.state = DISCONNECTED
        vm.channel.connection_lost(now)
        self._after_channel_activity(vm)
        self._schedule(now + vm.backoff.lost(now), "connect", vm.spec.uuid)

    def _on_ready(self, vm: VmConnection, mask: int) -> None:
        now = self.clock()
        if mask & selectors.EVENT_READ and vm.sock is not None and not vm.read_paused:
            allowance = vm.channel.read_allowance(now)
            if allowance <= 0:
                self._pause_reading(vm, now)
            else:
                try:
                    data = vm.sock.recv(min(READ_CHUNK, allowance))
                except (BlockingIOError, InterruptedError):
                    data = None
                except OSError as exc:
                    self._connection_lost(vm, now, str(exc))
                    return
                if data is not None:
                    if not data:
                        self._connection_lost(vm, now, "end of stream")
                        return
                    vm.channel.receive_data(data, now)
                    self._after_channel_activity(vm)
                    # The allowance left (receive_data took len(data) of it, at ``now``).
                    if allowance - len(data) <= 0:
                        self._pause_reading(vm, now)
        if mask & selectors.EVENT_WRITE and vm.sock is not None:
            self._dirty.add(vm.spec.uuid)

    def _pause_reading(self, vm: VmConnection, now: float) -> None:
        vm.read_paused = True
        self._update_interest(vm)
        self._schedule(vm.channel.resume_reading_at(now), "resume_read", vm.spec.uuid)

    def _update_interest(self, vm: VmConnection) -> None:
        if vm.sock is None:
            return
        events = 0 if vm.read_paused else selectors.EVENT_READ
        if vm.channel.wants_write:
            events |= selectors.EVENT_WRITE
        if events == vm.events:
            return
        if events == 0:
            self.selector.unregister(vm.sock)
        elif vm.events == 0:
            self.selector.register(vm.sock, events, ("vm", vm.spec.uuid))
        else:
            self.selector.modify(vm.sock, events, ("vm", vm.spec.uuid))
        vm.events = events

    def _after_channel_activity(self, vm: VmConnection) -> None:
        channel = vm.channel
        # One drain point; handling a PDU may log, so drain until quiet.
        while True:
            now = self.clock()
            items = channel.next_items(now)
            if not items:
                break
            for item in items:
                if isinstance(item, GuestPdu):
                    self._guest_pdu(vm, item.msg, now)
                elif isinstance(item, LogRecord):
                    LOG.log(item.level, "%s %s", vm.log_prefix, item.text)
                else:
                    ready, token = vm.fault_hold.offer(item, self.fault_confirmer is not None)
                    if token is not None:
                        self._ask_hypervisor(vm, token)
                    for ready_event in ready:
                        self._emit(vm, ready_event)
        if self.recovery is not None:
            self.recovery.check_registration(vm)
        if channel.wants_write:
            self._dirty.add(vm.spec.uuid)
        self._reschedule_tick(vm)

    def deliver_server_group(self, deliveries: List[Dict[str, Any]]) -> None:
        """Queue server-group PDUs from the controller to local VMs (engine thread)."""
        for item in deliveries:
            vm = self.vms.get(str(item.get("instance_uuid")))
            if vm is None or not vm.spec.server_group_messaging:
                self.sg_undeliverable += 1
                continue
            try:
                msg = make(
                    SERVER_GROUP,
                    str(item["msg_type"]),
                    HOST_TO_GUEST,
                    **dict(item.get("fields") or {}),
                )
            except (ProtocolError, KeyError, TypeError) as exc:
                LOG.warning(
                    "%s dropped a malformed delivery from the controller: %s", vm.log_prefix, exc
                )
                continue
            is_nack = msg.msg_type == "nack"  # nacks go through the guest's nack limit
            if vm.channel.relay_nack(self.clock(), msg) if is_nack else vm.channel.queue(msg):
                self._dirty.add(vm.spec.uuid)
                self.sg_delivered += 1

    def _guest_pdu(self, vm: VmConnection, msg: Message, now: float) -> None:
        """A server-group PDU of the guest: relayed, or refused (not enabled)."""
        if msg.msg_type == "nack":
            vm.channel.log(now, f"guest nacked {msg['orig_msg_type']}: {msg['log_msg']}")
        elif vm.spec.server_group_messaging and self.sg_relay is not None:
            self.sg_relay(vm.spec, msg)
        else:
            vm.channel.reject(now, SERVER_GROUP, msg.msg_type, "not_enabled", NOT_ENABLED)

    def _emit(self, vm: VmConnection, event: HeartbeatEvent) -> None:
        if not vm.spec.heartbeat and (event.is_fault or event.kind == EventKind.RECOVERED):
            return  # this VM opted in to messaging only
        self._send(vm, event.kind, event.is_fault, dict(event.detail))
        if self.recovery is not None:
            self.recovery.observe(vm, event.kind, event.detail)

    def emit_event(self, uuid: str, kind: str, detail: Dict[str, Any]) -> None:
        """An event of an engine extension about a VM (never a fault)."""
        vm = self.vms.get(uuid)
        if vm is not None:
            self._send(vm, kind, False, detail)

    def _send(self, vm: VmConnection, kind: str, fault: bool, detail: Dict[str, Any]) -> None:
        self.sink.emit(
            VmEvent(
                kind=kind,
                instance_uuid=vm.spec.uuid,
                domain=vm.spec.name,
                monotonic=self.clock(),
                wall_time=time.time(),
                fault=fault,
                detail=detail,
            )
        )

    # -- fault confirmation ---------------------------------------------------------
    # The policy (hold heartbeat_lost until the hypervisor answers, retract it if
    # the domain is not running) is the protocol core's FaultHold; here: the I/O.

    def _ask_hypervisor(self, vm: VmConnection, token: int) -> None:
        assert self.fault_confirmer is not None
        uuid = vm.spec.uuid

        def answer(running: bool, state: str) -> None:
            self.post(lambda: self._confirmed(uuid, token, running, state))

        self.fault_confirmer(uuid, answer)
        self._schedule(self.clock() + CONFIRM_TIMEOUT_S, "confirm_timeout", uuid)

    def _confirmed(self, uuid: str, token: int, running: bool, state: str) -> None:
        vm = self.vms.get(uuid)
        if vm is None:
            return
        events = vm.fault_hold.answer(token, running, state, vm.channel, self.clock())
        if events is None:
            return
        if not running:
            LOG.info("%s missed heartbeat while the domain is %s: no fault", vm.log_prefix, state)
            vm.lifecycle_suspended = state
        for event in events:
            self._emit(vm, event)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for uuid in dirty:
            vm = self.vms.get(uuid)
            if vm is not None:
                self._flush(vm)

    def _flush(self, vm: VmConnection) -> None:
        if vm.sock is None:
            return
        try:
            vm.channel.send_output(vm.sock.send)
        except (BlockingIOError, InterruptedError):
            pass  # the socket is full: EVENT_WRITE stays on
        except OSError as exc:
            self._connection_lost(vm, self.clock(), str(exc))
            return
        self._update_interest(vm)

    # -- status -------------------------------------------------------------------
    def snapshot(self) -> Dict[str, object]:
        """A JSON-able view of every VM, for ``guest-ha-compute status``."""
        now = self.clock()
        vms = []
        for vm in sorted(self.vms.values(), key=lambda v: v.spec.name):
            hb = vm.channel.heartbeat_view
            vms.append(
                {
                    "domain": vm.spec.name,
                    "instance_uuid": vm.spec.uuid,
                    "socket": vm.spec.socket_path,
                    "channel": vm.state,
                    "heartbeat_state": hb.state,
                    "registered": hb.state == HostState.MONITORING,
                    "guest_name": hb.name,
                    "interval_ms": hb.interval_ms,
                    "last_rtt_ms": None
                    if hb.last_rtt_s is None
                    else round(hb.last_rtt_s * 1000, 2),
                    "misses": hb.misses,
                    "health": hb.health,
                    "health_reason": hb.health_reason,
                    "challenges_sent": hb.challenges_sent,
                    "responses_ok": hb.responses_ok,
                    "counters": dict(vm.channel.counters),
                    "nacks_by_code": dict(vm.channel.nacks_by_code),
                    "misbehaving": vm.channel.is_misbehaving(now),
                    "connects": vm.connects,
                    "read_paused": vm.read_paused,
                    "source": vm.source,
                    "lifecycle": vm.lifecycle_suspended or None,
                    "recovery": None
                    if self.recovery is None
                    else self.recovery.describe(vm.spec.uuid),
                }
            )
        unattachable = [
            {"instance_uuid": uuid, **entry} for uuid, entry in sorted(self.unattachable.items())
        ]
        return {
            "uptime_s": round(now - self.started_at, 3),
            "loop_iterations": self.loop_iterations,
            "vms": vms,
            "channel_unavailable": unattachable,
        }

    def _open_status_socket(self, path: str) -> None:
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, 0o660)
            sock.listen(8)
            sock.setblocking(False)
        except OSError as exc:
            LOG.warning("status socket %s unavailable: %s", path, exc)
            return
        self._status_sock = sock
        self.selector.register(sock, selectors.EVENT_READ, ("status", None))

    def _serve_status(self) -> None:
        """Accept a status client; its snapshot is written without blocking the loop."""
        assert self._status_sock is not None
        try:
            conn, _ = self._status_sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        payload = json.dumps(self.snapshot()).encode() + b"\n"
        self._status_clients[conn.fileno()] = (conn, bytearray(payload), self.clock() + 10.0)
        self.selector.register(conn, selectors.EVENT_WRITE, ("status_client", conn.fileno()))

    def _write_status_client(self, fd: int) -> None:
        conn, pending, deadline = self._status_clients[fd]
        try:
            sent = conn.send(pending)
            del pending[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pending.clear()
        if not pending or self.clock() > deadline:
            self.selector.unregister(conn)
            conn.close()
            del self._status_clients[fd]


def scan_socket_dir(path: str) -> Dict[str, VmSpec]:
    """VMs from a directory of QEMU channel sockets named ``<uuid>.sock``."""
    from .config import looks_like_uuid

    found: Dict[str, VmSpec] = {}
    try:
        names = os.listdir(path)
    except OSError as exc:
        LOG.warning("cannot scan socket directory %s: %s", path, exc.strerror)
        return found
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext == ".sock" and looks_like_uuid(stem):
            found[stem] = VmSpec(uuid=stem, name=stem, socket_path=os.path.join(path, name))
    return found
