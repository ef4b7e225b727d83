"""The controller service: RPC endpoint, event store, dispatcher, status/metrics."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

from ..messaging.payloads import REQUIRED_EVENT_KEYS, SgRelayPdu, VmState
from ..runtime import RateLimitedLog
from .dispatcher import Dispatcher
from .origin import OriginCheck
from .reporters import Reporter
from .reporters.log import LogReporter
from .store import EventStore
from .store_sql import is_url

LOG = logging.getLogger("guest_ha.controller")


class ComputeRegistry:
    """What the controller knows about each compute agent that talked to it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hosts: Dict[str, Dict[str, Any]] = {}

    def seen(self, host: str, **facts: Any) -> None:
        with self.lock:
            entry = self.hosts.setdefault(host, {"events": 0})
            entry["last_seen"] = time.time()
            entry.update(facts)

    def snapshot(self) -> Dict[str, Dict[str, Any]]:
        with self.lock:
            return {h: dict(v) for h, v in self.hosts.items()}


class ControllerEndpoint:
    """RPC methods compute agents call (oslo.messaging endpoint)."""

    def __init__(self, service: "ControllerService") -> None:
        self.service = service

    def report_event(self, ctxt: Dict[str, Any], event: Dict[str, Any]) -> Dict[str, Any]:
        """Persist one event, then acknowledge it. Idempotent on its key."""
        missing = [k for k in REQUIRED_EVENT_KEYS if not isinstance(event.get(k), str)]
        if missing:
            # A permanent refusal: the compute agent logs it; retrying cannot help.
            return {
                "accepted": False,
                "key": event.get("idempotency_key"),
                "error": f"event lacks {', '.join(missing)}",
            }
        accepted, rejected, _ = self.service.origin.screen(ctxt, [event])
        if rejected:
            return {"accepted": True, "key": event["idempotency_key"], "rejected": rejected[0][1]}
        if not accepted:
            raise RuntimeError("report origin cannot be checked now; offer it again")
        sender = self.service.origin.sender_host(ctxt) if self.service.origin.enabled else None
        host = sender or str(event.get("compute_host") or (ctxt or {}).get("host") or "unknown")
        fresh = self.service.store.accept(event, self.service.reporter_names, host)
        self.service.computes.seen(host)
        with self.service.computes.lock:
            self.service.computes.hosts[host]["events"] += 1
        if fresh:
            LOG.info(
                "[instance %s] %s from %s accepted (%s)",
                event["instance_uuid"],
                event["kind"],
                host,
                event["idempotency_key"],
            )
            self.service.dispatcher.wake()
            self.service.heartbeat_event(event)
        return {"accepted": True, "key": event["idempotency_key"], "duplicate": not fresh}

    def report_events(self, ctxt: Dict[str, Any], events: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Persist a batch of events in one transaction, then acknowledge them."""
        good = [
            e
            for e in events
            if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in REQUIRED_EVENT_KEYS)
        ]
        if len(good) != len(events):
            LOG.error("refused %d malformed event(s) in a batch", len(events) - len(good))
        # Report origin check (origin.py): rejected ones are acknowledged, never
        # stored; undecided ones are not acknowledged and stay in the agent's spool.
        checked, rejected, _undecided = self.service.origin.screen(ctxt, good)
        by_host: Dict[str, List[Dict[str, Any]]] = {}
        sender = self.service.origin.sender_host(ctxt) if self.service.origin.enabled else None
        for event in checked:
            host = sender or str(event.get("compute_host") or (ctxt or {}).get("host") or "unknown")
            by_host.setdefault(host, []).append(event)
        for host, batch in by_host.items():
            fresh = self.service.store.accept_many(batch, self.service.reporter_names, host)
            self.service.computes.seen(host)
            with self.service.computes.lock:
                self.service.computes.hosts[host]["events"] += len(batch)
            for event, new in zip(batch, fresh):
                if new:
                    LOG.info(
                        "[instance %s] %s from %s accepted (%s)",
                        event["instance_uuid"],
                        event["kind"],
                        host,
                        event["idempotency_key"],
                    )
                    self.service.heartbeat_event(event)
        self.service.dispatcher.wake()
        # Malformed events are acknowledged as refused: retrying cannot fix them.
        refused = [
            e.get("idempotency_key")
            for e in events
            if isinstance(e, dict) and e not in good and isinstance(e.get("idempotency_key"), str)
        ]
        rejected_keys = [e["idempotency_key"] for e, _ in rejected]
        return {
            "accepted": True,
            "keys": [e["idempotency_key"] for e in checked] + rejected_keys + refused,
            "refused": refused,
            "rejected": rejected_keys,
        }

    def compute_status(
        self, ctxt: Dict[str, Any], host: str, spool_depth: int, vms: int
    ) -> Dict[str, Any]:
        """Periodic report from a compute agent (spool depth for metrics)."""
        self.service.computes.seen(host, spool_depth=int(spool_depth), vms=int(vms))
        return {"ok": True}

    # -- server group messaging (cast by compute agents; see server_groups/)
    def _sg_router(self, what: str) -> Any:
        router = self.service.server_groups
        if router is None:
            self.service.sg_disabled_log(what)
        return router

    def sg_relay(
        self,
        ctxt: Dict[str, Any],
        host: str,
        instance_uuid: str,
        msg_type: str,
        fields: Dict[str, Any],
        group: Optional[str] = None,
    ) -> None:
        """Route one server-group PDU of ``instance_uuid``, relayed by ``host``'s agent."""
        if not self.service.origin.host_ok(ctxt, host, "sg_relay"):
            return
        router = self._sg_router("sg_relay")
        if router is not None:
            router.relay(host, instance_uuid, msg_type, fields, group)

    def sg_relay_batch(self, ctxt: Dict[str, Any], host: str, items: List[SgRelayPdu]) -> None:
        """Route several server-group PDUs relayed by ``host``'s agent in one message."""
        if not self.service.origin.host_ok(ctxt, host, "sg_relay_batch"):
            return
        router = self._sg_router("sg_relay_batch")
        if router is not None and isinstance(items, list):
            router.relay_batch(host, items)

    def vm_states(
        self, ctxt: Dict[str, Any], host: str, vms: List[VmState], full: bool = True
    ) -> Dict[str, Any]:
        """``host``'s VMs ``[{uuid, name, state, power_state, task_state?, group?}]``
        (standalone membership and member state); ``full``: the complete list."""
        if not self.service.origin.host_ok(ctxt, host, "vm_states"):
            return {"ok": False, "error": "not sent by that host's broker user"}
        self.service.origin.observe_vm_states(host, vms, full)
        router = self._sg_router("vm_states")
        if router is not None:
            router.vm_states(host, vms, full)
        return {"ok": True}

    def sg_sync(self, ctxt: Dict[str, Any], origin: str, ops: List[Dict[str, Any]]) -> None:
        """Membership ops another controller applied (fanout), applied here silently."""
        router = self.service.server_groups
        if router is not None and origin != router.controller_id and isinstance(ops, list):
            router.apply([op for op in ops if isinstance(op, dict)], emit=False)


class ControllerService:
    def __init__(
        self,
        *,
        database: str,
        reporters: Dict[str, Reporter],
        host: str,
        workers: int = 4,
        lease_s: float = 60.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        server_groups: Any = None,
        origin: Optional[OriginCheck] = None,
    ) -> None:
        self.host = host
        self.store: Any
        if is_url(database):  # a shared SQL server (controllers on separate hosts)
            from .store_sql import SqlEventStore

            self.store = SqlEventStore(database)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
            self.store = EventStore(database)
        self.reporters = reporters
        self.reporter_names = sorted(reporters)
        self.dispatcher = Dispatcher(
            self.store,
            reporters,
            owner=f"{host}:{os.getpid()}",
            workers=workers,
            lease_s=lease_s,
            backoff_initial_s=retry_initial_s,
            backoff_max_s=retry_max_s,
        )
        self.computes = ComputeRegistry()
        self.endpoint = ControllerEndpoint(self)
        self.started_at = time.time()
        self._http: Optional[ThreadingHTTPServer] = None
        #: ``server_groups.ServerGroupRouter`` when server group messaging is enabled.
        self.server_groups = server_groups
        self._sg_disabled_log = RateLimitedLog(LOG, 60.0)
        #: Who may report which instance (origin.py); off unless configured.
        self.origin = origin or OriginCheck("off", "")

    def heartbeat_event(self, event: Dict[str, Any]) -> None:
        """Tell a VM's server group peers that its heartbeat health changed."""
        if self.server_groups is None:
            return
        try:
            self.server_groups.heartbeat_event(event["instance_uuid"], event["kind"])
        except Exception:  # peer notifications are best effort; the event is safe
            LOG.exception("[instance %s] peer notification failed", event["instance_uuid"])

    def sg_disabled_log(self, what: str) -> None:
        self._sg_disabled_log(
            logging.WARNING, what, "%s received but [server_groups] is not enabled: dropped", what
        )

    def start(self) -> None:
        self.dispatcher.start()
        if self.server_groups is not None:
            self.server_groups.start()

    def stop(self) -> None:
        if self.server_groups is not None:
            self.server_groups.stop()
        self.dispatcher.stop()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def status(self) -> Dict[str, Any]:
        return {
            "host": self.host,
            "uptime_s": round(time.time() - self.started_at, 1),
            "reporters": self.dispatcher.snapshot(),
            "computes": self.computes.snapshot(),
            **self.store.stats(),
            "report_origin": {
                "mode": self.origin.mode,
                "rejected": dict(self.origin.rejected),
                "undecided": self.origin.undecided,
            },
            **(
                {"server_groups": self.server_groups.snapshot()}
                if self.server_groups is not None
                else {}
            ),
        }

    def active_faults(self) -> List[Dict[str, Any]]:
        """The faults still active (no recovery since), as the ``vitrage``
        reporter's ``/v1/event`` bodies: guest-ha's Vitrage datasource reads
        them in ``get_all`` to rebuild its alarms after a vitrage-graph restart."""
        from .reporters.vitrage import build_event

        events = (build_event(e) for e in self.store.active_faults())
        return [e for e in events if e is not None]

    def metrics(self) -> str:
        """Prometheus text exposition of the controller's counters."""
        status = self.status()
        reporters = sorted(status["reporters"].items())
        families = [
            (
                "guest_ha_faults_total",
                "counter",
                "Faults received, by kind.",
                "kind",
                sorted(status["faults_by_kind"].items()),
            ),
            (
                "guest_ha_reporter_sent_total",
                "counter",
                "Events delivered, by reporter.",
                "reporter",
                [(n, r["sent"]) for n, r in reporters],
            ),
            (
                "guest_ha_reporter_errors_total",
                "counter",
                "Failed delivery attempts, by reporter.",
                "reporter",
                [(n, r["errors"]) for n, r in reporters],
            ),
            (
                "guest_ha_reporter_latency_seconds_mean",
                "gauge",
                "Mean reporter call latency.",
                "reporter",
                [
                    (n, f"{r['mean_latency_ms'] / 1000:.6f}")
                    for n, r in reporters
                    if r["mean_latency_ms"] is not None
                ],
            ),
            (
                "guest_ha_deliveries",
                "gauge",
                "Deliveries by state.",
                "state",
                sorted(status["deliveries"].items()),
            ),
            (
                "guest_ha_reports_rejected_total",
                "counter",
                "Reports refused by the report origin check, by reason.",
                "reason",
                sorted(status["report_origin"]["rejected"].items()),
            ),
            (
                "guest_ha_compute_spool_depth",
                "gauge",
                "Events waiting in a compute agent's spool.",
                "host",
                [
                    (h, f["spool_depth"])
                    for h, f in sorted(status["computes"].items())
                    if "spool_depth" in f
                ],
            ),
        ]
        lines = []
        for metric, kind, text, label, samples in families:
            lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
            lines += [f'{metric}{{{label}="{key}"}} {value}' for key, value in samples]
        return "\n".join(lines) + "\n"

    def serve_http(self, listen: str) -> None:
        """Serve /status (JSON), /metrics (Prometheus) and /v1/active-faults
        (JSON: the Vitrage events of the faults still active, see
        ``active_faults``) on ``host:port``."""
        host, _, port = listen.rpartition(":")
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/status":
                    body = json.dumps(service.status(), default=str).encode()
                    ctype = "application/json"
                elif self.path == "/v1/active-faults":
                    body = json.dumps(service.active_faults()).encode()
                    ctype = "application/json"
                elif self.path == "/metrics":
                    body = service.metrics().encode()
                    ctype = "text/plain; version=0.0.4"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
        threading.Thread(target=self._http.serve_forever, name="status-http", daemon=True).start()


def build_reporters(conf: Any, transport_url: Optional[str]) -> Dict[str, Reporter]:
    """Instantiate the reporters named in ``[controller] reporters``."""
    reporters: Dict[str, Reporter] = {}
    for name in conf.controller.reporters:
        if name == "log":
            reporters[name] = LogReporter()
        elif name == "notification":
            from ..messaging.rpc import notifier
            from .reporters.notification import NotificationReporter

            url = conf.oslo_messaging_notifications.transport_url or transport_url
            reporters[name] = NotificationReporter(
                notifier(
                    url,
                    f"guest-ha-controller.{conf.guest_ha.host}",
                    conf.controller.notification_topics,
                )
            )
        elif name in ("nova", "vitrage", "masakari"):
            reporters[name] = _http_reporter(name, conf)
        else:
            raise ValueError(f"reporter {name!r} is not available in this release")
    return reporters


def _http_reporter(name: str, conf: Any) -> Reporter:
    """An OpenStack reporter, authenticated from its ``[reporter_<name>]`` group."""
    from ..cloud_session import session_from_clouds_yaml
    from .reporters.masakari import MasakariReporter
    from .reporters.nova import NovaReporter
    from .reporters.vitrage import VitrageReporter

    opts = getattr(conf, f"reporter_{name}")
    kwargs: Dict[str, Any] = {
        "region": opts.region,
        "interface": opts.interface,
        "timeout": opts.timeout_s,
        "endpoint_override": opts.endpoint_override,
    }
    if name == "nova":
        kwargs["reset_on_recovery"] = opts.reset_on_recovery
    cls = {"nova": NovaReporter, "vitrage": VitrageReporter, "masakari": MasakariReporter}[name]
    return cls(session_from_clouds_yaml(opts.clouds_yaml, opts.cloud), **kwargs)
