"""The ``notification`` reporter: an oslo.messaging notification per event
(``guest_ha.instance.<kind>``), for Ceilometer/Aodh and anything else listening."""

from __future__ import annotations

from typing import Any, Dict

from . import ReporterError


class NotificationReporter:
    name = "notification"

    def __init__(self, notifier: Any) -> None:
        self.notifier = notifier

    def report(self, event: Dict[str, Any]) -> None:
        from ...messaging.rpc import publish

        event_type = f"guest_ha.instance.{event['kind']}"
        priority = "error" if event.get("fault") else "info"
        try:
            # publish() raises when the send failed (Notifier itself only logs).
            publish(self.notifier, event_type, event, priority)
        except Exception as exc:  # oslo.messaging raises transport-specific errors
            raise ReporterError(f"notification {event_type} not sent: {exc}") from None
