#!/usr/bin/env python3
"""Active/standby arbitration over server group messaging, without split brain.

Run one copy in each of the two VMs of a server group (each VM runs
guest-ha-guestd with server group messaging enabled)::

    python3 active_standby.py --period-ms 500 --misses 3

The rules (see docs/vnf-developer-guide.md, "Avoiding split brain"):

* The active broadcasts a lease ``{"app": APP, "type": "lease", "epoch": E}``
  every period. The standby broadcasts ``{"type": "standby"}`` so that the
  active knows it exists.
* The standby takes over only when BOTH hold:
  1. it has missed ``misses`` consecutive lease announcements, and
  2. a status query answers, and in it the active's VM (the ``source_instance``
     of its last lease, stamped by the host, never by the sender) is not
     ``state == "active"`` and ``power_state == "running"`` with a healthy
     heartbeat (``guest_health``), or is gone.
  If the status query fails (timeout, nack, no host) it does NOT take over: an
  unknown state is never read as "dead".
* A new active uses ``epoch + 1``. An active that hears a lease with a higher
  epoch (or the same epoch from a lower instance UUID) steps down at once, so
  an old active that comes back (after a pause, a partition) never stays active
  next to the new one.
* At start both are standby. When nobody holds a lease, the member with the
  lowest UUID among the running ones takes over; a member that knows no UUID of
  its own waits until the others are not running.

:class:`LeaseArbiter` holds the decisions and does no I/O (time is passed in);
:func:`run` wires it to :class:`guest_ha.guest.sg_client.ServerGroupClient`.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Callable, Dict, List, Optional

APP = "example-vnf"
LOG = logging.getLogger("active_standby")


def is_up(member: Dict[str, Any]) -> bool:
    """The VM runs (Nova: vm_state active, power state running) and its heartbeat
    is not in fault (``guest_health`` absent or ``healthy``): a hung active still
    looks running to Nova, but guest-ha says ``heartbeat_lost`` within a second."""
    return (
        member.get("state") == "active"
        and member.get("power_state") == "running"
        and member.get("guest_health", "healthy") == "healthy"
    )


class LeaseArbiter:
    """Decides the role of this VM from leases, notifications and status answers."""

    ACTIVE = "active"
    STANDBY = "standby"

    def __init__(
        self, now: float, period_s: float = 0.5, misses: int = 3, self_uuid: Optional[str] = None
    ) -> None:
        self.period_s = period_s
        self.misses = misses
        self.self_uuid = self_uuid.lower() if self_uuid else None
        self.role = self.STANDBY
        self.epoch = 0
        self.active_uuid: Optional[str] = None
        self.last_lease_at = now  # a newcomer first listens for a whole window
        self.standbys: Dict[str, float] = {}
        self.next_check_at = now
        self.check_now = False

    # -- what comes in ---------------------------------------------------------------------
    def on_broadcast(self, source: str, data: Any, now: float) -> None:
        if not isinstance(data, dict) or data.get("app") != APP:
            return
        source = source.lower()
        if data.get("type") == "standby":
            self.standbys[source] = now
            return
        epoch = data.get("epoch")
        if data.get("type") != "lease" or not isinstance(epoch, int) or isinstance(epoch, bool):
            return
        if self.role == self.ACTIVE and self._outranks(epoch, source):
            LOG.warning("lease epoch %d from %s outranks ours: stepping down", epoch, source)
            self.role = self.STANDBY
        if epoch >= self.epoch and self.role == self.STANDBY:
            self.epoch = epoch
            self.active_uuid = source
            self.last_lease_at = now
            self.standbys.pop(source, None)

    def _outranks(self, epoch: int, source: str) -> bool:
        if epoch != self.epoch:
            return epoch > self.epoch
        # Same epoch from two actives: the lower UUID keeps it (both step down if
        # we do not know our own UUID, and the rules elect again: safe).
        return self.self_uuid is None or source < self.self_uuid

    def on_notification(self, member: Dict[str, Any], now: float) -> None:
        """A peer's state changed: if it is the active going down, check soon."""
        if str(member.get("uuid", "")).lower() == self.active_uuid and not is_up(member):
            self.check_now = True

    # -- what to do ------------------------------------------------------------------------
    def announcement(self) -> Dict[str, Any]:
        if self.role == self.ACTIVE:
            return {"app": APP, "type": "lease", "epoch": self.epoch}
        return {"app": APP, "type": "standby"}

    def lease_missed(self, now: float) -> bool:
        return now - self.last_lease_at > self.misses * self.period_s

    def wants_status(self, now: float) -> bool:
        """Time to ask for the members' status (only a standby that missed leases)."""
        if self.role != self.STANDBY or not self.lease_missed(now):
            return False
        return self.check_now or now >= self.next_check_at

    def decide(self, members: List[Dict[str, Any]], now: float) -> bool:
        """Given a successful status answer, take over if the rules allow; True if so."""
        self.check_now = False
        self.next_check_at = now + self.misses * self.period_s
        if self.role != self.STANDBY or not self.lease_missed(now):
            return False
        by_uuid = {str(m.get("uuid", "")).lower(): m for m in members}
        if self.active_uuid is not None:
            active = by_uuid.get(self.active_uuid)
            if active is not None and is_up(active):
                LOG.info(
                    "no lease from %s, but its VM is running: not taking over", self.active_uuid
                )
                return False
        else:
            others = [m for u, m in by_uuid.items() if u != self.self_uuid and is_up(m)]
            if self.self_uuid is None or self.self_uuid not in by_uuid:
                if others:  # cannot tell which running member we are: wait
                    return False
            elif any(str(m.get("uuid", "")).lower() < self.self_uuid for m in others):
                return False  # a running member with a lower UUID goes first
        self.role = self.ACTIVE
        self.epoch += 1
        self.active_uuid = self.self_uuid
        LOG.warning("taking over as active, epoch %d", self.epoch)
        return True


