"""Hostile guests must not make the compute agent do unbounded work outside their
own channel: nacks, log lines, events and reconnects stay within the limits of
docs/protocol.md §7/§8, and the other VMs see no false fault.

The real compute engine process runs against the VM simulator (QEMU's socket
side, with guests built on the protocol core). The JSON-lines event sink stands
in for the spool: it receives exactly the events the spool would, in the same
order (``MultiSink``), without needing a controller and RabbitMQ."""

from __future__ import annotations

import os
import time
from typing import Dict, List

import pytest

from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until

pytestmark = pytest.mark.integration

KINDS = (
    "flood",
    "garbage",
    "oversized",
    "deep_nesting",
    "huge_numbers",
    "spoofed_identity",
    "reinit_churn",
    "never_reads",
    "slowloris",
    "sg_not_enabled",
    "accept_close",
)
DURATION_S = 8.0


def _lines_about(log: str, uuid: str) -> List[str]:
    return [line for line in log.splitlines() if uuid in line]


def test_every_hostile_kind_is_bounded_next_to_good_guests(
    sim: VmSimulator, short_tmp: str
) -> None:
    good = [sim.add_vm(interval_ms=100) for _ in range(20)]
    bad = {kind: sim.add_vm(interval_ms=100) for kind in KINDS}
    with EngineProcess(os.path.join(short_tmp, "engine"), [*good, *bad.values()]) as engine:
        for vm in [*good, *bad.values()]:
            engine.wait_event("registered", vm.uuid, timeout=20)
        start_events = len(engine.events())
        log_start = len(engine.log_text())
        before = {u: s["challenges_answered"] for u, s in sim.stats().items()}
        connects_before = sim.stats(bad["accept_close"].uuid)[bad["accept_close"].uuid]
        for kind, vm in bad.items():
            sim.set_hostile(vm.uuid, kind)
        # accept_close needs the channel to drop once: QEMU serves one client.
        sim.kill_connection(bad["accept_close"].uuid)
        started = time.monotonic()
        time.sleep(DURATION_S)
        elapsed = time.monotonic() - started
        after = sim.stats()
        status: Dict[str, dict] = {v["instance_uuid"]: v for v in engine.status()["vms"]}
        events = engine.events()[start_events:]
        log = engine.log_text()[log_start:]

        bad_uuids = {vm.uuid for vm in bad.values()}
        assert [e for e in engine.faults() if e["instance_uuid"] not in bad_uuids] == []
        for vm in good:  # every good VM kept answering at its 100 ms interval
            assert after[vm.uuid]["challenges_answered"] - before[vm.uuid] >= 40

        for kind, vm in bad.items():
            mine = [e for e in events if e["instance_uuid"] == vm.uuid]
            kinds = [e["kind"] for e in mine]
            # Guest-triggered events: burst 4 + 5/min, one "misbehaving" per
            # episode; never_reads may add its own (real) fault and recovery.
            assert len(mine) <= 4 + 1 + 1 + 2, (kind, kinds)
            counters = status[vm.uuid]["counters"]
            # Every nack counts and stays within 5/s, burst 10 (§7).
            assert counters["nacks_sent"] <= 5 * (elapsed + 2) + 10, (kind, counters)
            assert sum(status[vm.uuid]["nacks_by_code"].values()) == counters["nacks_sent"]
            # Log lines about this guest: 1/s, burst 5, at every level (§8).
            assert len(_lines_about(log, vm.uuid)) <= elapsed + 2 + 5, (
                kind,
                _lines_about(log, vm.uuid)[-10:],
            )
            if kind not in ("slowloris", "never_reads", "accept_close"):
                assert "misbehaving" in kinds, (kind, kinds)
                assert status[vm.uuid]["misbehaving"], kind

        churn = status[bad["reinit_churn"].uuid]["counters"]
        assert churn["events_suppressed"] > 20, churn
        sg = status[bad["sg_not_enabled"].uuid]
        # not_enabled (the valid queries) and rate_limited (the rest) share one limit.
        assert set(sg["nacks_by_code"]) <= {"not_enabled", "rate_limited"}, sg
        assert sg["counters"]["nacks_sent"] > 0, sg
        assert sg["counters"]["nacks_suppressed"] > 0, sg
        # A socket that accepts and closes at once: the backoff grows (0.1, 0.2,
        # 0.4 ... 5 s) instead of resetting on every connect (was ~9/s).
        reconnects = (
            after[bad["accept_close"].uuid]["host_connects"] - connects_before["host_connects"]
        )
        assert 2 <= reconnects <= 8, reconnects
        assert engine.proc is not None and engine.proc.poll() is None


def test_backoff_resets_after_a_stable_connection(sim: VmSimulator, short_tmp: str) -> None:
    """After the hostile channel behaves again and stays up, reconnects are quick."""
    vm = sim.add_vm(interval_ms=100)
    extra = {"reconnect": {"initial_s": 0.1, "max_s": 5.0, "stable_s": 1.0}}
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm], extra=extra) as engine:
        engine.wait_event("registered", vm.uuid)
        sim.set_hostile(vm.uuid, "accept_close")
        sim.kill_connection(vm.uuid)
        time.sleep(3.5)  # backoff grows past 1 s
        sim.set_hostile(vm.uuid, None)
        connects = sim.stats(vm.uuid)[vm.uuid]["host_connects"]
        wait_until(lambda: sim.stats(vm.uuid)[vm.uuid]["host_connects"] > connects, 10)
        time.sleep(1.5)  # stable for stable_s
        connects = sim.stats(vm.uuid)[vm.uuid]["host_connects"]
        sim.kill_connection(vm.uuid)
        dropped_at = time.monotonic()
        wait_until(lambda: sim.stats(vm.uuid)[vm.uuid]["host_connects"] > connects, 5)
        assert time.monotonic() - dropped_at < 1.0
        wait_until(lambda: engine.status()["vms"][0]["registered"], 5)
        assert engine.faults() == []
