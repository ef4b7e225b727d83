"""Server group membership on the controller: groups, members, member status
objects (protocol §5.5) and the Nova vocabulary they are built from.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid as uuidlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ...protocol.events import EventKind
from ...protocol.messages import MAX_STATUS_BYTES

LOG = logging.getLogger("guest_ha.controller.sg")


#: Nova API microversion: 2.47+ embeds flavors, 2.71+ has ``server_groups``.
NOVA_MICROVERSION = "2.71"

#: Fields of Nova's ``InstancePayload`` copied into a member status object.
STATUS_FIELDS = (
    "uuid",
    "display_name",
    "host",
    "state",
    "task_state",
    "power_state",
    "guest_health",
    "node",
    "availability_zone",
    "launched_at",
    "updated_at",
)
#: A change of one of these is a peer state change (``notification``).
CHANGE_FIELDS = ("state", "task_state", "power_state", "host", "guest_health")

#: guest-ha event kind -> the member's ``guest_health`` (what its heartbeat says).
#: Lifecycle-suppressed events (``suspended``) leave it: the Nova/libvirt states
#: tell that story.
GUEST_HEALTH_OF_EVENT: Dict[str, str] = {
    EventKind.REGISTERED: "healthy",
    EventKind.RECOVERED: "healthy",
    EventKind.HEARTBEAT_LOST: "heartbeat_lost",
    EventKind.UNHEALTHY: "unhealthy",
    EventKind.VM_CRASHED: "vm_crashed",
    EventKind.EXIT: "exited",
}

#: ``OS-EXT-STS:power_state`` integers of the Nova API -> the names Nova's
#: notifications use (``nova.compute.power_state.STATE_MAP``).
POWER_STATE_NAMES = {
    0: "pending",
    1: "running",
    3: "paused",
    4: "shutdown",
    6: "crashed",
    7: "suspended",
}

#: libvirt domain states a standalone compute agent may report -> Nova names.
LIBVIRT_STATES = {
    "running": ("active", "running"),
    "blocked": ("active", "running"),
    "idle": ("active", "running"),
    "paused": ("paused", "paused"),
    "shutdown": ("active", "running"),  # shutting down: still active until off
    "shutoff": ("stopped", "shutdown"),
    "crashed": ("error", "crashed"),
    "pmsuspended": ("suspended", "suspended"),
    "nostate": ("building", "pending"),
}

#: Nova versioned notification event types this module acts on.
INSTANCE_EVENTS = (
    "instance.update",
    "instance.create.end",
    "instance.power_off.end",
    "instance.power_on.end",
    "instance.reboot.start",
    "instance.reboot.end",
    "instance.shutdown.end",
    "instance.pause.end",
    "instance.unpause.end",
    "instance.suspend.end",
    "instance.resume.end",
    "instance.rebuild.end",
    "instance.evacuate",
    "instance.live_migration_post.end",
    "instance.live_migration_rollback.end",
    "instance.resize_finish.end",
    "instance.shelve.end",
    "instance.shelve_offload.end",
    "instance.unshelve.end",
    "instance.rescue.end",
    "instance.unrescue.end",
    "instance.restore.end",
    "instance.soft_delete.end",
    "instance.crash",
    "instance.delete.end",
)
GROUP_EVENTS = ("server_group.create", "server_group.add_member", "server_group.delete")


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def make_status(fields: Mapping[str, Any]) -> Dict[str, Any]:
    """A member status object (protocol §5.5) from Nova-named ``fields``.

    The mandatory fields are always present; optional ones only when known.
    It is kept within ``MAX_STATUS_BYTES``: optional fields go first, then the name is cut.
    """
    status: Dict[str, Any] = {
        "uuid": str(fields.get("uuid") or ""),
        "display_name": str(fields.get("display_name") or ""),
        "host": fields.get("host") or None,
        "state": str(fields.get("state") or "unknown"),
        "task_state": fields.get("task_state") or None,
        "power_state": str(fields.get("power_state") or "pending"),
    }
    for key in STATUS_FIELDS[6:]:
        if fields.get(key) is not None:
            status[key] = fields[key]
    for key in reversed(STATUS_FIELDS[6:]):
        if len(compact(status)) <= MAX_STATUS_BYTES:
            break
        status.pop(key, None)
    while len(compact(status)) > MAX_STATUS_BYTES and status["display_name"]:
        status["display_name"] = status["display_name"][: len(status["display_name"]) // 2]
    return status


def status_from_server(server: Mapping[str, Any]) -> Dict[str, Any]:
    """A member status object from a Nova API server (``GET /servers/detail``)."""
    power = server.get("OS-EXT-STS:power_state")
    return make_status(
        {
            "uuid": server.get("id"),
            "display_name": server.get("name"),
            "host": server.get("OS-EXT-SRV-ATTR:host"),
            "node": server.get("OS-EXT-SRV-ATTR:hypervisor_hostname"),
            "state": server.get("OS-EXT-STS:vm_state"),
            "task_state": server.get("OS-EXT-STS:task_state"),
            "power_state": POWER_STATE_NAMES.get(power, str(power)) if power is not None else None,
            "availability_zone": server.get("OS-EXT-AZ:availability_zone"),
            "launched_at": server.get("OS-SRV-USG:launched_at"),
            "updated_at": server.get("updated"),
        }
    )


def nova_object_data(payload: Any) -> Dict[str, Any]:
    """``payload["nova_object.data"]`` of a versioned notification ({} if absent)."""
    if isinstance(payload, Mapping):
        data = payload.get("nova_object.data")
        if isinstance(data, Mapping):
            return dict(data)
    return {}


def canonical_uuid(value: Any) -> Optional[str]:
    try:
        return str(uuidlib.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        return None


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Membership:
    """Groups, their members and each member's status; thread-safe.

    ``static`` groups come from the source (Nova, or the YAML file) and from
    Nova's ``server_group.*`` notifications; ``reported`` groups (standalone
    mode) are the group each compute agent says a VM of its belongs to.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.static: Dict[str, Set[str]] = {}
        self.names: Dict[str, str] = {}
        self.reported: Dict[str, str] = {}  # uuid -> group key
        self.reported_members: Dict[str, Set[str]] = {}
        self.status: Dict[str, Dict[str, Any]] = {}
        self.loaded = False

    # -- reads
    def groups_of(self, uuid: str) -> List[str]:
        with self.lock:
            keys = [k for k, members in self.static.items() if uuid in members]
            rep = self.reported.get(uuid)
            if rep is not None and rep not in keys:
                keys.append(rep)
            return keys

    def members(self, key: str) -> Set[str]:
        with self.lock:
            return set(self.static.get(key, ())) | set(self.reported_members.get(key, ()))

    def peers_and_self(self, uuid: str) -> Tuple[List[str], Set[str]]:
        """(groups of ``uuid``, union of their members including ``uuid``)."""
        with self.lock:
            keys = self.groups_of(uuid)
            members: Set[str] = set()
            for key in keys:
                members |= self.members(key)
            return keys, members

    def status_of(self, uuid: str) -> Dict[str, Any]:
        with self.lock:
            status = self.status.get(uuid)
            if status is not None:
                return dict(status)
        return make_status({"uuid": uuid, "state": "unknown", "power_state": "pending"})

    def host_of(self, uuid: str) -> Optional[str]:
        with self.lock:
            status = self.status.get(uuid)
            return status.get("host") if status else None

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            keys = set(self.static) | set(self.reported_members)
            return {
                "loaded": self.loaded,
                "groups": len(keys),
                "members": len({u for k in keys for u in self.members(k)}),
                "known_instances": len(self.status),
            }

    # -- writes
    def replace_static(
        self,
        groups: Mapping[str, Iterable[str]],
        names: Mapping[str, str],
        statuses: Optional[Mapping[str, Dict[str, Any]]] = None,
    ) -> None:
        with self.lock:
            self.static = {k: set(v) for k, v in groups.items()}
            self.names = dict(names)
            if statuses is not None:
                self.status = {u: dict(s) for u, s in statuses.items()}
            self.loaded = True

    def set_group(self, key: str, name: Optional[str], members: Iterable[str]) -> Set[str]:
        """Set a group's members; returns the members that joined."""
        with self.lock:
            old = self.static.get(key, set())
            new = set(members)
            self.static[key] = new
            if name:
                self.names[key] = name
            return new - old

    def add_member(self, key: str, uuid: str) -> bool:
        with self.lock:
            members = self.static.setdefault(key, set())
            fresh = uuid not in members
            members.add(uuid)
            return fresh

    def delete_group(self, key: str) -> None:
        with self.lock:
            self.static.pop(key, None)
            self.names.pop(key, None)

    def report_group(self, uuid: str, key: Optional[str]) -> bool:
        """Record the group a compute agent reports for ``uuid``; True if it changed."""
        with self.lock:
            old = self.reported.get(uuid)
            if old == key:
                return False
            if old is not None:
                self.reported_members.get(old, set()).discard(uuid)
                if not self.reported_members.get(old):
                    self.reported_members.pop(old, None)
            if key:
                self.reported[uuid] = key
                self.reported_members.setdefault(key, set()).add(uuid)
            else:
                self.reported.pop(uuid, None)
            return True

    def update_status(
        self, uuid: str, fields: Mapping[str, Any]
    ) -> Tuple[Dict[str, Any], bool, bool]:
        """Merge ``fields`` into ``uuid``'s status.

        Returns ``(new status, a state field (CHANGE_FIELDS) changed, anything
        but updated_at changed)``. ``updated_at`` is set to now on a state
        change unless ``fields`` carries one.
        """
        with self.lock:
            old = self.status.get(uuid)
            merged = dict(old or {"uuid": uuid})
            merged.update({k: v for k, v in fields.items() if k in STATUS_FIELDS})
            merged["uuid"] = uuid
            state_changed = old is None or any(old.get(k) != merged.get(k) for k in CHANGE_FIELDS)
            if state_changed and "updated_at" not in fields:
                merged["updated_at"] = _now_iso()
            new = make_status(merged)
            any_changed = old is None or any(
                old.get(k) != new.get(k) for k in set(old) | set(new) if k != "updated_at"
            )
            self.status[uuid] = new
            return dict(new), state_changed, any_changed

    def forget(self, uuid: str) -> None:
        """Remove ``uuid`` from every group (deleted instance)."""
        with self.lock:
            for members in self.static.values():
                members.discard(uuid)
            self.report_group(uuid, None)