def read_self_uuid() -> Optional[str]:
    """The instance UUID as the guest sees it (libvirt/Nova set the SMBIOS UUID)."""
    try:
        with open("/sys/class/dmi/id/product_uuid", encoding="ascii") as f:
            return f.read().strip().lower() or None
    except OSError:
        return None


def run(
    socket_path: str,
    period_s: float,
    misses: int,
    self_uuid: Optional[str],
    on_role: Callable[[str, int], None],
) -> None:
    """Single-threaded loop: poll for pushes, announce every period, check when due."""
    from guest_ha.guest.sg_client import ServerGroupClient, ServerGroupError

    clock = time.monotonic
    arbiter = LeaseArbiter(clock(), period_s, misses, self_uuid)
    role = arbiter.role
    with ServerGroupClient(socket_path) as sg:
        sg.on_broadcast(lambda src, data: arbiter.on_broadcast(src, data, clock()))
        sg.on_notification(lambda member: arbiter.on_notification(member, clock()))
        sg.on_nack(lambda orig, code, text: LOG.warning("host refused %s: %s", orig, text))
        sg.subscribe()
        next_announce = clock()
        while True:
            sg.poll(max(0.0, min(next_announce - clock(), period_s / 4)))
            now = clock()
            if arbiter.wants_status(now):
                try:
                    members = sg.request_status(timeout=min(5.0, misses * period_s))
                except ServerGroupError as exc:
                    LOG.warning("status query failed (%s): staying %s", exc, arbiter.role)
                    arbiter.next_check_at = now + period_s
                else:
                    arbiter.decide(members, clock())
            if arbiter.role != role:
                role = arbiter.role
                on_role(role, arbiter.epoch)
                next_announce = now  # announce a new lease at once
            if now >= next_announce:
                try:
                    sg.broadcast(arbiter.announcement())
                except ServerGroupError as exc:
                    LOG.warning("cannot announce: %s", exc)
                next_announce = max(next_announce + period_s, now)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/run/guest-ha/app.sock")
    parser.add_argument("--period-ms", type=int, default=500, help="lease period (default 500)")
    parser.add_argument("--misses", type=int, default=3, help="missed leases before a check")
    parser.add_argument("--self-uuid", default=None, help="this VM's instance UUID")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    def on_role(role: str, epoch: int) -> None:
        # Start or stop serving here (e.g. take the virtual IP, open the database).
        print(f"role {role} (epoch {epoch})", flush=True)

    try:
        run(args.socket, args.period_ms / 1000.0, args.misses, args.self_uuid or read_self_uuid(),
            on_role)  # fmt: skip
    except KeyboardInterrupt:
        return 0
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
