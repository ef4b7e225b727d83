"""Server group messaging between guests booted by real Nova: groups created
through the Nova API, servers booted into them with the ``group`` scheduler
hint, membership read from Nova by the controller, and peer notifications
driven by the versioned notifications Nova itself emits on our RabbitMQ (no
payload is built by the test).  The guests run the test image's demo peer app
(``guest_ha.demo_peer=1``), which prints what it receives on its console.

Three servers at once: A and B in group "web", C alone in group "other"."""

from __future__ import annotations

import re
import time
from typing import Dict, Iterator

import pytest
from nova_support import BOOT_TIMEOUT, INTERVAL_MS, NovaWorld

from guest_ha_dev.sim.harness import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.nova]


@pytest.fixture(scope="module")
def groups(nova_world: NovaWorld, guest_image) -> Iterator[Dict[str, str]]:
    import os

    cloud = nova_world.cloud
    image = cloud.upload_test_guest(
        os.path.dirname(guest_image.rootfs),
        "gha-guest-peer",
        cmdline_extra=f"guest_ha.interval_ms={INTERVAL_MS} guest_ha.demo_peer=1",
    )
    web = cloud.server_group("web", "affinity")
    other = cloud.server_group("other", "affinity")
    flavor = nova_world.flavors["sgm"]
    servers: Dict[str, str] = {}
    try:
        # One at a time: group members are scheduled against each other.
        for tag, group in (("a", web), ("b", web), ("c", other)):
            servers[tag] = cloud.boot(f"gha-sg-{tag}", flavor, image, group=group)
            cloud.wait_status(servers[tag], "ACTIVE", BOOT_TIMEOUT)
        for uuid in servers.values():
            try:
                nova_world.agent.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
            except TimeoutError as exc:
                console = cloud.console_log(uuid, length=40)
                raise TimeoutError(f"{exc}\nconsole of {uuid}:\n{console}") from None
        yield {**servers, "web": web, "other": other}
    finally:
        for uuid in servers.values():
            if cloud.api("GET", f"/servers/{uuid}")[0] == 200:
                cloud.delete(uuid)


def received_from(console: str) -> set:
    return set(re.findall(r"RECEIVED broadcast from ([0-9a-f-]{36})", console))


def test_membership_comes_from_nova(nova_world: NovaWorld, groups) -> None:
    status, payload = nova_world.cloud.api("GET", f"/os-server-groups/{groups['web']}")
    assert status == 200
    assert set(payload["server_group"]["members"]) == {groups["a"], groups["b"]}


def test_broadcast_reaches_the_group_only(nova_world: NovaWorld, groups) -> None:
    cloud = nova_world.cloud
    a, b, c = groups["a"], groups["b"], groups["c"]
    wait_until(lambda: b in received_from(cloud.console_log(a)), 120)
    wait_until(lambda: a in received_from(cloud.console_log(b)), 60)
    # C (booted last) broadcasts too, to nobody: wait until it has, then give a
    # misrouted copy time to arrive before checking that none did.
    wait_until(lambda: "SENT broadcast" in cloud.console_log(c), 120)
    time.sleep(3.0)
    assert received_from(cloud.console_log(a)) == {b}  # never its own, never C's
    assert received_from(cloud.console_log(c)) == set()
    assert nova_world.agent.faults(a) == [] and nova_world.agent.faults(b) == []


def notes(nova_world: NovaWorld, uuid: str, about: str) -> list:
    """The peer notifications about ``about`` on ``uuid``'s console."""
    return [
        line
        for line in nova_world.cloud.console_log(uuid, length=None).splitlines()
        if "peer notification" in line and about in line
    ]


def test_peer_notifications_from_novas_own_notifications(nova_world: NovaWorld, groups) -> None:
    """Stopping, starting and rebooting B: Nova's instance.power_off,
    power_on and reboot notifications reach the controller, which tells A
    (B's peer) and not C."""
    cloud = nova_world.cloud
    a, b, c = groups["a"], groups["b"], groups["c"]

    def seen(uuid: str) -> list:
        return notes(nova_world, uuid, b)

    before = len(seen(a))
    cloud.action(b, {"os-stop": None})
    cloud.wait_status(b, "SHUTOFF", BOOT_TIMEOUT)
    wait_until(lambda: len(seen(a)) > before, 60)
    stopped = len(seen(a))
    cloud.action(b, {"os-start": None})
    cloud.wait_status(b, "ACTIVE", BOOT_TIMEOUT)
    wait_until(lambda: len(seen(a)) > stopped, 60)
    started = len(seen(a))
    cloud.action(b, {"reboot": {"type": "HARD"}})
    cloud.wait_status(b, "ACTIVE", BOOT_TIMEOUT)
    wait_until(lambda: len(seen(a)) > started, 60)
    assert seen(c) == []


def test_deleted_member_leaves_routing(nova_world: NovaWorld, groups) -> None:
    """Deleting B (Nova's instance.delete.end) tells A that B is deleted and
    drops B from the controller's routing without a restart."""
    cloud, ctl = nova_world.cloud, nova_world.controller
    a, b = groups["a"], groups["b"]
    members_before = ctl.status()["server_groups"]["members"]
    cloud.delete(b)
    wait_until(lambda: ctl.status()["server_groups"]["members"] == members_before - 1, 60)
    wait_until(lambda: any("deleted" in line for line in notes(nova_world, a, b)), 60)
    assert notes(nova_world, groups["c"], b) == []
    assert nova_world.controller.proc is not None and nova_world.controller.proc.poll() is None
