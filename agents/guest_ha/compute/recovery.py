"""Recovery without OpenStack: the agent acts on a faulty guest when the operator allows it.

Off by default. An operator enables it per host (``recovery:`` in compute.yaml)
or per domain (``<recovery/>`` in the domain's guest-ha metadata, or
``recovery:`` in the standalone opt-in file), and says which actions are
allowed, whether the guest's ``corrective_action`` hint may choose among them,
how long to wait after the fault, and how many actions a window allows.

:class:`RecoveryPlanner` is the policy, sans-I/O (time is passed in): it is fed
the VM's events and answers with :class:`Command` items (act, schedule a timer,
tell the controller, expect a registration). :class:`RecoveryController` wires
it to the engine's loop and to the hypervisor's action executor (libvirt, in
its own thread). See docs/compute-agent.md, "Recovery".
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from ..protocol.heartbeat import (
    HEARTBEAT_LOST,
    RECOVERED,
    REGISTERED,
    RESTART_TIMEOUT,
    UNHEALTHY_FAULT,
)
from ..protocol.transitions import HostState

LOG = logging.getLogger("guest_ha.compute.recovery")

ACTIONS = ("none", "reset", "reboot", "destroy-and-start", "stop")
"""``reset``: hard reset (QEMU system_reset). ``reboot``: the hypervisor's reboot
request to the guest (ACPI). ``destroy-and-start``: power off hard, then boot.
``stop``: power off hard and leave it off. ``none``: log only."""

HINT_ACTIONS = {"reboot": "reboot", "stop": "stop", "log": "none"}
"""The guest's ``corrective_action`` hint (protocol ``init``) as an action."""

ACTED_ON = (HEARTBEAT_LOST, UNHEALTHY_FAULT, RESTART_TIMEOUT)
"""Faults that start a recovery. ``vm_crashed`` does not: the domain is not running."""

RECOVERY_STARTED = "recovery_started"
RECOVERY_DONE = "recovery_done"
RECOVERY_GAVE_UP = "recovery_gave_up"


@dataclass(frozen=True)
class RecoveryPolicy:
    """What the operator allows. The first of ``actions`` is the default action."""

    enabled: bool = False
    actions: Tuple[str, ...] = ("reset",)
    honour_hint: bool = False
    delay_s: float = 0.0
    max_actions: int = 3
    window_s: float = 3600.0
    action_timeout_s: float = 10.0
    """How long the hypervisor may take to carry an action out. A reset or reboot
    it cannot do in time (QEMU itself hung) becomes ``destroy-and-start`` when that
    is allowed; otherwise the agent gives up."""
    in_nova_mode: bool = False
    """Act in Nova mode too. Off: there, Masakari and the VNF manager own recovery."""

    def __post_init__(self) -> None:
        actions = tuple(self.actions)
        object.__setattr__(self, "actions", actions)
        if not actions:
            raise ValueError("actions: name at least one of " + ", ".join(ACTIONS))
        bad = [a for a in actions if a not in ACTIONS]
        if bad:
            raise ValueError(f"actions: unknown {', '.join(bad)} (known: {', '.join(ACTIONS)})")
        if self.delay_s < 0:
            raise ValueError("delay_s must not be negative")
        if self.max_actions < 1:
            raise ValueError("max_actions must be at least 1")
        if self.window_s <= 0 or self.action_timeout_s <= 0:
            raise ValueError("window_s and action_timeout_s must be positive")

    def with_overrides(self, raw: Mapping[str, Any], where: str) -> RecoveryPolicy:
        """This policy with a domain's own settings on top (``in_nova_mode`` stays the host's)."""
        return parse_policy(raw, where, base=self, per_domain=True)


