from __future__ import annotations

import os
from typing import Iterator

import pytest

from guest_ha_dev.sim import VmSimulator


@pytest.fixture
def sim(short_tmp: str) -> Iterator[VmSimulator]:
    simulator = VmSimulator(os.path.join(short_tmp, "vms"), seed=7).start()
    try:
        yield simulator
    finally:
        simulator.stop()
        assert simulator.loop_errors == []
