"""The server-group router: who gets which PDU, peer notifications, sg_sync."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ...messaging.payloads import SgDelivery, VmState
from ...protocol.envelope import SERVER_GROUP, Envelope
from ...protocol.errors import InvalidField, UnknownMessageType
from ...protocol.messages import GUEST_TO_HOST, validate
from ...runtime import RateLimitedLog
from .membership import (
    GUEST_HEALTH_OF_EVENT,
    LIBVIRT_STATES,
    STATUS_FIELDS,
    Membership,
    canonical_uuid,
    nova_object_data,
)
from .outbox import Deliveries, Outbox

LOG = logging.getLogger("guest_ha.controller.sg")


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
        self.outbox = Outbox(cast, self.count, self.rlog, cast_interval_s)

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
        self.outbox.start()

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
        self.outbox.stop()
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

    #: One sg_deliver carries at most this many PDUs (see ``Outbox``).
    MAX_CAST_ITEMS = Outbox.MAX_CAST_ITEMS

    def _send(self, deliveries: Deliveries) -> None:
        pending = getattr(self._batch, "pending", None)
        if pending is not None:  # inside relay_batch: flushed together at its end
            for host, items in deliveries.items():
                pending.setdefault(host, []).extend(items)
            return
        self.outbox.send(deliveries)

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
