"""The all-in-one demo: deploy guest-ha with Ansible on this machine, then show it
working on real QEMU guests.

    python -m guest_ha_dev.aio.demo [--root DIR] [-e VAR=VALUE ...]   # scripts/aio.sh
    python -m guest_ha_dev.aio.demo --teardown [--root DIR] [-e ...]

Steps: (1) ``ansible-playbook -i inventory/aio playbooks/aio.yml`` (RabbitMQ, the
controller, the compute agent, the baked guest image and the demo guests);
(2) a live status table until every guest has registered; (3) a broadcast
between guests, read from their consoles; (4) one guest frozen (``SIGSTOP`` of
its QEMU): the fault seen by the compute agent, reported by the controller and
published on the bus; (5) the guest thawed and recovered; (6) a summary. The
last stdout line is a JSON summary. Everything it reads comes from what the
playbook deployed: the agents' config files, status socket and status URL,
the compute agent's event log, the guests' consoles and the message bus.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from ..sim.harness import JsonLinesTail
from ..sim.testguest import qemu_pid
from ..testing.controller import NotificationCollector

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
TASK = re.compile(r"^(TASK|RUNNING HANDLER) \[(.*)\]")


class DemoError(RuntimeError):
    """A step of the demo did not complete; the message says which and why."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, total: int, text: str) -> None:
    say(f"\n=== [{n}/{total}] {text}")


# --- Ansible -----------------------------------------------------------------------------
@dataclass
class PlaybookRun:
    rc: int
    seconds: float
    recap: Dict[str, Dict[str, int]]
    log: str

    @property
    def changed(self) -> int:
        return sum(h["changed"] for h in self.recap.values())

    @property
    def failed(self) -> int:
        return sum(h["failed"] + h["unreachable"] for h in self.recap.values())


