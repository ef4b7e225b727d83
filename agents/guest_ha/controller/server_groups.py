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
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid as uuidlib
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ..messaging.payloads import SG_DELIVER, SG_SYNC, SgDelivery, VmState
from ..protocol.envelope import SERVER_GROUP, Envelope
from ..protocol.errors import InvalidField, UnknownMessageType
from ..protocol.events import EventKind
from ..protocol.messages import GUEST_TO_HOST, MAX_STATUS_BYTES, validate
from ..runtime import RateLimitedLog

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


# --------------------------------------------------------------------- membership


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


# ------------------------------------------------------------------------ sources


class MembershipError(RuntimeError):
    """The membership source could not be read."""


class NovaSource:
    """Groups and server states from the Nova API (admin, all projects)."""

    kind = "nova"

    def __init__(
        self,
        session: Any,
        *,
        region: Optional[str] = None,
        interface: str = "public",
        page_size: int = 1000,
    ) -> None:
        self.session = session
        self.region = region
        self.interface = interface
        self.page_size = page_size
        self.api_calls = 0

    def _get(self, path: str) -> Dict[str, Any]:
        self.api_calls += 1
        try:
            response = self.session.get(
                path,
                endpoint_filter={
                    "service_type": "compute",
                    "interface": self.interface,
                    "region_name": self.region,
                },
                headers={"OpenStack-API-Version": f"compute {NOVA_MICROVERSION}"},
                raise_exc=False,
            )
        except Exception as exc:  # keystoneauth1 raises many kinds; all mean "cannot ask"
            raise MembershipError(f"Nova GET {path} failed: {exc}") from None
        if response.status_code != 200:
            raise MembershipError(f"Nova answered {response.status_code} for GET {path}")
        return response.json()

    def groups(self) -> Tuple[Dict[str, Set[str]], Dict[str, str]]:
        groups: Dict[str, Set[str]] = {}
        names: Dict[str, str] = {}
        offset = 0
        while True:
            page = self._get(
                f"/os-server-groups?all_projects=True&limit={self.page_size}&offset={offset}"
            ).get("server_groups", [])
            for group in page:
                key = str(group["id"])
                groups[key] = {u for u in map(canonical_uuid, group.get("members") or []) if u}
                names[key] = str(group.get("name") or key)
            if len(page) < self.page_size:
                return groups, names
            offset += len(page)

    def servers(self, only: Optional[Set[str]] = None) -> Dict[str, Dict[str, Any]]:
        statuses: Dict[str, Dict[str, Any]] = {}
        marker = ""
        while True:
            path = f"/servers/detail?all_tenants=1&limit={self.page_size}"
            page = self._get(path + (f"&marker={marker}" if marker else "")).get("servers", [])
            for server in page:
                uuid = canonical_uuid(server.get("id"))
                if uuid and (only is None or uuid in only):
                    statuses[uuid] = status_from_server(server)
            if len(page) < self.page_size:
                return statuses
            marker = str(page[-1]["id"])

    def server(self, uuid: str) -> Optional[Dict[str, Any]]:
        try:
            body = self._get(f"/servers/{uuid}")
        except MembershipError as exc:
            if "answered 404" in str(exc):
                return None
            raise
        return status_from_server(body.get("server", {}))

    def load(self) -> Tuple[Dict[str, Set[str]], Dict[str, str], Optional[Dict[str, Any]]]:
        groups, names = self.groups()
        wanted = set().union(*groups.values()) if groups else set()
        statuses = self.servers(wanted) if wanted else {}
        return groups, names, statuses


class FileSource:
    """Standalone groups from a YAML file ``groups: {name: [instance uuid, ...]}``."""

    kind = "file"

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def load(self) -> Tuple[Dict[str, Set[str]], Dict[str, str], Optional[Dict[str, Any]]]:
        if not self.path:
            return {}, {}, None
        import yaml

        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            return {}, {}, None
        except (OSError, yaml.YAMLError) as exc:
            raise MembershipError(f"cannot read {self.path}: {exc}") from None
        raw = doc.get("groups") if isinstance(doc, dict) else None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise MembershipError(f"{self.path}: 'groups' must map a name to a list of uuids")
        groups: Dict[str, Set[str]] = {}
        for name, members in raw.items():
            if not isinstance(members, list):
                raise MembershipError(f"{self.path}: group {name!r} is not a list")
            uuids = set()
            for m in members:
                u = canonical_uuid(m)
                if u is None:
                    raise MembershipError(f"{self.path}: group {name!r}: {m!r} is not a UUID")
                uuids.add(u)
            groups[str(name)] = uuids
        return groups, {k: k for k in groups}, None


