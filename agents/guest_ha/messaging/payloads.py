"""The RPC vocabulary between compute agents and controllers, in one place.

Method names and payload shapes of every RPC guest-ha sends over
oslo.messaging. Senders build these shapes, endpoints read them; both import
them from here. Payloads cross the broker as plain JSON dicts, so the shapes
are ``TypedDict``: they type the code, and a receiver still checks what it is
given (a compute agent's input is not trusted blindly).

compute agent -> controller (topic ``[guest_ha] controller_topic``):

- ``report_event(event: ReportedEvent)`` / ``report_events(events: [...])``:
  *calls*, answered with an ack dict once the event is stored;
- ``compute_status(host, spool_depth, vms)``: a call, periodic;
- ``sg_relay(**SgRelayItem)`` / ``sg_relay_batch(host, items: [SgRelayItem])``:
  casts, one server-group PDU each, stamped with the VM's identity;
- ``vm_states(host, vms: [VmState], full)``: a cast, the VMs a host runs.

controller -> compute agent (topic ``<compute_topic_prefix>.<host>``):

- ``sg_deliver(deliveries: [SgDelivery])``: a cast, PDUs for that host's VMs.

controller -> controllers (fanout): ``sg_sync(origin, ops)``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, TypedDict

from ..protocol.events import EventKind

# -- method names
REPORT_EVENT = "report_event"
REPORT_EVENTS = "report_events"
COMPUTE_STATUS = "compute_status"
SG_RELAY = "sg_relay"
SG_RELAY_BATCH = "sg_relay_batch"
VM_STATES = "vm_states"
SG_SYNC = "sg_sync"
SG_DELIVER = "sg_deliver"


class _EventRequired(TypedDict):
    kind: str
    """An :class:`~guest_ha.protocol.events.EventKind` value."""
    instance_uuid: str
    idempotency_key: str


class ReportedEvent(_EventRequired, total=False):
    """One heartbeat event as the compute agent reports it (``report_event``)."""

    domain: str
    fault: bool
    time: str
    """ISO 8601 UTC wall time (``...Z``)."""
    monotonic: float
    detail: Dict[str, Any]
    compute_host: str


#: Keys a reported event must carry (as strings) to be stored at all.
REQUIRED_EVENT_KEYS = ("idempotency_key", "instance_uuid", "kind")


class SgRelayPdu(TypedDict):
    """One server-group PDU of a guest, in an ``sg_relay_batch`` (whose ``host``
    is given once)."""

    instance_uuid: str
    """Taken from the channel the PDU came in on, never from the guest."""
    msg_type: str
    fields: Dict[str, Any]
    group: Optional[str]
    """The operator-set standalone group of the VM (domain metadata), or None."""


class SgRelayItem(SgRelayPdu):
    """One server-group PDU of a guest, relayed alone (``sg_relay``)."""

    host: str


class SgDelivery(TypedDict):
    """One server-group PDU for a VM on the receiving host (``sg_deliver``)."""

    instance_uuid: str
    msg_type: str
    fields: Dict[str, Any]


class _VmStateRequired(TypedDict):
    uuid: str
    name: str
    state: str
    """Nova ``vm_state`` (``active``, ``paused``, ...) or a libvirt state name."""
    power_state: str


class VmState(_VmStateRequired, total=False):
    """One VM in a compute agent's ``vm_states`` report."""

    task_state: Optional[str]
    group: Optional[str]
    guest_health: str
    """What its heartbeat says (``healthy`` or an :class:`EventKind` fault)."""


__all__ = [
    "COMPUTE_STATUS",
    "REPORT_EVENT",
    "REPORT_EVENTS",
    "REQUIRED_EVENT_KEYS",
    "SG_DELIVER",
    "SG_RELAY",
    "SG_RELAY_BATCH",
    "SG_SYNC",
    "VM_STATES",
    "EventKind",
    "ReportedEvent",
    "SgDelivery",
    "SgRelayItem",
    "SgRelayPdu",
    "VmState",
]
