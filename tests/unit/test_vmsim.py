"""The VM simulator's own loop: it must sleep when nothing happens, since every
benchmark and simulated-channel test shares the CPU with it."""

from __future__ import annotations

import os
import time

import pytest

from guest_ha.protocol import GUEST_TO_HOST, SERVER_GROUP, make
from guest_ha_dev.sim import VmSimulator

pytestmark = pytest.mark.unit


def test_loop_sleeps_after_commands(short_tmp: str) -> None:
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        vm = sim.add_vm(interval_ms=1000)
        for _ in range(20):
            sim.stats(vm.uuid)  # a round trip through the command queue
        msg = make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data={"i": 1})
        for _ in range(20):
            sim.send_message(vm.uuid, msg, wait=False)
        sim.stats(vm.uuid)
        before = sim.loop_iterations
        time.sleep(0.5)
        # Asleep, the loop wakes on its 50 ms timeout: about 10 times in 0.5 s.
        # A wake-up pipe left unread made it spin (hundreds of thousands).
        assert sim.loop_iterations - before < 100


def test_fire_and_forget_errors_are_recorded(short_tmp: str) -> None:
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        sim.inject("no-such-vm", b"x", wait=False)
        sim.stats()  # commands run in order: the inject has run by now
        assert any("no-such-vm" in e for e in sim.loop_errors)
