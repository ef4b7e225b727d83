"""The ``masakari`` reporter: a ``VM`` notification, ``POST /v1/notifications``
(service type ``instance-ha``), which masakari-engine acts on by recovering the
instance (stop + start, for servers with metadata ``HA_Enabled=True``).

Body, the same shape masakari's own introspective instance monitor sends::

    {"notification": {"type": "VM", "hostname": COMPUTE_HOST,
                      "generated_time": "2026-11-24T07:04:02.852066",
                      "payload": {"event": "QEMU_GUEST_AGENT_ERROR",
                                  "instance_uuid": UUID,
                                  "vir_domain_event": "STOPPED_FAILED"}}}

masakari-engine recovers a VM notification whose ``event`` is
``QEMU_GUEST_AGENT_ERROR`` or whose ``vir_domain_event`` is
``STOPPED_FAILED`` (other lifecycle events are ignored), so every guest-ha
fault (heartbeat lost, unhealthy, restart timeout, crash) is sent that way.

Only faults are sent: Masakari has no recovery notification.  Answers:

- 202: stored;
- 409: a duplicate of a notification already stored (masakari rejects the
  same host/type/payload again within its detection window): success, which
  also makes a repeated delivery harmless;
- 400: e.g. the compute host is not in any failover segment: permanent;
- 5xx, 408, 429, connection errors: retried.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from . import HttpReporter, ReporterError, http_error
from .vitrage import vitrage_time

EVENT = "QEMU_GUEST_AGENT_ERROR"
VIR_DOMAIN_EVENT = "STOPPED_FAILED"


def build_notification(event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The notification body for a fault, or ``None`` for anything else."""
    if not event.get("fault"):
        return None
    host = event.get("compute_host")
    if not host:
        raise ReporterError("event has no compute_host: Masakari needs the host", False)
    return {
        "notification": {
            "type": "VM",
            "hostname": host,
            "generated_time": vitrage_time(event.get("time")),
            "payload": {
                "event": EVENT,
                "instance_uuid": event["instance_uuid"],
                "vir_domain_event": VIR_DOMAIN_EVENT,
            },
        }
    }


class MasakariReporter(HttpReporter):
    name = "masakari"
    service_type = "instance-ha"
    service_label = "Masakari"

    def report(self, event: Dict[str, Any]) -> None:
        body = build_notification(event)
        if body is None:
            return
        what = f"Masakari VM notification for {event['instance_uuid']}"
        response = self.post("/notifications", body)
        status = response.status_code
        if status in (200, 201, 202, 409):
            return
        raise http_error(status, what)
