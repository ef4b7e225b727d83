"""Server group messaging on the controller: membership, routing, peer notifications.

Compute agents cast every server-group PDU of an opted-in VM to a controller
(``sg_relay``), stamped with the VM's identity taken from its channel. This
module decides who gets what and casts the answers to the compute hosts'
topics (``sg_deliver``), one cast per host per routed message:

- ``broadcast`` -> every *other* member of the sender's group(s);
- ``status_query`` -> one ``status_response`` per member (asker included),
  then ``status_response_done``, all to the asker's host;
- a VM in no group -> ``nack not_in_server_group`` to its own host;
- a member's state change -> ``notification`` to the other members.

Membership comes from one of two sources:

- ``nova``: ``GET /os-server-groups?all_projects=True`` (members) and
  ``GET /servers/detail?all_tenants=1`` (host, states, name), refreshed every
  ``cache_ttl_s`` and kept current between refreshes by Nova's versioned
  notifications (``server_group.*``, ``instance.*``) on
  ``versioned_notifications``;
- ``file`` (standalone): a YAML ``groups: {name: [uuid, ...]}`` file, plus the
  group each compute agent reports for its VMs (``vm_states`` and the
  ``group`` of ``sg_relay``: set by the operator in the domain metadata, never
  by a guest); member status from the agents' ``vm_states`` reports.

Several controllers may run active-active. Each keeps its own cache; whatever
one of them learns from a notification or a compute report (which reach only
one controller) it applies, acts on, and casts to the others on the
controllers' fanout exchange (``sg_sync``) so their caches stay current
without acting twice.

The code lives in the modules of this package: ``membership`` (groups,
members, status objects), ``sources`` (Nova or a YAML file), ``router``
(routing, peer notifications, sg_sync), ``outbox`` (bounded, paced casts to
the compute hosts) and ``wiring`` (building the router
from the options, Nova's notification listener).
"""

from __future__ import annotations

from .membership import (
    CHANGE_FIELDS,
    GROUP_EVENTS,
    GUEST_HEALTH_OF_EVENT,
    INSTANCE_EVENTS,
    LIBVIRT_STATES,
    NOVA_MICROVERSION,
    POWER_STATE_NAMES,
    STATUS_FIELDS,
    Membership,
    canonical_uuid,
    compact,
    make_status,
    nova_object_data,
    status_from_server,
)
from .outbox import Deliveries, Outbox
from .router import ServerGroupRouter
from .sources import FileSource, MembershipError, NovaSource
from .wiring import (
    NovaNotificationEndpoint,
    build_router,
    start_datagram_receiver,
    start_listeners,
    start_nova_listener,
)

__all__ = [
    "CHANGE_FIELDS",
    "GROUP_EVENTS",
    "GUEST_HEALTH_OF_EVENT",
    "INSTANCE_EVENTS",
    "LIBVIRT_STATES",
    "NOVA_MICROVERSION",
    "POWER_STATE_NAMES",
    "STATUS_FIELDS",
    "Deliveries",
    "FileSource",
    "Membership",
    "MembershipError",
    "NovaNotificationEndpoint",
    "NovaSource",
    "Outbox",
    "ServerGroupRouter",
    "build_router",
    "canonical_uuid",
    "compact",
    "make_status",
    "nova_object_data",
    "start_datagram_receiver",
    "start_listeners",
    "start_nova_listener",
    "status_from_server",
]
