"""The ``vitrage`` reporter: a Doctor southbound event, ``POST /v1/event``
(service type ``rca``), for guest-ha's own Vitrage datasource
(``guest_ha.vitrage_datasource``) to turn into an alarm on the instance.

Body (flat; ``time`` with microseconds, UTC, no zone suffix)::

    {"time": "2026-11-24T07:04:02.852066",
     "type": "guest_ha.instance.fault",          # or guest_ha.instance.recovered
     "details": {"instance_id": UUID, "kind": "heartbeat_lost",
                 "reason": "...", "compute_host": "compute-1",
                 "status": "fault",                 # or "ok"
                 "severity": "critical", "idempotency_key": "...",
                 "source": "guest-ha"}}

``status`` is never ``up``/``down``: vitrage-api would re-type such events
for the stock ``doctor`` datasource, which attaches alarms to hosts only.

Posting is idempotent in effect: the datasource keeps one alarm per instance,
so a repeated fault refreshes it and a repeated recovery is dropped.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Optional

from ...protocol.events import EventKind
from ...vitrage_datasource import (
    DETAIL_INSTANCE,
    DETAIL_STATUS,
    FAULT_EVENT,
    RECOVERED_EVENT,
    STATUS_FAULT,
    STATUS_OK,
    TIME_FORMAT,
)
from . import HttpReporter, ReporterError, http_error

#: Severity of the alarm per fault kind (``datasources_values/guest_ha.yaml``).
SEVERITY: Dict[str, str] = {
    EventKind.HEARTBEAT_LOST: "critical",
    EventKind.VM_CRASHED: "critical",
    EventKind.RESTART_TIMEOUT: "critical",
    EventKind.UNHEALTHY: "major",
}


def vitrage_time(value: Any) -> str:
    """``%Y-%m-%dT%H:%M:%S.%f`` in UTC from the event's ISO time (``...Z``);
    now, if the event has none or it cannot be read."""
    if isinstance(value, str) and value:
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
            return parsed.strftime(TIME_FORMAT)
    return datetime.now(timezone.utc).replace(tzinfo=None).strftime(TIME_FORMAT)


def build_event(event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``/v1/event`` body for a guest-ha event, or ``None`` if the event is
    neither a fault nor a recovery."""
    kind = event.get("kind")
    if event.get("fault"):
        event_type, status = FAULT_EVENT, STATUS_FAULT
        severity = SEVERITY.get(str(kind), "critical")
    elif kind == EventKind.RECOVERED:
        event_type, status, severity = RECOVERED_EVENT, STATUS_OK, "OK"
    else:
        return None
    detail = event.get("detail") or {}
    details: Dict[str, Any] = {
        DETAIL_INSTANCE: event["instance_uuid"],
        "kind": kind,
        DETAIL_STATUS: status,
        "severity": severity,
        "source": "guest-ha",
    }
    optional = {
        "reason": detail.get("reason"),
        "compute_host": event.get("compute_host"),
        "domain": event.get("domain"),
        "idempotency_key": event.get("idempotency_key"),
        "previous_fault": detail.get("previous_fault"),
    }
    details.update({k: v for k, v in optional.items() if v is not None})
    return {"time": vitrage_time(event.get("time")), "type": event_type, "details": details}


class VitrageReporter(HttpReporter):
    name = "vitrage"
    service_type = "rca"
    service_label = "Vitrage"

    def report(self, event: Dict[str, Any]) -> None:
        body = build_event(event)
        if body is None:
            return
        what = f"Vitrage event {body['type']} for {event['instance_uuid']}"
        response = self.post("/v1/event", body)
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 404 and "Failed to post event" in _text(response):
            # vitrage-api answers 404 "Failed to post event" when its RPC call
            # to vitrage-graph fails (graph down or restarting): transient.
            raise ReporterError(f"{what}: HTTP 404 (vitrage-graph not answering)", True)
        raise http_error(status, what)


def _text(response: Any) -> str:
    try:
        return str(response.text)[:500]
    except Exception:
        return ""
