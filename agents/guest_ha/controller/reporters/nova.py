"""The ``nova`` reporter: ``os-resetState`` to ``error`` on a fault, as Doctor's
inspector does, so VNF managers see an ordinary Nova state change (and, through
Aodh, an alarm). Optionally back to ``active`` on recovery."""

from __future__ import annotations

from typing import Any, Dict, Optional

from . import ReporterError, http_error


class NovaReporter:
    name = "nova"

    def __init__(
        self,
        session: Any,
        *,
        reset_on_recovery: bool = False,
        region: Optional[str] = None,
        interface: str = "public",
    ) -> None:
        self.session = session
        self.reset_on_recovery = reset_on_recovery
        self.endpoint_filter = {
            "service_type": "compute",
            "interface": interface,
            "region_name": region,
        }

    def report(self, event: Dict[str, Any]) -> None:
        if event.get("fault"):
            state = "error"
        elif event.get("kind") == "recovered" and self.reset_on_recovery:
            state = "active"
        else:
            return
        uuid = event["instance_uuid"]
        try:
            response = self.session.post(
                f"/servers/{uuid}/action",
                json={"os-resetState": {"state": state}},
                endpoint_filter=self.endpoint_filter,
                raise_exc=False,
            )
        except Exception as exc:  # connection refused, auth failure, catalog missing...
            raise ReporterError(f"Nova unreachable: {exc}") from None
        if response.status_code != 202:
            raise http_error(response.status_code, f"os-resetState {state} for {uuid}")
