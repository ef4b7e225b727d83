"""Everything the compute agent exchanges with the controllers over oslo.messaging:
fault forwarding (spool + batches), the server-group relay, the per-host RPC
server for deliveries, and periodic status."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Dict, List, Optional

from ..messaging import payloads
from ..protocol.events import EventKind
from .config import ComputeConfig
from .forwarder import ForwardingSink
from .sg_relay import ComputeEndpoint, ServerGroupRelay
from .spool import Spool

LOG = logging.getLogger("guest_ha.compute.link")


class ControllerLink:
    def __init__(self, config: ComputeConfig) -> None:
        from ..messaging import options as messaging_options
        from ..messaging.rpc import ControllerClient, get_transport

        link = config.controller
        files = (
            [link.messaging_config]
            if link.messaging_config and os.path.exists(link.messaging_config)
            else []
        )
        conf = messaging_options.configure(link.transport_url, config_files=files)
        self.host = link.host or conf.guest_ha.host or socket.gethostname()
        self.transport = get_transport()
        self.client = ControllerClient(self.transport, self.host)
        self.engine: Any = None
        self.forwarder = ForwardingSink(
            Spool(link.spool_dir), self._send_batch, self.host, status=self._status
        )
        self.sink = _LinkSink(self)
        self._states_dirty = threading.Event()
        # Server-group traffic on plain AMQP ([guest_ha] server_group_transport).
        self._datagrams: Any = None
        self._relay_caster: Any = None
        self._receiver: Any = None
        relay_client: Any = ControllerClient(self.transport, self.host)
        if conf.guest_ha.server_group_transport == "datagrams":
            from ..messaging.datagrams import DatagramCaster, Datagrams

            self._datagrams = Datagrams(conf, link.transport_url)
            relay_client = self._relay_caster = DatagramCaster(
                self._datagrams.sender(), self._datagrams.controller_queue
            )
        self.relay = ServerGroupRelay(relay_client, self.host)
        self._server: Any = None
        self._stopping = False

    def _send_batch(self, events: List[Dict[str, Any]]) -> Dict[str, Any]:
        ack = self.client.call(payloads.REPORT_EVENTS, events=events)
        if not isinstance(ack, dict):
            raise RuntimeError(f"controller answered {ack!r}")
        return ack

    def _status(self, depth: int) -> None:
        vms = len(self.engine.vms) if self.engine is not None else 0
        self.client.call(
            payloads.COMPUTE_STATUS, timeout=5, host=self.host, spool_depth=depth, vms=vms
        )

    def attach(self, engine: Any) -> None:
        """Connect the engine: relay its server-group PDUs, serve deliveries to it."""
        self.engine = engine
        engine.sg_relay = self.relay
        # serve_compute() blocks while the broker is down: never hold up the agent.
        threading.Thread(target=self._serve, name="compute-rpc", daemon=True).start()
        threading.Thread(target=self._report_states, name="vm-states", daemon=True).start()

    # -- member states for server groups (standalone membership, status answers) -----
    def _collect_states(self) -> List[payloads.VmState]:
        """Runs in the engine thread: the state of every VM with server groups on."""
        out: List[payloads.VmState] = []
        for vm in list(self.engine.vms.values()):
            if not vm.spec.server_group_messaging:
                continue
            state, power = _nova_states(vm)
            out.append(
                {
                    "uuid": vm.spec.uuid,
                    "name": vm.spec.name,
                    "state": state,
                    "power_state": power,
                    "task_state": None,
                    "group": vm.spec.server_group,
                    "guest_health": vm.channel.heartbeat_view.health,
                }
            )
        return out

    def _report_states(self) -> None:
        import queue as queuelib

        while not self._stopping:
            self._states_dirty.wait(timeout=STATES_INTERVAL_S)
            self._states_dirty.clear()
            if self._stopping:
                return
            answer: "queuelib.Queue[List[payloads.VmState]]" = queuelib.Queue()
            self.engine.post(lambda q=answer: q.put(self._collect_states()))
            try:
                states = answer.get(timeout=5)
            except queuelib.Empty:
                continue
            try:
                self.client.cast(payloads.VM_STATES, host=self.host, vms=states, full=True)
            except Exception as exc:  # best effort; the next round repeats it
                LOG.debug("vm states not sent: %s", exc)

    def _serve(self) -> None:
        from ..messaging.rpc import serve_compute

        endpoint = ComputeEndpoint(self.engine)
        if self._datagrams is not None:
            self._receiver = self._datagrams.receiver(
                self._datagrams.compute_queue(self.host),
                endpoint,
                [payloads.SG_DELIVER],
                name="sg-deliveries",
            ).start()
        try:
            server = serve_compute(self.transport, [endpoint], self.host)
        except Exception:
            LOG.exception("cannot serve the per-host topic for %s", self.host)
            return
        if self._stopping:
            server.stop()
            return
        self._server = server
        LOG.info("serving deliveries for host %s", self.host)

    def close(self) -> None:
        self._stopping = True
        self._states_dirty.set()
        self.relay.close()
        if self._receiver is not None:
            self._receiver.stop()
        if self._relay_caster is not None:
            self._relay_caster.sender.close()
        self.forwarder.close()
        if self._server is not None:
            from ..messaging.rpc import stop_server

            stop_server(self._server)

    def snapshot(self) -> Optional[Dict[str, Any]]:
        return {
            "host": self.host,
            "spool_depth": self.forwarder.spool.depth,
            "forwarded": self.forwarder.sent,
            "sg_relayed": self.relay.relayed,
            "sg_dropped": self.relay.dropped,
        }


STATES_INTERVAL_S = 5.0
_STATE_EVENTS = frozenset(EventKind) - {EventKind.MISBEHAVING}


def _nova_states(vm: Any) -> "tuple[str, str]":
    """(vm_state, power_state) in Nova's words, from what the agent knows."""
    reason = vm.lifecycle_suspended or ""
    if vm.channel.heartbeat_view.health == "vm_crashed":
        return "error", "crashed"
    if reason.startswith(("paused", "suspended", "pmsuspended")):
        return "paused", "paused"
    if reason.startswith(("stopped", "shutdown")):
        return "stopped", "shutdown"
    if vm.state != "connected":
        return "stopped", "shutdown"
    return "active", "running"


class _LinkSink:
    """Forwards every event; a lifecycle or health change also refreshes member states."""

    def __init__(self, link: ControllerLink) -> None:
        self.link = link

    def emit(self, event: Any) -> None:
        self.link.forwarder.emit(event)
        if event.kind in _STATE_EVENTS:
            self.link._states_dirty.set()

    def close(self) -> None:
        pass
