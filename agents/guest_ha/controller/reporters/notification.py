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
        event_type = f"guest_ha.instance.{event['kind']}"
        try:
            if event.get("fault"):
                self.notifier.error({}, event_type, event)
            else:
                self.notifier.info({}, event_type, event)
        except Exception as exc:  # oslo.messaging raises transport-specific errors
            raise ReporterError(f"notification {event_type} not sent: {exc}") from None