# ------------------------------------------------------------------------- router


Deliveries = Dict[str, List[SgDelivery]]
"""Per compute host, the PDUs for its VMs (one ``sg_deliver`` cast each)."""


class ServerGroupRouter:
    """Routes server-group PDUs between compute hosts; keeps membership current.

    ``cast(host, deliveries)`` sends one ``sg_deliver`` to a compute host;
    ``sync(ops)`` (optional) casts membership ops to the other controllers.
    """

    def __init__(
        self,
        source: Any,
        cast: Callable[[str, List[SgDelivery]], None],
        *,
        sync: Optional[Callable[[List[Dict[str, Any]]], None]] = None,
        cache_ttl_s: float = 300.0,
        retry_s: float = 5.0,
        controller_id: str = "",
        cast_interval_s: float = 0.0,
    ) -> None:
        self.source = source
        self.mode = getattr(source, "kind", "file")
        self._cast = cast
        self._sync = sync
        self.cache_ttl_s = cache_ttl_s
        self.retry_s = retry_s
        self.controller_id = controller_id or f"{os.uname().nodename}:{os.getpid()}"
        self._batch = threading.local()  # deliveries collected by relay_batch()
        self.membership = Membership()
        self.counters: Dict[str, int] = {
            "relayed": 0,
            "broadcasts": 0,
            "status_queries": 0,
            "notifications_in": 0,
            "peer_notifications": 0,
            "heartbeat_events": 0,
            "deliveries": 0,
            "casts": 0,
            "cast_errors": 0,
            "nacks": 0,
            "unroutable": 0,
            "malformed": 0,
            "refreshes": 0,
            "refresh_errors": 0,
            "vm_state_reports": 0,
            "syncs_sent": 0,
            "syncs_applied": 0,
            "outbox_dropped": 0,
        }
        self._counter_lock = threading.Lock()
        self.rlog = RateLimitedLog(LOG)
        self.last_refresh: Optional[float] = None
        self.last_error: Optional[str] = None
        self._stop = threading.Event()
        self._refresh_now = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._fetch_lock = threading.Lock()
        self._fetching: Set[str] = set()
        self.listeners: List[Any] = []
        # Deliveries waiting for the sender thread, per host, in order. Without
        # a sender (unit tests, before start()) _send casts synchronously.
        self._outbox: Dict[str, List[SgDelivery]] = {}
        self._outbox_items = 0
        self._outbox_cond = threading.Condition()
        self._sender: Optional[threading.Thread] = None
        # Casts to one host start at least this far apart; what arrives
        # meanwhile waits and leaves in the next cast. Idle hosts get theirs at once.
        self.cast_interval_s = cast_interval_s
        self._last_cast: Dict[str, float] = {}

    # -- lifecycle
    def count(self, key: str, n: int = 1) -> None:
        with self._counter_lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def refresh(self) -> bool:
        """Reload membership from the source (Nova or the file). True on success."""
        try:
            groups, names, statuses = self.source.load()
        except Exception as exc:  # MembershipError, or anything the source raised
            self.count("refresh_errors")
            self.last_error = str(exc)
            self.rlog(logging.ERROR, "refresh", "server group membership refresh failed: %s", exc)
            return False
        self.membership.replace_static(groups, names, statuses)
        self.count("refreshes")
        self.last_refresh = time.time()
        self.last_error = None
        LOG.debug("server group membership refreshed: %s", self.membership.snapshot())
        return True

    def start(self) -> None:
        """First refresh (synchronous), then periodic refreshes on a thread."""
        ok = self.refresh()
        snap = self.membership.snapshot()
        LOG.info(
            "server groups (%s): %s; %d group(s), %d member(s)",
            self.mode,
            "loaded" if ok else "NOT loaded yet, retrying",
            snap["groups"],
            snap["members"],
        )
        self._thread = threading.Thread(target=self._run, name="sg-refresh", daemon=True)
        self._thread.start()
        self._sender = threading.Thread(target=self._send_loop, name="sg-sender", daemon=True)
        self._sender.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.cache_ttl_s if self.last_error is None else self.retry_s
            self._refresh_now.wait(wait)
            self._refresh_now.clear()
            if self._stop.is_set():
                return
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._refresh_now.set()
        with self._outbox_cond:
            self._outbox_cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=5)
        for listener in self.listeners:
            try:
                listener.stop()
            except Exception:
                LOG.exception("stopping a notification listener failed")
        if self._thread is not None:
            self._thread.join(timeout=5)

    def snapshot(self) -> Dict[str, Any]:
        with self._counter_lock:
            counters = dict(self.counters)
        return {
            "mode": self.mode,
            **self.membership.snapshot(),
            "last_refresh": self.last_refresh,
            "last_error": self.last_error,
            **counters,
        }

    # -- output
    def relay_batch(self, host: str, items: Sequence[Mapping[str, Any]]) -> None:
        """Route several relayed PDUs; deliveries go out as one cast per host."""
        pending: Deliveries = {}
        self._batch.pending = pending
        try:
            for item in items:
                if not isinstance(item, Mapping):
                    self.count("malformed")
                    continue
                self.relay(
                    host,
                    item.get("instance_uuid"),  # type: ignore[arg-type]
                    item.get("msg_type"),  # type: ignore[arg-type]
                    item.get("fields") or {},
                    item.get("group"),
                )
        finally:
            self._batch.pending = None
        self._send(pending)

    #: Most deliveries waiting for the sender; beyond it new ones are dropped
    #: (best effort, counted and logged): a stuck broker cannot exhaust memory.
    MAX_OUTBOX = 100_000
    # One sg_deliver carries at most this many PDUs (each at most ~3.3 KB):
    # a backlog leaves as several casts of bounded size, not one huge message.
    MAX_CAST_ITEMS = 256

    def _send(self, deliveries: Deliveries) -> None:
        pending = getattr(self._batch, "pending", None)
        if pending is not None:  # inside relay_batch: flushed together at its end
            for host, items in deliveries.items():
                pending.setdefault(host, []).extend(items)
            return
        if self._sender is not None:
            self._enqueue(deliveries)
            return
        self._cast_all(deliveries)

    def _enqueue(self, deliveries: Deliveries) -> None:
        """Hand deliveries to the sender thread. While it casts (or a host's
        ``cast_interval_s`` runs), more pile up and leave together in that host's
        next cast, up to ``MAX_CAST_ITEMS`` each."""
        dropped = 0
        with self._outbox_cond:
            new_host = False
            for host, items in deliveries.items():
                room = self.MAX_OUTBOX - self._outbox_items
                if room < len(items):
                    dropped += len(items) - max(room, 0)
                    items = items[: max(room, 0)]
                if items:
                    pending = self._outbox.get(host)
                    if pending is None:
                        self._outbox[host] = pending = []
                        new_host = True
                    pending.extend(items)
                    self._outbox_items += len(items)
            if new_host:  # a host already waiting leaves when its interval is up
                self._outbox_cond.notify()
        if dropped:
            self.count("outbox_dropped", dropped)
            self.rlog(
                logging.WARNING,
                "outbox",
                "server group outbox full: %d delivery(ies) dropped",
                dropped,
            )

    def _send_loop(self) -> None:
        while True:
            with self._outbox_cond:
                while True:
                    stopping = self._stop.is_set()
                    if not self._outbox:
                        if stopping:
                            return
                        self._outbox_cond.wait()
                        continue
                    due, wait = self._due_hosts(time.monotonic(), flush=stopping)
                    if due:
                        break
                    self._outbox_cond.wait(wait)
                batch = {host: self._take(host) for host in due}
                self._outbox_items -= sum(len(items) for items in batch.values())
            self._cast_all(batch)

    def _take(self, host: str) -> List[SgDelivery]:
        """The next cast's deliveries for ``host`` (at most MAX_CAST_ITEMS); the
        rest stays queued, in order, for the following cast."""
        items = self._outbox[host]
        if len(items) <= self.MAX_CAST_ITEMS:
            return self._outbox.pop(host)
        self._outbox[host] = items[self.MAX_CAST_ITEMS :]
        return items[: self.MAX_CAST_ITEMS]

    def _due_hosts(self, now: float, flush: bool = False) -> "tuple[List[str], float]":
        """Hosts whose next cast may start now, and else how long until one may."""
        if flush or self.cast_interval_s <= 0:
            return list(self._outbox), 0.0
        due, wait = [], self.cast_interval_s
        for host in self._outbox:
            ready_at = self._last_cast.get(host, float("-inf")) + self.cast_interval_s
            if ready_at <= now:
                due.append(host)
            else:
                wait = min(wait, ready_at - now)
        return due, wait

    def _cast_all(self, deliveries: Deliveries) -> None:
        for host, items in deliveries.items():
            self._last_cast[host] = time.monotonic()
            try:
                self._cast(host, items)
                self.count("casts")
                self.count("deliveries", len(items))
            except Exception as exc:  # best effort: the broker is down, ...
                self.count("cast_errors")
                self.rlog(
                    logging.WARNING,
                    f"cast:{host}",
                    "server group delivery to host %s dropped: %s",
                    host,
                    exc,
                )

    def _to_members(
        self, members: Iterable[str], msg_type: str, fields: Mapping[str, Any]
    ) -> Deliveries:
        out: Deliveries = {}
        for uuid in members:
            host = self.membership.host_of(uuid)
            if not host:
                self.count("unroutable")
                self.rlog(
                    logging.INFO,
                    f"nohost:{uuid}",
                    "[instance %s] no known host: %s not delivered",
                    uuid,
                    msg_type,
                )
                continue
            out.setdefault(host, []).append(
                {"instance_uuid": uuid, "msg_type": msg_type, "fields": dict(fields)}
            )
        return out

    def _nack(self, host: str, uuid: str, orig: str, code: str, text: str) -> None:
        self.count("nacks")
        self._send(
            {
                host: [
                    {
                        "instance_uuid": uuid,
                        "msg_type": "nack",
                        "fields": {"orig_msg_type": orig, "log_msg": f"{code}: {text}"},
                    }
                ]
            }
        )

    # -- compute -> controller
    def relay(
        self,
        host: str,
        instance_uuid: str,
        msg_type: str,
        fields: Mapping[str, Any],
        group: Optional[str] = None,
    ) -> None:
        """Route one server-group PDU of ``instance_uuid`` (on ``host``)."""
        self.count("relayed")
        uuid = canonical_uuid(instance_uuid)
        if not isinstance(host, str) or not host or uuid is None or not isinstance(fields, Mapping):
            self.count("malformed")
            self.rlog(
                logging.WARNING,
                "malformed",
                "malformed sg_relay from %r for %r dropped",
                host,
                instance_uuid,
            )
            return
        try:  # the protocol's own table, as the guest's host end checks it
            pdu = validate(
                Envelope(1, SERVER_GROUP, SERVER_GROUP, {**fields, "msg_type": msg_type}),
                GUEST_TO_HOST,
            )
        except UnknownMessageType as exc:
            self.count("malformed")
            self._nack(host, uuid, exc.msg_type, "unknown_msg_type", "not routed")
            return
        except InvalidField as exc:
            self.count("malformed")
            self._nack(host, uuid, exc.msg_type, "invalid_field", exc.message)
            return
        if pdu.msg_type not in ("broadcast", "status_query"):
            self.count("malformed")
            self._nack(host, uuid, pdu.msg_type, "unknown_msg_type", "not routed")
            return
        if self.mode == "file" and group:
            # Trusted: the compute agent's operator-set group, never the guest's.
            self._learn_reported(uuid, str(group), host)
        if not self.membership.loaded:
            self.rlog(
                logging.WARNING,
                "notloaded",
                "server group membership not loaded yet: %s from %s nacked",
                msg_type,
                uuid,
            )
            self._nack(host, uuid, msg_type, "unavailable", "server group membership unavailable")
            return
        groups, members = self.membership.peers_and_self(uuid)
        if not groups:
            self.rlog(
                logging.INFO,
                f"nogroup:{uuid}",
                "[instance %s] %s from a VM in no server group nacked",
                uuid,
                msg_type,
            )
            self._nack(host, uuid, msg_type, "not_in_server_group", "this VM is in no server group")
            return
        known_host = self.membership.host_of(uuid)
        if known_host and known_host != host:
            self.rlog(
                logging.INFO,
                f"hostdiff:{uuid}",
                "[instance %s] relayed by %s but known on %s (migrating?)",
                uuid,
                host,
                known_host,
            )
        if msg_type == "broadcast":
            self.count("broadcasts")
            members.discard(uuid)
            self._send(
                self._to_members(
                    sorted(members),
                    "broadcast",
                    {"source_instance": uuid, "data": pdu["data"]},
                )
            )
        else:
            seq = pdu["seq"]
            self.count("status_queries")
            items: List[SgDelivery] = [
                {
                    "instance_uuid": uuid,
                    "msg_type": "status_response",
                    "fields": {"seq": seq, "data": self.membership.status_of(m)},
                }
                for m in sorted(members)
            ]
            items.append(
                {"instance_uuid": uuid, "msg_type": "status_response_done", "fields": {"seq": seq}}
            )
            self._send({host: items})

    def vm_states(self, host: str, vms: Sequence[VmState], full: bool = True) -> None:
        """A compute agent's report of its VMs (standalone membership and status).

        ``vms``: ``[{uuid, name, state, power_state, task_state?, group?}]``,
        states by Nova name (libvirt names are mapped). With ``full``, the list
        is everything ``host`` runs: a member last seen on ``host`` that is
        missing has gone (``state: deleted``).
        """
        self.count("vm_state_reports")
        if not isinstance(host, str) or not host or not isinstance(vms, (list, tuple)):
            self.count("malformed")
            return
        if self.mode != "file":
            return  # Nova is the source of truth for membership and state
        ops: List[Dict[str, Any]] = []
        seen: Set[str] = set()
        for vm in vms:
            if not isinstance(vm, Mapping):
                continue
            uuid = canonical_uuid(vm.get("uuid"))
            if uuid is None:
                continue
            seen.add(uuid)
            state = str(vm.get("state") or "")
            power = vm.get("power_state")
            if state in LIBVIRT_STATES and power in (None, "", state):
                state, power = LIBVIRT_STATES[state]
            ops.append(
                {
                    "op": "report",
                    "uuid": uuid,
                    "group": vm.get("group") or None,
                    "status": {
                        "display_name": vm.get("name"),
                        "host": host,
                        "state": state or "unknown",
                        "task_state": vm.get("task_state") or None,
                        "power_state": power or "pending",
                    },
                }
            )
        if full:
            with self.membership.lock:
                gone = [
                    u
                    for u, s in self.membership.status.items()
                    if s.get("host") == host and u not in seen and s.get("state") != "deleted"
                ]
            for uuid in gone:
                ops.append(
                    {
                        "op": "status",
                        "uuid": uuid,
                        "status": {
                            "state": "deleted",
                            "task_state": None,
                            "power_state": "shutdown",
                        },
                    }
                )
        self.apply(ops, emit=True)

    def heartbeat_event(self, uuid: str, kind: str) -> None:
        """A heartbeat event the controller accepted: a member's ``guest_health``
        changed, so its peers are told (in Nova and in file mode alike)."""
        health = GUEST_HEALTH_OF_EVENT.get(kind)
        member = canonical_uuid(uuid)
        if health is None or member is None or not self.membership.groups_of(member):
            return
        self.count("heartbeat_events")
        self.apply([{"op": "status", "uuid": member, "status": {"guest_health": health}}], True)

    def _learn_reported(self, uuid: str, group: str, host: str) -> None:
        """The group (and host) the relaying compute agent gives for ``uuid``."""
        if self.membership.report_group(uuid, group) or self.membership.host_of(uuid) != host:
            self.membership.update_status(uuid, {"host": host})
            self._fanout([{"op": "report", "uuid": uuid, "group": group, "status": {"host": host}}])

    # -- Nova versioned notifications
    def nova_notification(self, event_type: str, payload: Any) -> None:
        """Apply one Nova versioned notification (``nova_object.data`` payload)."""
        self.count("notifications_in")
        data = nova_object_data(payload)
        ops: List[Dict[str, Any]] = []
        if event_type.startswith("server_group."):
            key = data.get("uuid")
            if not key:
                return
            if event_type == "server_group.delete":
                ops.append({"op": "group_delete", "group": str(key)})
            else:
                members = [u for u in map(canonical_uuid, data.get("members") or []) if u]
                ops.append(
                    {"op": "group", "group": str(key), "name": data.get("name"), "members": members}
                )
        elif event_type.startswith("instance."):
            uuid = canonical_uuid(data.get("uuid"))
            if uuid is None:
                return
            fields = {k: data[k] for k in STATUS_FIELDS if k in data}
            if event_type == "instance.delete.end":
                fields.setdefault("state", "deleted")
            ops.append({"op": "status", "uuid": uuid, "status": fields})
            if event_type == "instance.delete.end":
                ops.append({"op": "forget", "uuid": uuid})
        self.apply(ops, emit=True)

    # -- membership ops (local, and from other controllers via sg_sync)
    def apply(self, ops: Sequence[Mapping[str, Any]], emit: bool) -> None:
        """Apply membership ops; with ``emit``, notify peers of state changes and
        cast the ops that changed something to the other controllers."""
        m = self.membership
        effective: List[Dict[str, Any]] = []
        notify: List[Tuple[Dict[str, Any], Set[str]]] = []

        def changed(uuid: str, status: Dict[str, Any]) -> None:
            # Recipients are taken now: a later op may remove the member.
            _, members = m.peers_and_self(uuid)
            members.discard(uuid)
            if members:
                notify.append((status, members))

        for op in ops:
            kind = op.get("op")
            uuid = canonical_uuid(op.get("uuid")) if op.get("uuid") else None
            if kind == "group" and op.get("group"):
                joined = m.set_group(str(op["group"]), op.get("name"), op.get("members") or [])
                effective.append(dict(op))
                for new in sorted(joined):
                    if new in m.status:
                        changed(new, m.status_of(new))
                    elif emit and self.mode == "nova":
                        self._fetch_async(new)
            elif kind == "group_delete" and op.get("group"):
                m.delete_group(str(op["group"]))
                effective.append(dict(op))
            elif kind == "forget" and uuid:
                m.forget(uuid)
                effective.append(dict(op))
            elif kind in ("status", "report") and uuid:
                regrouped = kind == "report" and m.report_group(uuid, op.get("group") or None)
                status, state_changed, any_changed = m.update_status(uuid, op.get("status") or {})
                if regrouped or any_changed:
                    effective.append({**op, "status": status})
                if state_changed or regrouped:
                    changed(uuid, status)
        if not emit:
            self.count("syncs_applied")
            return
        self._fanout(effective)
        for status, members in notify:
            self._notify_peers(status, members)

    def _notify_peers(self, status: Dict[str, Any], members: Set[str]) -> None:
        self.count("peer_notifications")
        LOG.info(
            "[instance %s] state %s/%s/%s health %s on %s -> %d peer(s)",
            status["uuid"],
            status.get("state"),
            status.get("task_state"),
            status.get("power_state"),
            status.get("guest_health", "-"),
            status.get("host"),
            len(members),
        )
        self._send(self._to_members(sorted(members), "notification", {"data": status}))

    def _fanout(self, ops: List[Dict[str, Any]]) -> None:
        if self._sync is None or not ops:
            return
        try:
            self._sync(ops)
            self.count("syncs_sent")
        except Exception as exc:  # best effort; the next refresh converges
            self.rlog(logging.WARNING, "sync", "server group sync to other controllers: %s", exc)

    def _fetch_async(self, uuid: str) -> None:
        """A new Nova member whose state we do not know: ask Nova in the background."""
        with self._fetch_lock:
            if uuid in self._fetching:
                return
            self._fetching.add(uuid)

        def work() -> None:
            try:
                status = self.source.server(uuid)
                if status is not None:
                    self.apply([{"op": "status", "uuid": uuid, "status": status}], emit=True)
            except Exception as exc:
                self.rlog(logging.WARNING, "fetch", "Nova lookup of %s failed: %s", uuid, exc)
            finally:
                with self._fetch_lock:
                    self._fetching.discard(uuid)

        threading.Thread(target=work, name="sg-fetch", daemon=True).start()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------ notification listener


