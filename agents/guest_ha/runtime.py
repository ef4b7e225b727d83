"""Process-wide settings of the long-running agents."""

from __future__ import annotations

import gc
import logging

LOG = logging.getLogger("guest_ha.runtime")


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's view.

    oslo.messaging, kombu, keystoneauth and friends leave a few hundred thousand
    long-lived objects behind at import and start-up. Each full (generation 2)
    collection walks all of them and stops every thread for tens of
    milliseconds: that showed as the p99 of server group and fault latency.
    ``gc.freeze()`` parks them in a permanent generation, so later collections
    only look at objects made since. Objects in it are never freed, which is
    what start-up objects of a daemon are anyway.
    """
    gc.collect()
    gc.freeze()
    LOG.debug("%d start-up objects frozen out of the collector", gc.get_freeze_count())
