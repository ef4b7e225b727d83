"""The recovery policy (compute/recovery.py): sans-I/O, time passed in."""

from __future__ import annotations

from typing import List

import pytest

from guest_ha.compute.config import ConfigError, parse_config
from guest_ha.compute.libvirt_monitor import metadata_recovery, parse_optin_recovery
from guest_ha.compute.recovery import (
    RECOVERY_DONE,
    RECOVERY_GAVE_UP,
    RECOVERY_STARTED,
    Command,
    RecoveryPlanner,
    RecoveryPolicy,
    choose_action,
    parse_policy,
)

pytestmark = pytest.mark.unit

VM = "4f1c2a9e-7b4d-4e2a-9c1f-5d6e7f8a9b0c"


def planner(**policy) -> RecoveryPlanner:
    p = RecoveryPlanner()
    p.set_policy(VM, RecoveryPolicy(enabled=True, **policy))
    return p


def ops(cmds: List[Command]) -> List[str]:
    return [c.kind if c.op == "event" else c.op for c in cmds]


def fault(p: RecoveryPlanner, now: float, kind: str = "heartbeat_lost", hint=None, busy=""):
    return p.on_event(VM, kind, now, hint=hint, busy=busy, reason="no answer")


def test_off_by_default_never_acts() -> None:
    p = RecoveryPlanner()
    p.set_policy(VM, RecoveryPolicy())
    assert fault(p, 0.0) == []
    assert p.on_timer(VM, 10.0, busy="") == []
    assert p.describe(VM, 0.0) is None


def test_fault_then_delay_then_one_action_then_registration() -> None:
    p = planner(delay_s=2.0)
    cmds = fault(p, 10.0)
    assert ops(cmds) == ["schedule"] and cmds[0].when == 12.0
    assert p.on_timer(VM, 11.0, busy="") == []  # not due yet
    cmds = p.on_timer(VM, 12.0, busy="")
    assert ops(cmds) == [RECOVERY_STARTED, "act"]
    assert cmds[1].action == "reset"
    assert cmds[0].detail["fault"] == "heartbeat_lost" and cmds[0].detail["attempt"] == 1
    # Never twice for one fault: more fault events while acting change nothing.
    assert fault(p, 12.5) == [] and fault(p, 12.6, "unhealthy") == []
    cmds = p.on_action_done(VM, True, "reset", 13.0)
    assert ops(cmds) == ["expect_registration"]
    cmds = p.on_event(VM, "registered", 20.0, hint=None, busy="")
    assert ops(cmds) == [RECOVERY_DONE]
    assert cmds[0].detail["outcome"] == "registered" and cmds[0].detail["seconds"] == 8.0
    assert p.describe(VM, 20.0)["actions_in_window"] == 1


def test_no_action_during_a_lifecycle_operation() -> None:
    p = planner()
    assert fault(p, 0.0, busy="shutdown") == []
    # A pending action is cancelled when an operation starts before it is due.
    p = planner(delay_s=5.0)
    assert ops(fault(p, 0.0)) == ["schedule"]
    assert p.on_timer(VM, 5.0, busy="stopped (shutdown)") == []
    assert p.describe(VM, 5.0)["state"] == "idle"


def test_window_limit_gives_up_once_and_recovery_resets_it() -> None:
    p = planner(max_actions=2, window_s=100.0)
    # First fault: acted on.
    fault(p, 0.0)
    assert ops(p.on_timer(VM, 0.0, busy="")) == [RECOVERY_STARTED, "act"]
    p.on_action_done(VM, True, "reset", 1.0)
    # The guest never registers: restart_timeout is a fault of its own, acted on too.
    assert ops(fault(p, 30.0, "restart_timeout")) == ["schedule"]
    assert ops(p.on_timer(VM, 30.0, busy="")) == [RECOVERY_STARTED, "act"]
    p.on_action_done(VM, True, "reset", 31.0)
    # Third fault within the window: the agent gives up, and says so once.
    cmds = fault(p, 60.0, "restart_timeout")
    assert ops(cmds) == [RECOVERY_GAVE_UP]
    assert "2 actions within 100 s" in cmds[0].detail["why_gave_up"]
    assert fault(p, 61.0) == []
    # Recovered (someone fixed it): a new fault inside the window gives up again...
    p.on_event(VM, "recovered", 62.0, hint=None, busy="")
    assert ops(fault(p, 63.0)) == [RECOVERY_GAVE_UP]
    # ...and once the window has slid past the actions, the agent acts again.
    p.on_event(VM, "recovered", 64.0, hint=None, busy="")
    assert ops(fault(p, 200.0)) == ["schedule"]


