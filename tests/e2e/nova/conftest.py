"""Fixtures of the Nova tests: see ``nova_support``."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nova_support import nova_world, telemetry

__all__ = ["nova_world", "telemetry"]