class NovaNotificationEndpoint:
    """oslo.messaging notification endpoint for Nova's versioned notifications."""

    def __init__(self, router: ServerGroupRouter) -> None:
        self.router = router
        import oslo_messaging

        self.filter_rule = oslo_messaging.NotificationFilter(
            event_type=r"^(instance\.|server_group\.)"
        )

    def _handle(self, event_type: str, payload: Any) -> None:
        if event_type in INSTANCE_EVENTS or event_type in GROUP_EVENTS:
            try:
                self.router.nova_notification(event_type, payload)
            except Exception:  # never let one bad notification stop the listener
                LOG.exception("Nova notification %s not applied", event_type)

    def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any):
        self._handle(event_type, payload)

    def error(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any):
        # instance.*.error notifications carry the instance as it is after the failure.
        self._handle(event_type.rsplit(".error", 1)[0] + ".end", payload)


def start_nova_listener(
    router: ServerGroupRouter,
    transport: Any,
    *,
    topic: str,
    exchange: str,
    pool: str,
) -> Any:
    """Listen to ``topic`` on ``exchange`` with a pool of its own; returns the listener."""
    import oslo_messaging

    listener = oslo_messaging.get_notification_listener(
        transport,
        [oslo_messaging.Target(topic=topic, exchange=exchange)],
        [NovaNotificationEndpoint(router)],
        pool=pool,
    )
    listener.start()

    class _Stopper:
        def stop(self) -> None:
            listener.stop()
            listener.wait()

    router.listeners.append(_Stopper())
    return listener