def test_guest_hint_only_among_allowed_actions() -> None:
    allowed = RecoveryPolicy(enabled=True, actions=("reset", "stop"), honour_hint=True)
    assert choose_action(allowed, "stop") == ("stop", "guest hint 'stop'")
    assert choose_action(allowed, "reboot")[0] == "reset"  # not allowed: default
    ignored = RecoveryPolicy(enabled=True, actions=("reset", "stop"), honour_hint=False)
    assert choose_action(ignored, "stop") == ("reset", "policy default")
    p = planner(actions=("reset", "stop"), honour_hint=True)
    fault(p, 0.0, hint="stop")
    cmds = p.on_timer(VM, 0.0, busy="")
    assert cmds[1].action == "stop"
    done = p.on_action_done(VM, True, "stopped", 1.0)
    assert ops(done) == [RECOVERY_DONE] and done[0].detail["outcome"] == "stopped"


def test_hint_log_means_no_action() -> None:
    p = planner(actions=("reset", "none"), honour_hint=True)
    assert fault(p, 0.0, hint="log") == []


def test_failed_action_gives_up() -> None:
    p = planner()
    fault(p, 0.0)
    p.on_timer(VM, 0.0, busy="")
    cmds = p.on_action_done(VM, False, "domain is paused", 1.0)
    assert ops(cmds) == [RECOVERY_GAVE_UP]
    assert "domain is paused" in cmds[0].detail["why_gave_up"]


def test_policy_parsing_names_the_wrong_key() -> None:
    policy = parse_policy({"enabled": True, "actions": "reset, stop", "max_actions": 5}, "r")
    assert policy.actions == ("reset", "stop") and policy.max_actions == 5
    for raw, text in (
        ({"actions": ["reboot", "kaboom"]}, "unknown kaboom"),
        ({"actions": []}, "at least one"),
        ({"max_actions": 0}, "max_actions"),
        ({"max_actions": 1.5}, "whole number"),
        ({"delay_s": -1}, "delay_s"),
        ({"window": 5}, "r.window: unknown key"),
        ({"honour_hint": "yes"}, "true or false"),
    ):
        with pytest.raises(ValueError, match=text):
            parse_policy(raw, "r")
    with pytest.raises(ConfigError, match=r"recovery\.actions: must be a list"):
        parse_config({"recovery": {"actions": 7}})
    # A domain may not switch on Nova mode for itself.
    with pytest.raises(ValueError, match="in_nova_mode: unknown key"):
        RecoveryPolicy().with_overrides({"in_nova_mode": True}, "in_nova_mode")


def test_domain_settings_from_metadata_and_optin_file() -> None:
    xml = """<domain type='qemu'><name>a</name><metadata>
      <guest_ha:config xmlns:guest_ha="https://opendev.org/guest-ha/metadata/1">
        <guest_ha:heartbeat/>
        <guest_ha:recovery enabled='true' actions='reset,stop' honour_hint='true' delay_s='1.5'
                           max_actions='2'/>
      </guest_ha:config></metadata></domain>"""
    settings = metadata_recovery(xml)
    assert settings == {
        "enabled": True,
        "actions": "reset,stop",
        "honour_hint": True,
        "delay_s": 1.5,
        "max_actions": 2,
    }
    policy = RecoveryPolicy().with_overrides(settings, "a")
    assert policy.enabled and policy.actions == ("reset", "stop") and policy.delay_s == 1.5
    assert metadata_recovery("<domain><name>b</name></domain>") is None
    raw = {"domains": [{"name": "a", "recovery": {"enabled": True}}, {"uuid": VM.upper()}]}
    assert parse_optin_recovery(raw) == {"name:a": {"enabled": True}}
    with pytest.raises(ValueError, match=r"domains\[0\]\.recovery: actions: unknown x"):
        parse_optin_recovery({"domains": [{"name": "a", "recovery": {"actions": ["x"]}}]})


def test_a_registration_ends_the_recovery_even_when_its_event_was_held_back() -> None:
    """The per-VM event limit may hold a guest's ``registered`` back; the controller
    looks at the heartbeat state after each burst of channel activity instead."""
    from types import SimpleNamespace

    from guest_ha.compute.recovery import RecoveryController

    emitted: List[tuple] = []
    hb = SimpleNamespace(state="suspended", MONITORING="monitoring", corrective_action=None)
    vm = SimpleNamespace(spec=SimpleNamespace(uuid=VM), channel=SimpleNamespace(heartbeat_view=hb))
    engine = SimpleNamespace(
        clock=lambda: 50.0,
        emit_event=lambda uuid, kind, detail: emitted.append((kind, detail)),
    )
    ctl = RecoveryController(engine, RecoveryPolicy(enabled=True), executor=lambda *a: None)
    ctl.set_policy(VM, None)
    p = ctl.planner
    fault(p, 0.0)
    p.on_timer(VM, 0.0, busy="")
    p.on_action_done(VM, True, "reset", 1.0)
    ctl.check_registration(vm)  # still booting
    assert emitted == [] and p.describe(VM, 2.0)["state"] == "awaiting"
    hb.state = "monitoring"  # registered; the event itself never reached us
    ctl.check_registration(vm)
    assert [k for k, _ in emitted] == [RECOVERY_DONE]
    assert emitted[0][1]["seconds"] == 50.0
    assert p.describe(VM, 50.0)["state"] == "idle"
