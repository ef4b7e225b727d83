"""Every option of the controller, for ``oslo-config-generator --namespace guest_ha.controller``."""

from __future__ import annotations

from typing import List, Optional, Tuple

from ..messaging import options as messaging_options
from . import options


def list_opts() -> List[Tuple[Optional[str], list]]:
    return messaging_options.list_controller_opts() + options.list_opts()