def build_router(conf: Any, transport: Any) -> ServerGroupRouter:
    """The router of ``[server_groups]``, wired to compute hosts and other controllers.

    Starts nothing; ``ServerGroupRouter.start()`` loads membership and
    ``start_listeners()`` starts the Nova notification listener.
    """
    import oslo_messaging

    from ..messaging.rpc import ComputeClient

    opts = conf.server_groups
    if opts.membership == "nova":
        from ..cloud_session import session_from_clouds_yaml

        source: Any = NovaSource(
            session_from_clouds_yaml(opts.clouds_yaml, opts.cloud),
            region=opts.region,
            interface=opts.interface,
        )
    else:
        source = FileSource(opts.groups_file)
    host = conf.guest_ha.host
    computes = ComputeClient(transport, host)
    controller_id = f"{host}:{os.getpid()}:{uuidlib.uuid4().hex[:8]}"
    peers = oslo_messaging.get_rpc_client(
        transport,
        oslo_messaging.Target(topic=conf.guest_ha.controller_topic),
        retry=conf.guest_ha.rpc_connect_retries,
    ).prepare(fanout=True)

    def cast(target_host: str, deliveries: List[SgDelivery]) -> None:
        computes.cast_to_host(target_host, SG_DELIVER, deliveries=deliveries)

    def sync(ops: List[Dict[str, Any]]) -> None:
        peers.cast({"host": host}, SG_SYNC, origin=controller_id, ops=ops)

    return ServerGroupRouter(
        source,
        cast,
        sync=sync,
        cache_ttl_s=opts.cache_ttl_s,
        controller_id=controller_id,
        cast_interval_s=opts.cast_interval_ms / 1000.0,
    )


def start_listeners(router: ServerGroupRouter, conf: Any) -> None:
    """Start the Nova versioned notification listener (nova membership only)."""
    if router.mode != "nova" or not conf.server_groups.listen_notifications:
        return
    from ..messaging.rpc import get_notification_transport

    opts = conf.server_groups
    url = (
        opts.notification_transport_url
        or conf.oslo_messaging_notifications.transport_url
        or conf.transport_url
    )
    transport = get_notification_transport(url)
    start_nova_listener(
        router,
        transport,
        topic=opts.notification_topic,
        exchange=opts.notification_exchange,
        pool=opts.notification_pool,
    )
    LOG.info(
        "listening to Nova versioned notifications on %s/%s (pool %s)",
        opts.notification_exchange,
        opts.notification_topic,
        opts.notification_pool,
    )
