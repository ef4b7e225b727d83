#!/usr/bin/env python3
"""The compute host's end of a running guest's heartbeat channel, for the Molecule
scenario "running": a pty stands in for the guest's virtio-serial port.

    host_peer.py start DIR   # start a detached peer; DIR/port is a link to its pty
    host_peer.py stop DIR    # stop the peer named in DIR/peer.pid

DIR is an absolute path.
The peer plays the compute agent with the protocol core (guest_ha_dev.testing.pty_host):
it answers every ``init`` with an ``init_ack`` for the requested interval (clamped
to 100..60000 ms), challenges the guest every interval while it is registered,
and records what it saw in DIR/peer.json (rewritten atomically): one entry per
registration (name, requested and acknowledged interval, invocation id,
corrective action, challenges answered, last health, missed challenges, the
``exit`` reason), plus protocol errors. Its own log is DIR/peer.log.

Run it with a Python that imports guest_ha (the project's venv).
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from typing import Any, Dict, Optional

from guest_ha.protocol import HEARTBEAT, HOST_TO_GUEST, make
from guest_ha_dev.testing.pty_host import PtyHost

MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 60000
# Missed challenges in a row after which the guest counts as gone (no more challenges,
# so the pty's input queue never fills up behind a dead daemon).
LOST_AFTER = 3
WRITE_EVERY_S = 0.25


def _paths(state_dir: str) -> Dict[str, str]:
    return {
        name: os.path.join(state_dir, file)
        for name, file in (
            ("pid", "peer.pid"),
            ("json", "peer.json"),
            ("log", "peer.log"),
            ("port", "port"),
        )
    }


def _peer_pid(state_dir: str) -> Optional[int]:
    """The pid in DIR/peer.pid if it is a live peer serving DIR (not a recycled pid)."""
    try:
        with open(_paths(state_dir)["pid"], encoding="utf-8") as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if not any(a.endswith(b"host_peer.py") for a in argv):
        return None
    if os.fsencode(state_dir) not in argv:
        return None
    return pid


def _write_json(path: str, data: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


class Peer:
    def __init__(self, state_dir: str) -> None:
        self.paths = _paths(state_dir)
        self.host = PtyHost()
        self.stopping = False
        self.current: Optional[Dict[str, Any]] = None
        self.outstanding: Optional[int] = None
        self.next_challenge = 0.0
        self.dirty = True
        self.written_at = 0.0
        self.state: Dict[str, Any] = {
            "pid": os.getpid(),
            "pty": self.host.path,
            "port": self.paths["port"],
            "started_at": time.time(),
            "registrations": [],
            "errors": [],
            "other_messages": {},
        }
        # The port the guest is configured with: a stable name for the pty slave.
        tmp_link = self.paths["port"] + ".tmp"
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(self.host.path, tmp_link)
        os.replace(tmp_link, self.paths["port"])

    def log(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or (self.dirty and now - self.written_at >= WRITE_EVERY_S):
            _write_json(self.paths["json"], self.state)
            self.dirty = False
            self.written_at = now

    def on_init(self, msg: Any, now: float) -> None:
        requested = int(msg["interval_ms"])
        acked = min(max(requested, MIN_INTERVAL_MS), MAX_INTERVAL_MS)
        if self.current is not None and self.current["invocation_id"] == msg["invocation_id"]:
            # The same daemon again (it re-sends init until acknowledged): ack it again.
            self.current["inits"] += 1
        else:
            if self.current is not None:
                self.current["replaced"] = True  # gone without "exit", back with a new one
            self.current = {
                "invocation_id": msg["invocation_id"],
                "name": msg["name"],
                "interval_ms": requested,
                "acked_interval_ms": acked,
                "corrective_action": msg.fields.get("corrective_action"),
                "registered_at": time.time(),
                "inits": 1,
                "challenges_answered": 0,
                "missed": 0,
                "missed_in_a_row": 0,
                "last_health": None,
                "last_reason": None,
                "exit_reason": None,
                "lost": False,
                "replaced": False,
            }
            self.state["registrations"].append(self.current)
            self.log(f"registered {msg['name']} ({msg['invocation_id']}), interval {acked} ms")
        self.host.send(
            make(
                HEARTBEAT,
                "init_ack",
                HOST_TO_GUEST,
                invocation_id=msg["invocation_id"],
                interval_ms=acked,
            )
        )
        self.outstanding = None
        self.next_challenge = now + acked / 1000.0
        self.write(force=True)

    def on_message(self, msg: Any, now: float) -> None:
        if msg.app == HEARTBEAT and msg.msg_type == "init":
            self.on_init(msg, now)
        elif msg.app == HEARTBEAT and msg.msg_type == "challenge_response":
            if self.current is not None and msg["seq"] == self.outstanding:
                self.current["challenges_answered"] += 1
                self.current["missed_in_a_row"] = 0
                self.current["last_health"] = msg["health"]
                self.current["last_reason"] = msg["reason"]
                self.outstanding = None
                self.dirty = True
        elif msg.app == HEARTBEAT and msg.msg_type == "exit":
            if self.current is not None and self.current["invocation_id"] == msg["invocation_id"]:
                self.current["exit_reason"] = msg["reason"]
                self.log(f"exit from {self.current['name']}: {msg['reason']}")
                self.current = None
                self.outstanding = None
            self.write(force=True)
        else:
            key = f"{msg.app}/{msg.msg_type}"
            counts = self.state["other_messages"]
            counts[key] = counts.get(key, 0) + 1
            self.dirty = True

    def challenge(self, now: float) -> None:
        cur = self.current
        if cur is None or now < self.next_challenge:
            return
        if self.outstanding is not None:
            cur["missed"] += 1
            cur["missed_in_a_row"] += 1
            self.dirty = True
            if cur["missed_in_a_row"] >= LOST_AFTER:
                cur["lost"] = True
                self.log(f"lost {cur['name']}: {LOST_AFTER} challenges unanswered")
                self.current = None
                self.outstanding = None
                self.write(force=True)
                return
        self.host.seq += 1
        self.outstanding = self.host.seq
        self.host.send(
            make(
                HEARTBEAT,
                "challenge",
                HOST_TO_GUEST,
                seq=self.host.seq,
                nonce=f"{self.host.seq:08x}5eed",
            )
        )
        self.next_challenge = now + cur["acked_interval_ms"] / 1000.0

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.log(f"serving {self.host.path} as {self.paths['port']}")
        while not self.stopping:
            now = time.monotonic()
            wait = 0.1
            if self.current is not None:
                wait = min(wait, max(0.0, self.next_challenge - now))
            try:
                self.host.pump(wait)
            except Exception as exc:  # a bad frame: keep it, keep serving
                self.state["errors"].append(f"{type(exc).__name__}: {exc}"[:300])
                self.dirty = True
            now = time.monotonic()
            try:
                while self.host.inbox:
                    self.on_message(self.host.inbox.pop(0), now)
                self.challenge(now)
            except Exception as exc:  # e.g. the pty not writable: record it, keep serving
                self.state["errors"].append(f"{type(exc).__name__}: {exc}"[:300])
                self.dirty = True
            self.write()
        self.log("stopping")
        self.write(force=True)
        self.host.close()

    def _stop(self, *_: Any) -> None:
        self.stopping = True


def start(state_dir: str) -> int:
    paths = _paths(state_dir)
    pid = _peer_pid(state_dir)
    if pid is not None:
        print(json.dumps({"running": pid, "port": paths["port"]}))
        return 0
    os.makedirs(state_dir, exist_ok=True)
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:  # detach: own session, then a grandchild that init adopts
        os.close(ready_r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        try:
            devnull = os.open(os.devnull, os.O_RDONLY)
            log = os.open(paths["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.chdir("/")
            peer = Peer(state_dir)
            with open(paths["pid"], "w", encoding="utf-8") as fh:
                fh.write(f"{os.getpid()}\n")
            peer.write(force=True)
            os.write(ready_w, b"ready\n")
            os.close(ready_w)
            peer.run()
        except BaseException as exc:
            print(f"host peer failed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    os.close(ready_w)
    os.waitpid(child, 0)
    ready, _, _ = select.select([ready_r], [], [], 10)
    answer = os.read(ready_r, 64) if ready else b""
    os.close(ready_r)
    if answer != b"ready\n":
        sys.stderr.write(f"the host peer did not start; see {paths['log']}\n")
        return 1
    print(json.dumps({"started": _peer_pid(state_dir), "port": paths["port"]}))
    return 0


def stop(state_dir: str) -> int:
    paths = _paths(state_dir)
    pid = _peer_pid(state_dir)
    if pid is None:
        print("not running")
    else:
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 5
        while _peer_pid(state_dir) == pid and time.monotonic() < end:
            time.sleep(0.05)
        if _peer_pid(state_dir) == pid:
            os.kill(pid, signal.SIGKILL)
        print(f"stopped (pid {pid})")
    for path in (paths["pid"], paths["port"]):
        if os.path.lexists(path):
            os.unlink(path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    if not os.path.isabs(sys.argv[2]):
        sys.exit("DIR must be an absolute path")
    sys.exit(start(sys.argv[2]) if sys.argv[1] == "start" else stop(sys.argv[2]))
