"""The ``log`` reporter: one log line per event, with the instance UUID."""

from __future__ import annotations

import logging
from typing import Any, Dict

LOG = logging.getLogger("guest_ha.controller.report")


class LogReporter:
    name = "log"

    def report(self, event: Dict[str, Any]) -> None:
        level = logging.WARNING if event.get("fault") else logging.INFO
        LOG.log(
            level,
            "[instance %s] %s on %s: %s",
            event.get("instance_uuid"),
            event.get("kind"),
            event.get("compute_host", "?"),
            event.get("detail", {}),
        )