def parse_policy(
    raw: Any, where: str, base: Optional[RecoveryPolicy] = None, per_domain: bool = False
) -> RecoveryPolicy:
    """A policy from YAML-like data; ValueError names the key that is wrong."""
    base = base or RecoveryPolicy()
    if raw is None:
        return base
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping")
    known = {f.name: f for f in dataclasses.fields(RecoveryPolicy)}
    if per_domain:
        known.pop("in_nova_mode")
    kwargs: Dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ValueError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        default = getattr(base, key)
        if key == "actions":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}.actions: must be a list of action names")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}.{key}: must be true or false")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}.{key}: must be a number, got {value!r}")
            if isinstance(default, int) and not float(value).is_integer():
                raise ValueError(f"{where}.{key}: must be a whole number, got {value!r}")
            value = type(default)(value)
        kwargs[key] = value
    try:
        return dataclasses.replace(base, **kwargs)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def choose_action(policy: RecoveryPolicy, hint: Optional[str]) -> Tuple[str, str]:
    """The action for a fault, and why: the guest's hint if allowed, else the default."""
    if policy.honour_hint and hint:
        wanted = HINT_ACTIONS.get(hint)
        if wanted is not None and wanted in policy.actions:
            return wanted, f"guest hint {hint!r}"
        return policy.actions[0], f"guest hint {hint!r} not allowed; policy default"
    return policy.actions[0], "policy default"


@dataclass(frozen=True)
class Command:
    """What the planner asks its shell to do.

    ``act``: carry out ``action``; ``schedule``: call :meth:`RecoveryPlanner.on_timer`
    at ``when``; ``event``: tell the controller (``kind`` and ``detail``);
    ``expect_registration``: the guest restarts now and must register within
    ``restart_timeout`` (no fault in the meantime)."""

    op: str
    uuid: str
    action: str = ""
    when: float = 0.0
    kind: str = ""
    detail: Dict[str, Any] = field(default_factory=dict)


IDLE, PENDING, ACTING, AWAITING, GAVE_UP = "idle", "pending", "acting", "awaiting", "gave_up"


@dataclass
class _VmState:
    policy: RecoveryPolicy
    state: str = IDLE
    fault: str = ""
    reason: str = ""
    action: str = ""
    why: str = ""
    due: Optional[float] = None
    acted_at: Optional[float] = None
    history: Deque[float] = field(default_factory=deque)
    hint: Optional[str] = None


