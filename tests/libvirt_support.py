"""The real libvirtd for tests: started if needed, or the test is skipped."""

from __future__ import annotations

import pytest

from guest_ha_dev.sim import testguest

URI = testguest.URI


def ensure_libvirtd(timeout: float = 60.0) -> str:
    try:
        return testguest.ensure_libvirtd(timeout)
    except RuntimeError as exc:
        if "answer" in str(exc):
            raise
        pytest.skip(str(exc))
