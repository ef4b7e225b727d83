"""The heartbeat state machines' transitions, as data (docs/protocol.md §6.2, §6.4).

Each table maps ``state -> {input: next state}``. The machines in
``heartbeat.py`` look their next state up here and do the actions the
protocol ties to each transition; an input a state does not list leaves it
unchanged. ``tests/unit/test_protocol_transitions.py`` drives both machines
through every row and checks they land where the table says.
"""

from __future__ import annotations

from typing import Dict, Mapping

from .events import WireEnum


class HostState(WireEnum):
    """States of the host's machine, one per VM channel (§6.2)."""

    SUSPENDED = "suspended"
    AWAITING_INIT = "awaiting_init"
    MONITORING = "monitoring"
    EXITED = "exited"


class HostInput(WireEnum):
    """What moves the host's machine (§6.2, "input" column)."""

    CHANNEL_UP = "channel_up"
    SUSPEND = "suspend"
    """A lifecycle suspend, or the channel lost."""
    EXPECT_REGISTRATION = "expect_registration"
    """The hypervisor (re)started the guest OS: it must register in time."""
    RESUME_REGISTERED = "resume_registered"
    """A lifecycle resume of a guest that is still registered."""
    RESUME = "resume"
    """A lifecycle resume of a guest that is not registered."""
    REGISTER = "register"
    """``init`` that is a new registration (not monitoring with the same id)."""
    EXIT = "exit"
    """``exit`` with the registered ``invocation_id`` (or none registered yet)."""


_S, _I = HostState, HostInput

HOST_TRANSITIONS: Mapping[HostState, Mapping[HostInput, HostState]] = {
    _S.SUSPENDED: {
        _I.CHANNEL_UP: _S.AWAITING_INIT,
        _I.SUSPEND: _S.SUSPENDED,
        _I.EXPECT_REGISTRATION: _S.SUSPENDED,
        _I.RESUME_REGISTERED: _S.MONITORING,
        _I.RESUME: _S.AWAITING_INIT,
        _I.REGISTER: _S.MONITORING,
        _I.EXIT: _S.EXITED,
    },
    _S.AWAITING_INIT: {
        _I.CHANNEL_UP: _S.AWAITING_INIT,
        _I.SUSPEND: _S.SUSPENDED,
        _I.EXPECT_REGISTRATION: _S.SUSPENDED,
        _I.RESUME_REGISTERED: _S.AWAITING_INIT,
        _I.RESUME: _S.AWAITING_INIT,
        _I.REGISTER: _S.MONITORING,
        _I.EXIT: _S.EXITED,
    },
    _S.MONITORING: {
        _I.CHANNEL_UP: _S.AWAITING_INIT,
        _I.SUSPEND: _S.SUSPENDED,
        _I.EXPECT_REGISTRATION: _S.SUSPENDED,
        _I.REGISTER: _S.MONITORING,
        _I.EXIT: _S.EXITED,
    },
    # Exited ignores channel up, channel lost, suspend and resume; only a new
    # registration (or the hypervisor restarting the guest) leaves it.
    _S.EXITED: {
        _I.EXPECT_REGISTRATION: _S.SUSPENDED,
        _I.REGISTER: _S.MONITORING,
        _I.EXIT: _S.EXITED,
    },
}


class GuestState(WireEnum):
    """States of the guest daemon's machine (§6.4)."""

    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    EXITED = "exited"


class GuestInput(WireEnum):
    """What moves the guest's machine (§6.4, "input" column)."""

    START = "start"
    HOST_CONNECTED = "host_connected"
    """The hang-up cleared or the port was reopened."""
    INIT_ACK = "init_ack"
    """``init_ack`` with the guest's own ``invocation_id``."""
    CHALLENGE = "challenge"
    NACK = "nack"
    """``nack`` of ``challenge_response`` (init again at once) or of ``init``
    (init again when the init timer expires)."""
    STALE = "stale"
    """No challenge for ``stale_intervals`` intervals + 0.5 s."""
    SHUTDOWN = "shutdown"


_G, _J = GuestState, GuestInput
_ACTIVE: Dict[GuestInput, GuestState] = {
    _J.START: _G.REGISTERING,
    _J.HOST_CONNECTED: _G.REGISTERING,
    _J.INIT_ACK: _G.REGISTERED,
    _J.CHALLENGE: _G.REGISTERED,
    _J.NACK: _G.REGISTERING,
    _J.SHUTDOWN: _G.EXITED,
}

GUEST_TRANSITIONS: Mapping[GuestState, Mapping[GuestInput, GuestState]] = {
    # Idle and exited ignore every heartbeat PDU.
    _G.IDLE: {_J.START: _G.REGISTERING, _J.SHUTDOWN: _G.EXITED},
    _G.REGISTERING: dict(_ACTIVE),
    _G.REGISTERED: {**_ACTIVE, _J.STALE: _G.REGISTERING},
    _G.EXITED: {_J.START: _G.REGISTERING, _J.SHUTDOWN: _G.EXITED},
}


def host_handles(state: HostState, event: HostInput) -> bool:
    """Whether ``state`` acts on ``event`` at all (else it is ignored)."""
    return event in HOST_TRANSITIONS[state]


def host_next(state: HostState, event: HostInput) -> HostState:
    """The host machine's next state (unchanged for an input the state ignores)."""
    return HOST_TRANSITIONS[state].get(event, state)


def guest_handles(state: GuestState, event: GuestInput) -> bool:
    """Whether ``state`` acts on ``event`` at all (else it is ignored)."""
    return event in GUEST_TRANSITIONS[state]


def guest_next(state: GuestState, event: GuestInput) -> GuestState:
    """The guest machine's next state (unchanged for an input the state ignores)."""
    return GUEST_TRANSITIONS[state].get(event, state)
