"""The ``nova`` reporter: ``os-resetState`` to ``error`` on a fault, as Doctor's
inspector does, so VNF managers see an ordinary Nova state change (and, through
Aodh, an alarm). Optionally back to ``active`` on recovery."""

from __future__ import annotations

from typing import Any, Dict

from ...protocol.events import EventKind
from . import HttpReporter, http_error


class NovaReporter(HttpReporter):
    name = "nova"
    service_type = "compute"
    service_label = "Nova"

    def __init__(self, session: Any, *, reset_on_recovery: bool = False, **kwargs: Any) -> None:
        super().__init__(session, **kwargs)
        self.reset_on_recovery = reset_on_recovery

    def report(self, event: Dict[str, Any]) -> None:
        if event.get("fault"):
            state = "error"
        elif event.get("kind") == EventKind.RECOVERED and self.reset_on_recovery:
            state = "active"
        else:
            return
        uuid = event["instance_uuid"]
        response = self.post(f"/servers/{uuid}/action", {"os-resetState": {"state": state}})
        if response.status_code != 202:
            raise http_error(response.status_code, f"os-resetState {state} for {uuid}")