def run_playbook(
    playbook: str, inventory: str, extra_vars: Sequence[str], log_path: str
) -> PlaybookRun:
    """Run a playbook from the repository, one progress line per task."""
    bindir = os.path.dirname(sys.executable)
    argv = [os.path.join(bindir, "ansible-playbook"), "-i", inventory, playbook]
    for item in extra_vars:
        argv += ["-e", item]
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        PATH=bindir + os.pathsep + env.get("PATH", ""),
    )
    say(f"$ {' '.join(shlex.quote(a) for a in argv)}")
    say(f"  (full output: {log_path})")
    t0 = time.monotonic()
    recap: Dict[str, Dict[str, int]] = {}
    tasks = 0
    tail: List[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            line = line.rstrip("\n")
            tail = [*tail, line][-40:]
            task = TASK.match(line)
            if task:
                tasks += 1
                say(f"  {time.monotonic() - t0:6.1f} s  task {tasks:3d}: {task.group(2)}")
            elif line.startswith(("fatal:", "failed:")) or "FAILED!" in line:
                say(f"           {line[:300]}")
            m = RECAP.match(line)
            if m:
                recap[m.group(1)] = {
                    "ok": int(m.group(2)),
                    "changed": int(m.group(3)),
                    "unreachable": int(m.group(4)),
                    "failed": int(m.group(5)),
                }
        rc = proc.wait()
    run = PlaybookRun(rc, time.monotonic() - t0, recap, log_path)
    if rc != 0:
        raise DemoError(
            f"{os.path.basename(playbook)} failed (rc={rc}); last lines:\n" + "\n".join(tail)
        )
    say(
        f"  done in {run.seconds:.0f} s: {tasks} tasks, "
        + (f"{run.changed} changed" if run.changed else "nothing changed (idempotent)")
    )
    return run


# --- what the playbook deployed ----------------------------------------------------------
@dataclass
class Guest:
    name: str
    uuid: str
    console_log: str


@dataclass
class Deployment:
    """Paths and addresses, read from the files the playbook wrote."""

    guests: List[Guest]
    compute_status_socket: str
    events_jsonl: str
    transport_url: str
    controller_status_url: str
    controller_log: str
    interval_ms: int
    server_group: str
    recovery: Dict[str, Any]
    """The compute agent's recovery policy (compute.yaml ``recovery``)."""

    @classmethod
    def load(cls, root: str) -> "Deployment":
        etc = os.path.join(root + "/etc/guest-ha")
        with open(os.path.join(etc, "aio.json"), encoding="utf-8") as fh:
            facts = json.load(fh)
        with open(os.path.join(etc, "compute.yaml"), encoding="utf-8") as fh:
            compute = yaml.safe_load(fh)
        controller = configparser.ConfigParser(interpolation=None)
        controller.read(os.path.join(etc, "controller.conf"))
        listen = controller.get("controller", "status_listen")
        events = (compute.get("events") or {}).get("jsonl")
        if not events:
            raise DemoError("compute.yaml has no events.jsonl: the aio inventory sets it")
        return cls(
            guests=[Guest(g["name"], g["uuid"], g["console_log"]) for g in facts["guests"]],
            compute_status_socket=compute["status_socket"],
            events_jsonl=events,
            transport_url=controller.get("DEFAULT", "transport_url"),
            controller_status_url=f"http://{listen}/status",
            controller_log=root + "/var/log/guest-ha/controller.log",
            interval_ms=int(facts["interval_ms"]),
            server_group=facts["server_group"],
            recovery=dict(compute.get("recovery") or {}),
        )


# --- watching -----------------------------------------------------------------------------
def compute_status(dep: Deployment) -> Dict[str, Any]:
    from guest_ha.compute.cli import fetch_status

    try:
        return fetch_status(dep.compute_status_socket)
    except (OSError, ValueError):
        return {"vms": [], "uptime_s": 0}


def controller_status(dep: Deployment) -> Dict[str, Any]:
    try:
        with urllib.request.urlopen(dep.controller_status_url, timeout=2) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return {}


def find_event(log: JsonLinesTail, kind: str, uuid: str) -> Optional[Dict[str, Any]]:
    """The first ``kind`` event of ``uuid`` in the compute agent's event log since ``log`` began."""
    log.read_new()
    return next(
        (e for e in log.records if e.get("kind") == kind and e.get("instance_uuid") == uuid), None
    )


def find_notification(
    bus: NotificationCollector, event_type: str, uuid: str, since: float
) -> Optional[Dict[str, Any]]:
    """The first ``event_type`` notification of ``uuid`` received at or after ``since``
    (``time.monotonic()``)."""
    for got in list(bus.got):
        if (
            got["received_at"] >= since
            and got["event_type"] == event_type
            and got["payload"].get("instance_uuid") == uuid
        ):
            return got
    return None


def read_console(guest: Guest) -> str:
    try:
        with open(guest.console_log, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


class LiveTable:
    """The compute agent's status table, redrawn in place on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.drawn = 0
        self.last = ""

    def show(self, status: Dict[str, Any], note: str) -> None:
        from guest_ha.compute.cli import format_status

        text = format_status(status) + f"\n{note}"
        if self.tty:
            if self.drawn:
                sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            self.drawn = text.count("\n") + 1
        elif text.split("\n")[:-2] != self.last.split("\n")[:-2]:
            say(text)  # without a terminal: print it when a row changed
        self.last = text

    def freeze(self) -> None:
        """Keep what is drawn; the next table starts below it."""
        self.drawn = 0


def wait_for(
    what: str,
    predicate: Callable[[], Any],
    timeout: float,
    dep: Optional[Deployment] = None,
    table: Optional[LiveTable] = None,
) -> Any:
    t0 = time.monotonic()
    while True:
        value = predicate()
        elapsed = time.monotonic() - t0
        if table is not None and dep is not None:
            table.show(compute_status(dep), f"waiting for {what}: {elapsed:.0f} s")
        if value:
            if table is not None:
                table.freeze()
            return value
        if elapsed > timeout:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2 if table is None else 1.0)


# --- the demo --------------------------------------------------------------------------------
@dataclass
class Outcome:
    deploy: Dict[str, Any] = field(default_factory=dict)
    registered: List[str] = field(default_factory=list)
    broadcasts: Dict[str, List[str]] = field(default_factory=dict)
    fault: Dict[str, Any] = field(default_factory=dict)
    recovery: Dict[str, Any] = field(default_factory=dict)


def show_demo(dep: Deployment, boot_timeout: float, outcome: Outcome) -> None:
    total = 6
    uuids = [g.uuid for g in dep.guests]
    # Listens on the bus as a VNF manager or Aodh would (own pool).
    bus = NotificationCollector(dep.transport_url, pool="guest-ha-aio-demo")
    table = LiveTable()
    try:
        step(
            2,
            total,
            f"Heartbeats: {len(dep.guests)} TCG guests boot and register "
            f"(interval {dep.interval_ms} ms)",
        )

        def all_registered() -> bool:
            vms = {vm["instance_uuid"]: vm for vm in compute_status(dep).get("vms", [])}
            return all(vms.get(u, {}).get("registered") for u in uuids)

        wait_for("every guest to register", all_registered, boot_timeout, dep, table)
        outcome.registered = list(uuids)
        say(f"all {len(uuids)} guests registered; heartbeats every {dep.interval_ms} ms")

        step(3, total, f"Server group messaging: broadcasts in group {dep.server_group!r}")
        pattern = re.compile(r"RECEIVED broadcast from ([0-9a-f-]{36}): (.*)")

        def everyone_heard_a_peer() -> bool:
            for g in dep.guests:
                heard = {m.group(1) for m in pattern.finditer(read_console(g))}
                outcome.broadcasts[g.name] = sorted(heard)
            return all(outcome.broadcasts[g.name] for g in dep.guests)

        wait_for("a broadcast to reach every guest", everyone_heard_a_peer, 120)
        names = {g.uuid: g.name for g in dep.guests}
        for g in dep.guests:
            line = next((m.group(0) for m in pattern.finditer(read_console(g))), "(nothing)")
            say(f"  {g.name} console: {line}")
            say(f"    heard from: {', '.join(names.get(u, u) for u in outcome.broadcasts[g.name])}")

        victim = dep.guests[len(dep.guests) // 2]
        step(4, total, f"Fault: {victim.name} ({victim.uuid}) frozen with SIGSTOP of its QEMU")
        pid = qemu_pid(victim.name)
        events = JsonLinesTail(dep.events_jsonl, from_end=True)  # from here on
        frozen_at = time.monotonic()  # the agent's events carry the same clock
        os.kill(pid, signal.SIGSTOP)
        by_agent = bool(dep.recovery.get("enabled"))
        thaw = True
        try:
            lost = wait_for(
                "the compute agent to detect heartbeat_lost",
                lambda: find_event(events, "heartbeat_lost", victim.uuid),
                30,
            )
            detected_s = lost["monotonic"] - frozen_at
            say(
                f"  compute agent: heartbeat_lost after {detected_s * 1000:.0f} ms "
                f"(interval {dep.interval_ms} ms) {json.dumps(lost.get('detail', {}))}"
            )
            note = wait_for(
                "the controller's notification on the bus",
                lambda: find_notification(
                    bus, "guest_ha.instance.heartbeat_lost", victim.uuid, frozen_at
                ),
                60,
            )
            reported_s = note["received_at"] - frozen_at
            say(
                f"  message bus: guest_ha.instance.heartbeat_lost received "
                f"{reported_s * 1000:.0f} ms after the freeze"
            )
            log_line = wait_for(
                "the controller's log reporter",
                lambda: next(
                    (
                        ln
                        for ln in _read(dep.controller_log).splitlines()
                        if f"[instance {victim.uuid}] heartbeat_lost on " in ln
                    ),
                    None,
                ),
                30,
            )
            say(f"  controller log: {log_line.strip()[:200]}")
            peers = [g for g in dep.guests if g is not victim]
            seen = wait_for(
                "a peer to be told about the fault",
                lambda: [
                    (g.name, ln)
                    for g in peers
                    for ln in read_console(g).splitlines()
                    if "peer notification" in ln and victim.uuid in ln
                ],
                30,
            )
            for name, ln in seen[:2]:
                say(f"  {name} console: {ln.strip()[:200]}")
            table.show(compute_status(dep), "status with the guest frozen")
            table.freeze()
            outcome.fault = {
                "instance_uuid": victim.uuid,
                "domain": victim.name,
                "detected_s": round(detected_s, 3),
                "notified_s": round(reported_s, 3),
                "controller_log": True,
                "peers_told": sorted({n for n, _ in seen}),
            }
            thaw = not by_agent  # the agent's recovery policy acts on the frozen guest
        finally:
            if thaw:
                _thaw(pid)

        if by_agent:
            _agent_recovery(dep, victim, events, bus, frozen_at, total, outcome)
            _thaw(pid)  # that QEMU is gone if the agent power-cycled it
            wait_for("every guest healthy again", all_registered, 60, dep, table)
            return
        step(5, total, f"Recovery: {victim.name} thawed with SIGCONT")
        thawed_at = time.monotonic()
        rec = wait_for(
            "the compute agent to see the guest recover",
            lambda: find_event(events, "recovered", victim.uuid),
            60,
        )
        say(f"  compute agent: recovered after {rec['monotonic'] - thawed_at:.2f} s")
        wait_for(
            "the recovery notification on the bus",
            lambda: find_notification(bus, "guest_ha.instance.recovered", victim.uuid, thawed_at),
            60,
        )
        say("  message bus: guest_ha.instance.recovered received")
        wait_for("every guest healthy again", all_registered, 60, dep, table)
        outcome.recovery = {
            "instance_uuid": victim.uuid,
            "recovered_s": round(rec["monotonic"] - thawed_at, 3),
            "notified": True,
        }
    finally:
        bus.stop()


def _thaw(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _agent_recovery(
    dep: Deployment,
    victim: Guest,
    events: JsonLinesTail,
    bus: NotificationCollector,
    frozen_at: float,
    total: int,
    outcome: "Outcome",
) -> None:
    """Step 5 when the compute agent's recovery policy is on: it acts, the guest returns."""
    actions = ", ".join(dep.recovery.get("actions") or [])
    step(5, total, f"Recovery: the compute agent acts on {victim.name} (allowed: {actions})")
    started = wait_for(
        "the compute agent to start a recovery",
        lambda: find_event(events, "recovery_started", victim.uuid),
        60,
    )
    d = started.get("detail", {})
    say(
        f"  compute agent: recovery_started {started['monotonic'] - frozen_at:.2f} s after the "
        f"freeze: {d.get('action')} ({d.get('reason')}), attempt {d.get('attempt')} of "
        f"{d.get('max_actions')}"
    )
    done = wait_for(
        "the guest to register again",
        lambda: find_event(events, "recovery_done", victim.uuid),
        240,
    )
    say(f"  compute agent: recovery_done {json.dumps(done.get('detail', {}))}")
    rec = wait_for(
        "the guest to heartbeat again",
        lambda: find_event(events, "recovered", victim.uuid),
        60,
    )
    took = rec["monotonic"] - frozen_at
    say(f"  compute agent: recovered, heartbeating again {took:.1f} s after the freeze")
    wait_for(
        "the recovery notification on the bus",
        lambda: find_notification(bus, "guest_ha.instance.recovered", victim.uuid, frozen_at),
        60,
    )
    say("  message bus: guest_ha.instance.recovered received")
    outcome.recovery = {
        "instance_uuid": victim.uuid,
        "recovered_s": round(took, 3),
        "notified": True,
        "by_agent": True,
        "action": d.get("action"),
        "outcome": done.get("detail", {}).get("outcome"),
    }


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def summary(dep: Deployment, outcome: Outcome, root: str, extra: Sequence[str]) -> None:
    step(6, 6, "Summary")
    ctl = controller_status(dep)
    say(
        f"  deployed by playbooks/aio.yml in {outcome.deploy.get('seconds', 0):.0f} s "
        f"({outcome.deploy.get('changed', 0)} changes)"
    )
    say(f"  guests registered:   {len(outcome.registered)} of {len(dep.guests)}")
    say(
        f"  broadcasts heard:    {sum(1 for v in outcome.broadcasts.values() if v)} of "
        f"{len(dep.guests)} guests"
    )
    f = outcome.fault
    say(
        f"  fault detected in:   {f['detected_s'] * 1000:.0f} ms; on the bus after "
        f"{f['notified_s'] * 1000:.0f} ms; peers told: {', '.join(f['peers_told'])}"
    )
    rec = outcome.recovery
    if rec.get("by_agent"):
        say(
            f"  recovered by the agent's {rec.get('action')} in {rec['recovered_s']:.1f} s "
            "(frozen to heartbeating again)"
        )
    else:
        say(f"  recovered after:     {rec['recovered_s']:.2f} s (thawed to recovered)")
    reporters = ctl.get("reporters", {})
    if reporters:
        say(
            "  controller reporters: "
            + ", ".join(
                f"{name} {r.get('sent', '?')} sent / {r.get('errors', 0)} errors"
                for name, r in sorted(reporters.items())
            )
        )
    rootopt = f" --root {shlex.quote(root)}" if root else ""
    extras = "".join(f" -e {shlex.quote(e)}" for e in extra)
    say("\n  Look around:")
    say(f"    {root}/opt/guest-ha/bin/guest-ha-compute status --socket {dep.compute_status_socket}")
    say(f"    curl -s {dep.controller_status_url}")
    say(f"    tail -f {dep.controller_log}")
    say("  Run it again (idempotent): scripts/aio.sh" + rootopt + extras)
    say("  Tear it all down:          scripts/aio.sh --teardown" + rootopt + extras)
    say("    (or: ansible-playbook -i inventory/aio playbooks/aio_teardown.yml)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="guest-ha-aio-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--inventory", default=os.path.join(REPO, "inventory", "aio"))
    parser.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="passed to ansible-playbook (repeatable)",
    )
    parser.add_argument(
        "--root", default="", help="install everything under this folder (guest_ha_root)"
    )
    parser.add_argument("--teardown", action="store_true", help="remove what the demo made")
    parser.add_argument("--skip-deploy", action="store_true", help="do not run the playbook")
    parser.add_argument("--boot-timeout", type=float, default=420.0)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("guest-ha aio demo: run it as root (it installs packages and runs libvirt guests)")
        return 2
    root = os.path.abspath(args.root) if args.root else ""
    extra = list(args.extra_vars) + ([f"guest_ha_root={root}"] if root else [])
    logs = os.path.join(REPO, ".cache", "aio")
    os.makedirs(logs, exist_ok=True)
    if args.teardown:
        say("=== Tearing down the all-in-one")
        run_playbook(
            os.path.join(REPO, "playbooks", "aio_teardown.yml"),
            args.inventory,
            extra,
            os.path.join(logs, "aio_teardown.log"),
        )
        say(json.dumps({"result": "ok", "teardown": True}))
        return 0
    outcome = Outcome()
    try:
        if not args.skip_deploy:
            step(1, 6, "Deploy: RabbitMQ, controller, compute agent, guest image and guests")
            run = run_playbook(
                os.path.join(REPO, "playbooks", "aio.yml"),
                args.inventory,
                extra,
                os.path.join(logs, "aio.log"),
            )
            outcome.deploy = {"seconds": round(run.seconds, 1), "changed": run.changed}
        dep = Deployment.load(root)
        show_demo(dep, args.boot_timeout, outcome)
        summary(dep, outcome, args.root, args.extra_vars)
    except DemoError as exc:
        say(f"\nguest-ha aio demo FAILED: {exc}")
        say(json.dumps({"result": "failed", "error": str(exc), **outcome.__dict__}))
        return 1
    say(json.dumps({"result": "ok", **outcome.__dict__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