class RecoveryPlanner:
    """One recovery state machine per VM. Never acts twice for one fault, never
    during a lifecycle operation, at most ``max_actions`` per ``window_s``."""

    def __init__(self) -> None:
        self.vms: Dict[str, _VmState] = {}

    def set_policy(self, uuid: str, policy: RecoveryPolicy) -> None:
        vm = self.vms.get(uuid)
        if vm is None:
            self.vms[uuid] = _VmState(policy)
        else:
            vm.policy = policy

    def forget(self, uuid: str) -> None:
        self.vms.pop(uuid, None)

    def describe(self, uuid: str, now: float) -> Optional[Dict[str, Any]]:
        """For the status table: state, last action, actions in the window."""
        vm = self.vms.get(uuid)
        if vm is None or not vm.policy.enabled:
            return None
        self._prune(vm, now)
        return {
            "state": vm.state,
            "action": vm.action or None,
            "actions_in_window": len(vm.history),
            "max_actions": vm.policy.max_actions,
        }

    # -- inputs -------------------------------------------------------------------
    def on_event(
        self, uuid: str, kind: str, now: float, *, hint: Optional[str], busy: str, reason: str = ""
    ) -> List[Command]:
        """A VM event (``heartbeat_lost``, ``registered``...); ``busy`` names a
        lifecycle operation in progress (empty: none)."""
        vm = self.vms.get(uuid)
        if vm is None or not vm.policy.enabled:
            return []
        if kind == REGISTERED:
            vm.hint = hint
            if vm.state == AWAITING:
                took = None if vm.acted_at is None else round(now - vm.acted_at, 3)
                vm.state = IDLE
                return [self._event(uuid, RECOVERY_DONE, vm, outcome="registered", seconds=took)]
            return []
        if kind == RECOVERED:
            if vm.state in (GAVE_UP, PENDING):
                vm.state, vm.due = IDLE, None
            return []
        if kind not in ACTED_ON:
            return []
        if vm.state in (PENDING, ACTING):
            return []  # one action per fault
        vm.hint = hint if hint is not None else vm.hint
        if vm.state == GAVE_UP:
            return []
        if busy:
            LOG.info("[instance %s] %s during %s: no recovery action", uuid, kind, busy)
            return []
        vm.fault, vm.reason = kind, reason
        self._prune(vm, now)
        if len(vm.history) >= vm.policy.max_actions:
            return self._give_up(
                uuid,
                vm,
                f"{len(vm.history)} actions within {vm.policy.window_s:g} s "
                f"(max_actions {vm.policy.max_actions})",
            )
        action, why = choose_action(vm.policy, vm.hint)
        if action == "none":
            LOG.warning("[instance %s] %s: recovery action none (%s): logged only", uuid, kind, why)
            return []
        vm.state, vm.action, vm.why = PENDING, action, why
        vm.due = now + vm.policy.delay_s
        return [Command("schedule", uuid, when=vm.due)]

    def on_timer(self, uuid: str, now: float, *, busy: str) -> List[Command]:
        vm = self.vms.get(uuid)
        if vm is None or vm.state != PENDING or vm.due is None or now < vm.due:
            return []
        vm.due = None
        if busy:
            LOG.info("[instance %s] recovery cancelled: %s in progress", uuid, busy)
            vm.state = IDLE
            return []
        vm.state, vm.acted_at = ACTING, now
        vm.history.append(now)
        started = self._event(
            uuid,
            RECOVERY_STARTED,
            vm,
            attempt=len(vm.history),
            max_actions=vm.policy.max_actions,
        )
        return [started, Command("act", uuid, action=vm.action)]

    def on_action_done(self, uuid: str, ok: bool, outcome: str, now: float) -> List[Command]:
        """The hypervisor carried the action out (``ok``) or could not; ``outcome`` says how."""
        vm = self.vms.get(uuid)
        if vm is None or vm.state != ACTING:
            return []
        if not ok:
            return self._give_up(uuid, vm, f"{vm.action} failed: {outcome}")
        if vm.action == "stop":
            vm.state = IDLE
            return [self._event(uuid, RECOVERY_DONE, vm, outcome=outcome)]
        vm.state = AWAITING
        return [Command("expect_registration", uuid, action=vm.action, detail={"how": outcome})]

    # -- helpers ------------------------------------------------------------------
    def _prune(self, vm: _VmState, now: float) -> None:
        while vm.history and vm.history[0] <= now - vm.policy.window_s:
            vm.history.popleft()

    def _give_up(self, uuid: str, vm: _VmState, why: str) -> List[Command]:
        vm.state, vm.due = GAVE_UP, None
        LOG.error("[instance %s] recovery gave up: %s", uuid, why)
        return [self._event(uuid, RECOVERY_GAVE_UP, vm, why_gave_up=why)]

    @staticmethod
    def _event(uuid: str, kind: str, vm: _VmState, **extra: Any) -> Command:
        detail = {"action": vm.action, "reason": vm.why, "fault": vm.fault}
        if vm.reason:
            detail["fault_reason"] = vm.reason
        detail.update({k: v for k, v in extra.items() if v is not None})
        return Command("event", uuid, kind=kind, detail=detail)


def _busy(vm: Any, timed_out_restart: bool) -> str:
    """The lifecycle operation in progress on ``vm`` ('' if none): a pause, shutdown
    or migration libvirt told of, or a (re)boot the guest has not registered after
    yet. A restart that timed out is a fault, not an operation in progress."""
    if vm.lifecycle_suspended:
        return str(vm.lifecycle_suspended)
    hb = vm.channel.heartbeat_view
    if hb.state == HostState.SUSPENDED and not timed_out_restart:
        return "a restart in progress"
    return ""


Executor = Callable[[str, str, RecoveryPolicy, Callable[[bool, str], None]], None]
"""``executor(uuid, action, policy, answer)``: carry the action out (in another
thread) and call ``answer(ok, outcome)`` from there."""


