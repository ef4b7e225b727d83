"""The README's main job, end to end: ``scripts/aio.sh`` deploys the all-in-one
with ``playbooks/aio.yml`` (inventory/aio) and runs the live demo on real TCG
guests; a second run changes nothing; ``scripts/aio.sh --teardown`` removes it.

The machine may be shared, so the run is kept apart from anything else with
the demo's own switches: everything under a private root (``--root``), the
RabbitMQ node and the controller's status port on free ports, and its own
domain name prefix. The outcomes are checked in what the deployment itself
wrote (compute agent event log, controller log, guest consoles, libvirt), not
only in the demo's own summary.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator, List

import pytest

from process_support import run_logged

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AIO = os.path.join(REPO, "scripts", "aio.sh")


def _events(root: str) -> List[Dict[str, Any]]:
    with open(os.path.join(root, "var/log/guest-ha/events.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read(path: str) -> str:
    with open(path, errors="replace") as fh:
        return fh.read()


def _run_aio(args: List[str], timeout: float) -> Dict[str, Any]:
    proc = run_logged([AIO, *args], REPO, timeout)
    sys.stderr.write(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-8000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    summary = json.loads(lines[-1])
    summary["_stdout"] = proc.stdout
    return summary


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def aio_args(libvirt_uri: str) -> Iterator[Dict[str, Any]]:
    # libvirt_uri: libvirtd started the way the other e2e tests need it (their
    # private 0700 folders need QEMU to run as root), before the aio's compute
    # role would start it with the distribution's settings.
    if os.geteuid() != 0:
        pytest.skip("the all-in-one needs root")
    from guest_ha_dev.testing.rabbitmq import pick_free_ports

    root = tempfile.mkdtemp(prefix="gha-aio-", dir="/var/tmp")
    os.chmod(root, 0o755)  # the rabbitmq user and QEMU walk through it
    amqp, dist, status = pick_free_ports(3)
    prefix = f"gha-aio-{secrets.token_hex(3)}"
    args = [
        "--root", root,
        "-e", f"guest_ha_aio_rabbitmq_port={amqp}",
        "-e", f"guest_ha_rabbitmq_dist_port={dist}",
        "-e", f"guest_ha_rabbitmq_node=gha-aio-{secrets.token_hex(3)}@localhost",
        "-e", f"guest_ha_controller_status_listen=127.0.0.1:{status}",
        "-e", f"guest_ha_aio_domain_prefix={prefix}",
    ]  # fmt: skip
    info = {"root": root, "args": args, "amqp": amqp, "prefix": prefix, "torn_down": False}
    yield info
    if not info["torn_down"]:  # the test failed before its own teardown: do it here
        subprocess.run([AIO, "--teardown", *args], cwd=REPO, capture_output=True, timeout=600)
        for n in (1, 2, 3):
            for cmd in (["destroy"], ["undefine"]):
                subprocess.run(
                    ["virsh", "-c", "qemu:///system", *cmd, f"{prefix}-{n}"], capture_output=True
                )
    shutil.rmtree(root, ignore_errors=True)


def test_aio_demo_deploys_shows_a_fault_and_tears_down(aio_args) -> None:
    root, args, prefix = aio_args["root"], aio_args["args"], aio_args["prefix"]

    first = _run_aio(args, timeout=2400)
    assert first["result"] == "ok"
    facts = json.loads(_read(os.path.join(root, "etc/guest-ha/aio.json")))
    guests = {g["uuid"]: g for g in facts["guests"]}
    assert len(guests) == 3 and all(g["name"].startswith(prefix) for g in guests.values())

    # Heartbeats established: every guest registered with the deployed agent.
    events = _events(root)
    registered = {e["instance_uuid"] for e in events if e["kind"] == "registered"}
    assert registered == set(guests)
    assert sorted(first["registered"]) == sorted(guests)

    # A broadcast delivered: each console shows broadcasts from both peers, never
    # from itself (the source is stamped by the host).
    for uuid, guest in guests.items():
        heard = set(
            re.findall(r"RECEIVED broadcast from ([0-9a-f-]{36})", _read(guest["console_log"]))
        )
        assert heard == set(guests) - {uuid}, (guest["name"], heard)

    # The fault: detected by the compute agent, reported by the controller's log
    # reporter, published on the bus (the demo's listener), told to the peers,
    # then recovered.
    fault = first["fault"]
    victim = fault["instance_uuid"]
    assert victim in guests
    kinds = [e["kind"] for e in events if e["instance_uuid"] == victim]
    assert "heartbeat_lost" in kinds and "recovered" in kinds[kinds.index("heartbeat_lost") :]
    controller_log = _read(os.path.join(root, "var/log/guest-ha/controller.log"))
    assert f"[instance {victim}] heartbeat_lost on " in controller_log
    assert f"[instance {victim}] recovered on " in controller_log
    assert fault["notified_s"] > 0 and first["recovery"]["notified"] is True
    peers = {g["name"] for u, g in guests.items() if u != victim}
    assert set(fault["peers_told"]) <= peers and fault["peers_told"]
    for name in fault["peers_told"]:
        console = _read(next(g["console_log"] for g in guests.values() if g["name"] == name))
        assert re.search(
            rf"peer notification: .*'{victim}'.*'guest_health': 'heartbeat_lost'", console
        )

    # The domains carry the channel the playbook added and the opt-in metadata.
    for guest in guests.values():
        xml = subprocess.run(
            ["virsh", "-c", "qemu:///system", "dumpxml", guest["name"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "org.opnfv.ha.0" in xml and facts["server_group"] in xml

    # Second run: the playbook changes nothing, and the demo works again.
    second = _run_aio(args, timeout=1800)
    assert second["result"] == "ok"
    assert second["deploy"]["changed"] == 0, second["_stdout"][-6000:]

    # Teardown removes what it made.
    _run_aio(["--teardown", *args], timeout=900)
    aio_args["torn_down"] = True
    names = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [n for n in names if n.startswith(prefix)]
    for path in (
        "opt/guest-ha",
        "etc/guest-ha",
        "var/lib/guest-ha",
        "var/log/guest-ha",
        "var/lib/guest-ha-rabbitmq",
        "var/lib/libvirt/images/guest-ha-aio",
    ):
        assert not os.path.exists(os.path.join(root, path)), path
    assert not _port_open(aio_args["amqp"])
