"""Server group messaging through the real guest daemon process, over a pty.

The test is the host: it reads and writes the pty master with the protocol
core's encoder and decoder, while apps use the client library and the
``guest-ha-sg`` command against the daemon's app socket.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from c_guest_support import build_c_guest, c_guestd
from guest_ha.guest.client import HealthClient
from guest_ha.guest.sg_client import (
    MessageTooLarge,
    NotInServerGroup,
    OwnerTaken,
    ServerGroupClient,
    ServerGroupError,
)
from guest_ha.protocol import (
    HEARTBEAT,
    HOST_TO_GUEST,
    SERVER_GROUP,
    Message,
    make,
)
from guest_ha.protocol.messages import nack
from guest_ha_dev.testing.pty_host import PtyHost

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UUID_SELF = "0b7d2f3c-5a4e-4d1b-9c6e-1f2a3b4c5d6e"
UUID_PEER = "9f8e7d6c-5b4a-4392-8170-fedcba987654"


def member(uuid, name, state="active", power="running"):
    return {
        "uuid": uuid,
        "display_name": name,
        "host": "compute-1",
        "state": state,
        "power_state": power,
        "task_state": None,
    }


class FakeHost(PtyHost):
    """The host end of a pty standing in for the virtio port (server-group PDUs by default)."""

    def recv(self, msg_type: str, app: Optional[str] = SERVER_GROUP, timeout: float = 5.0):
        return super().recv(msg_type, app, timeout)


def broadcast_from_peer(data, source=UUID_PEER) -> Message:
    return make(SERVER_GROUP, "broadcast", HOST_TO_GUEST, source_instance=source, data=data)


class Daemon:
    def __init__(self, tmp_path: Path, port: str, *extra: str, cmd=None) -> None:
        self.socket = str(tmp_path / "run" / "app.sock")
        self.log_path = tmp_path / "guestd.log"
        args = [
            "--config", "/dev/null", "--port", port, "--checks-dir", str(tmp_path / "none"),
            "--app-socket", self.socket, "--name", "sg-vm", "--log-level", "debug", *extra,
        ]  # fmt: skip
        cmd = cmd or [sys.executable, "-m", "guest_ha.guest.daemon"]
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd + args, stdout=self.log_file, stderr=subprocess.STDOUT)
        end = time.monotonic() + 10
        while not os.path.exists(self.socket):
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < end, "app socket never appeared"
            time.sleep(0.02)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log_file.close()


@pytest.fixture
def host():
    h = FakeHost()
    yield h
    h.close()


@pytest.fixture(params=["python", pytest.param("c", marks=pytest.mark.c_guest)])
def daemon(request, tmp_path, host):
    """The Python daemon, and the C one (agents/guest-c): same flags, same app API."""
    cmd = [c_guestd()] if request.param == "c" else None
    d = Daemon(tmp_path, host.path, "--sg-status-timeout-ms", "2000", cmd=cmd)
    host.register()
    yield d
    d.stop()


def test_broadcast_both_ways(host, daemon):
    got: queue.Queue = queue.Queue()
    with ServerGroupClient(daemon.socket) as sg:
        sg.on_broadcast(lambda src, data: got.put((src, data)))
        sg.subscribe()
        sg.start()
        sg.broadcast({"role": "active", "epoch": 12, "name": "\u00e9t\u00e9"})
        pdu = host.recv("broadcast")
        assert dict(pdu.fields) == {
            "data": {"role": "active", "epoch": 12, "name": "\u00e9t\u00e9"}
        }
        with pytest.raises(MessageTooLarge):
            sg.broadcast("x" * 3049)
        host.send(broadcast_from_peer({"role": "standby"}))
        assert got.get(timeout=5) == (UUID_PEER, {"role": "standby"})
    # raw over-limit request: refused by the daemon, nothing on the wire
    with HealthClient(daemon.socket) as raw, pytest.raises(Exception, match="3050-byte limit"):
        raw.request("sg_broadcast", data="x" * 3049)
    host.send(make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=99, nonce="deadbeef00"))
    host.recv("challenge_response", HEARTBEAT)
    assert [m for m in host.inbox if m.app == SERVER_GROUP] == []
    assert daemon.terminate() == 0


def test_status_and_nack(host, daemon):
    result: queue.Queue = queue.Queue()
    with ServerGroupClient(daemon.socket) as sg:

        def ask():
            try:
                result.put(sg.request_status(timeout=2))
            except ServerGroupError as exc:
                result.put(exc)

        t = threading.Thread(target=ask)
        t.start()
        query = host.recv("status_query")
        host.answer_status(query, [member(UUID_SELF, "self"), member(UUID_PEER, "peer")])
        t.join(5)
        assert [m["uuid"] for m in result.get_nowait()] == [UUID_SELF, UUID_PEER]

        t = threading.Thread(target=ask)
        t.start()
        second = host.recv("status_query")
        assert second["seq"] == query["seq"] + 1
        host.send(nack(SERVER_GROUP, "status_query", "not_enabled: no server group messaging"))
        t.join(5)
        exc = result.get_nowait()
        assert isinstance(exc, NotInServerGroup)
        assert exc.log_msg == "not_enabled: no server group messaging"
    with HealthClient(daemon.socket) as client:
        counters = client.status()["server_group"]["counters"]
    assert counters["status_queries_sent"] == 2
    assert counters["nacks_received"] == 1


def test_second_subscriber_refused(host, daemon):
    with ServerGroupClient(daemon.socket) as first, ServerGroupClient(daemon.socket) as second:
        first.subscribe()
        with pytest.raises(OwnerTaken):
            second.subscribe()
        first.close()
        end = time.monotonic() + 5
        while True:
            try:
                second.subscribe()
                break
            except OwnerTaken:
                assert time.monotonic() < end
                time.sleep(0.02)


def test_slow_subscriber_does_not_stall_heartbeat(host, daemon):
    """An owner that never reads while the host floods it: challenges still get
    answered at once, and the daemon drops the oldest pushes."""
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(daemon.socket)
    stuck.sendall(b'{"op":"sg_subscribe"}\n')
    stuck.settimeout(5)
    assert json.loads(stuck.recv(4096).split(b"\n")[0])["ok"] is True
    pad = "z" * 2500
    worst = 0.0
    for burst in range(40):
        host.send(*[broadcast_from_peer({"n": burst * 25 + i, "pad": pad}) for i in range(25)])
        t0 = time.monotonic()
        assert host.challenge(timeout=2)["health"] == "healthy"
        worst = max(worst, time.monotonic() - t0)
    assert worst < 0.5, f"challenge answer took {worst:.3f} s"
    with HealthClient(daemon.socket) as client:
        status = client.status()
    assert status["counters"]["app_api"]["pushes_dropped"] > 0
    assert status["server_group"]["owner"]["pushes_dropped"] > 0
    assert status["server_group"]["counters"]["broadcasts_received"] == 1000
    stuck.close()
    assert daemon.terminate() == 0


def _sg_cli(daemon, *args):
    return [sys.executable, "-m", "guest_ha.guest.cli", "sg", "--socket", daemon.socket, *args]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_shell_command(host, daemon):
    out = subprocess.run(
        _sg_cli(daemon, "broadcast", "hello peers"), capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0, out.stderr
    assert host.recv("broadcast")["data"] == "hello peers"

    def answer():
        host.answer_status(host.recv("status_query"), [member(UUID_PEER, "vnf-b", "stopped")])

    t = threading.Thread(target=answer)
    t.start()
    out = subprocess.run(_sg_cli(daemon, "status"), capture_output=True, text=True, timeout=10)
    t.join(5)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["UUID", "NAME", "HOST", "STATE", "POWER_STATE", "TASK_STATE"]
    assert lines[1].split() == [UUID_PEER, "vnf-b", "compute-1", "stopped", "running", "-"]

    # SIGINT at its default: a shell without job control starts background
    # commands (a CI runner's, say) with SIGINT ignored, and the child inherits it.
    listener = subprocess.Popen(
        _sg_cli(daemon, "listen", "--json"),
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        end = time.monotonic() + 5
        while True:  # wait until it owns the role
            with HealthClient(daemon.socket) as client:
                if client.status()["server_group"]["owner"]:
                    break
            assert time.monotonic() < end
            time.sleep(0.02)
        host.send(
            broadcast_from_peer({"epoch": 1}),
            make(SERVER_GROUP, "notification", HOST_TO_GUEST, data=member(UUID_PEER, "b")),
        )
        assert listener.stdout is not None
        first = json.loads(listener.stdout.readline())
        second = json.loads(listener.stdout.readline())
        assert first == {"push": "broadcast", "source_instance": UUID_PEER, "data": {"epoch": 1}}
        assert second["push"] == "notification" and second["data"]["uuid"] == UUID_PEER
    finally:
        listener.send_signal(signal.SIGINT)
        assert listener.wait(5) == 0


def test_pyz_sg_subcommand(host, daemon, tmp_path):
    pyz = tmp_path / "guestd.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_guestd_pyz.py"), str(pyz)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    probe = subprocess.run(
        [sys.executable, "-I", str(pyz), "sg", "--help"], capture_output=True, text=True, timeout=10
    )
    if "guest-ha-sg" not in probe.stdout:
        pytest.skip("this build of guestd.pyz has no 'sg' subcommand yet")
    out = subprocess.run(
        [sys.executable, "-I", str(pyz), "sg", "--socket", daemon.socket, "broadcast", "via pyz"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert host.recv("broadcast")["data"] == "via pyz"


def test_c_app_hooks_example_app(host, daemon, tmp_path):
    """The C app hooks (agents/guest-c/include/guestha_app.h) through the example
    app, against either daemon: health callback, broadcast both ways, status."""
    app_bin = os.path.join(build_c_guest("all"), "gh-example-app")
    healthy_file = tmp_path / "healthy"
    healthy_file.write_text("ok")
    proc = subprocess.Popen(
        [app_bin, "--socket", daemon.socket, "--name", "c-app", "--health-file",
         str(healthy_file), "--broadcast", '{"from": "c", "n": [1, 2.5]}', "--status"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline()) == {"event": "ready"}
        assert dict(host.recv("broadcast").fields) == {"data": {"from": "c", "n": [1, 2.5]}}
        query = host.recv("status_query")
        host.answer_status(query, [member(UUID_SELF, "self"), member(UUID_PEER, "peer")])
        status = json.loads(proc.stdout.readline())
        assert status["event"] == "status" and status["ok"] is True
        assert [m["uuid"] for m in status["members"]] == [UUID_SELF, UUID_PEER]
        host.send(broadcast_from_peer({"role": "standby"}))
        assert json.loads(proc.stdout.readline()) == {
            "event": "broadcast",
            "source_instance": UUID_PEER,
            "data": {"role": "standby"},
        }
        assert host.challenge()["health"] == "healthy"
        healthy_file.unlink()
        answer = host.challenge_until(lambda m: m["health"] == "unhealthy")
        assert answer["reason"] == f"app c-app: {healthy_file} is missing"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert host.challenge_until(lambda m: m["health"] == "healthy")["reason"] == ""