class RecoveryController:
    """The planner inside the engine's loop: feeds it the engine's events and
    carries out its commands (timers through the engine, actions through the
    executor, events through the engine's sink)."""

    TIMER = "recovery"

    def __init__(self, engine: Any, default: RecoveryPolicy, executor: Executor) -> None:
        self.engine = engine
        self.default = default
        self.executor = executor
        self.planner = RecoveryPlanner()

    def set_policy(self, uuid: str, policy: Optional[RecoveryPolicy]) -> None:
        """The VM's effective policy (None: the host's)."""
        self.planner.set_policy(uuid, policy or self.default)

    def forget(self, uuid: str) -> None:
        self.planner.forget(uuid)

    def describe(self, uuid: str) -> Optional[Dict[str, Any]]:
        return self.planner.describe(uuid, self.engine.clock())

    def observe(self, vm: Any, kind: str, detail: Mapping[str, Any]) -> None:
        """Called by the engine after it emitted ``kind`` for ``vm``."""
        uuid = vm.spec.uuid
        if uuid not in self.planner.vms:
            if vm.source != "libvirt":
                return  # no hypervisor handle: nothing to act with
            self.planner.set_policy(uuid, self.default)
        hb = vm.channel.heartbeat_view
        reason = str(detail.get("reason") or "")
        commands = self.planner.on_event(
            uuid,
            kind,
            self.engine.clock(),
            hint=hb.corrective_action,
            busy=_busy(vm, timed_out_restart=kind == RESTART_TIMEOUT),
            reason=reason,
        )
        self._run(commands)

    def check_registration(self, vm: Any) -> None:
        """Called after each burst of channel activity: a guest that registered again
        after the action ends the recovery even when its ``registered`` event was
        held back by the per-VM event limit (the planner must not wait for it)."""
        state = self.planner.vms.get(vm.spec.uuid)
        hb = vm.channel.heartbeat_view
        if state is not None and state.state == AWAITING and hb.state == HostState.MONITORING:
            self._run(
                self.planner.on_event(
                    vm.spec.uuid,
                    REGISTERED,
                    self.engine.clock(),
                    hint=hb.corrective_action,
                    busy="",
                )
            )

    def on_timer(self, uuid: str) -> None:
        vm = self.engine.vms.get(uuid)
        if vm is None:
            busy = "removed"
        elif vm.channel.heartbeat_view.health == "healthy":
            busy = "the fault has cleared"  # recovered, or the guest said exit
        else:
            busy = _busy(vm, timed_out_restart=vm.channel.heartbeat_view.health == RESTART_TIMEOUT)
        self._run(self.planner.on_timer(uuid, self.engine.clock(), busy=busy))

    def _run(self, commands: List[Command]) -> None:
        for cmd in commands:
            if cmd.op == "schedule":
                self.engine.schedule(cmd.when, self.TIMER, cmd.uuid)
            elif cmd.op == "event":
                self.engine.emit_event(cmd.uuid, cmd.kind, cmd.detail)
            elif cmd.op == "act":
                self._act(cmd.uuid, cmd.action)
            elif cmd.op == "expect_registration":
                self.engine.lifecycle(cmd.uuid, "restart", f"recovery: {cmd.detail['how']}")

    def _act(self, uuid: str, action: str) -> None:
        vm = self.planner.vms[uuid]
        LOG.warning("[instance %s] recovery: %s (%s)", uuid, action, vm.why)
        started = time.monotonic()

        def answer(ok: bool, outcome: str) -> None:
            LOG.info(
                "[instance %s] recovery %s %s in %.1f s: %s",
                uuid,
                action,
                "done" if ok else "failed",
                time.monotonic() - started,
                outcome,
            )
            self.engine.post(
                lambda: self._run(
                    self.planner.on_action_done(uuid, ok, outcome, self.engine.clock())
                )
            )

        self.executor(uuid, action, vm.policy, answer)
