"""The guest_ha_channel Ansible module against the real qemu:///system (QEMU TCG).

Every test runs the module through the ``ansible`` CLI (ad-hoc, JSON callback),
exactly as an operator would, on throw-away domains named ``gha-test-chan-*``:
64 MiB, no disk, no kernel. Such a domain starts and sits in the BIOS, which is
"running" enough for hot-plug. The domains are destroyed and undefined afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

from libvirt_support import ensure_libvirtd  # noqa: E402

pytestmark = pytest.mark.integration

CHANNEL = "org.opnfv.ha.0"


# ---------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def uri() -> str:
    return ensure_libvirtd()


@pytest.fixture(scope="module")
def libvirt_mod():
    return pytest.importorskip("libvirt")


@pytest.fixture(scope="module")
def ansible_env() -> Iterator[Dict[str, str]]:
    home = tempfile.mkdtemp(prefix="gha-ans-")
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_HOME=home,
        ANSIBLE_LOCAL_TEMP=os.path.join(home, "tmp"),
        ANSIBLE_REMOTE_TEMP=os.path.join(home, "remote"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(home, "cp"),
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
    )
    try:
        yield env
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _ansible_bin() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "ansible")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("ansible")
    if not found:
        pytest.skip("ansible is not installed (scripts/bootstrap.sh installs it)")
    return found


@pytest.fixture(scope="module")
def run(ansible_env: Dict[str, str], uri: str) -> Callable[..., Dict[str, Any]]:
    """Run the module once; return its result dict (``failed``/``msg`` on errors)."""
    ansible = _ansible_bin()

    def _run(args: Dict[str, Any], check: bool = False, diff: bool = False) -> Dict[str, Any]:
        cmd = [
            ansible,
            "localhost",
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-m",
            "guest_ha_channel",
            "-a",
            json.dumps(args),
        ]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        proc = subprocess.run(
            cmd, env=ansible_env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        try:
            out = json.loads(proc.stdout)
            return out["plays"][0]["tasks"][0]["hosts"]["localhost"]
        except (ValueError, KeyError, IndexError):
            raise AssertionError(
                f"unexpected ansible output (rc={proc.returncode})\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            ) from None

    return _run


def domain_xml(name: str, controller: bool) -> str:
    ctl = "<controller type='virtio-serial' index='0'/>" if controller else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_reboot>restart</on_reboot>
  <devices>
    {ctl}
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture
def make_domain(uri: str, libvirt_mod) -> Iterator[Callable[..., str]]:
    conn = libvirt_mod.open(uri)
    made: List[str] = []

    def _make(controller: bool = True, start: bool = False) -> str:
        name = f"gha-test-chan-{uuid.uuid4().hex[:8]}"
        dom = conn.defineXML(domain_xml(name, controller))
        made.append(name)
        if start:
            dom.create()
        return name

    try:
        yield _make
    finally:
        for name in made:
            try:
                dom = conn.lookupByName(name)
            except libvirt_mod.libvirtError:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt_mod.libvirtError:
                pass
            try:
                dom.undefine()
            except libvirt_mod.libvirtError:
                pass
        conn.close()


def virsh_xml(uri: str, name: str, inactive: bool = False) -> str:
    cmd = ["virsh", "-c", uri, "dumpxml", name]
    if inactive:
        cmd.append("--inactive")
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def our_channels(xml: str) -> List[ET.Element]:
    return [
        chan
        for chan in ET.fromstring(xml).iter("channel")
        if chan.find("target") is not None and chan.find("target").get("name") == CHANNEL
    ]


def has_controller(xml: str) -> bool:
    return any(c.get("type") == "virtio-serial" for c in ET.fromstring(xml).iter("controller"))


def socket_path_of(xml: str) -> Optional[str]:
    chans = our_channels(xml)
    assert len(chans) == 1, xml
    source = chans[0].find("source")
    return None if source is None else source.get("path")


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def diff_by_header(result: Dict[str, Any], word: str) -> Dict[str, str]:
    diffs = result["diff"]
    assert isinstance(diffs, list)
    matches = [d for d in diffs if word in d["before_header"]]
    assert len(matches) == 1, diffs
    return matches[0]


# ---------------------------------------------------------------------------
# tests


def test_shut_off_domain_persistent_only(run, make_domain, uri):
    name = make_domain(controller=False)
    before = virsh_xml(uri, name, inactive=True)
    assert not our_channels(before) and not has_controller(before)

    # check mode + diff: predicts the change, changes nothing
    res = run({"name": name}, check=True, diff=True)
    assert not res.get("failed"), res
    assert res["changed"] and res["persistent_changed"] and not res["live_changed"]
    assert virsh_xml(uri, name, inactive=True) == before
    diff = diff_by_header(res, "persistent")
    assert not our_channels(diff["before"]) and not has_controller(diff["before"])
    assert len(our_channels(diff["after"])) == 1 and has_controller(diff["after"])
    assert res["channel"] == {
        "name": CHANNEL,
        "present": True,
        "persistent": True,
        "live": None,
        "socket_path": None,
        "state": None,
    }

    # real run
    res = run({"name": name}, diff=True)
    assert res["changed"] and res["persistent_changed"] and not res["live_changed"], res
    after = virsh_xml(uri, name, inactive=True)
    assert len(our_channels(after)) == 1 and has_controller(after)
    assert our_channels(after)[0].get("type") == "unix"
    diff = diff_by_header(res, "persistent")
    assert not our_channels(diff["before"]) and len(our_channels(diff["after"])) == 1
    assert res["domain_uuid"] == ET.fromstring(after).findtext("uuid")

    # idempotent, also in check mode
    for check in (False, True):
        res = run({"name": name}, check=check)
        assert not res["changed"] and not res["persistent_changed"] and not res["live_changed"]
        assert res["channel"]["present"] is True
    assert virsh_xml(uri, name, inactive=True) == after

    # by UUID, removal of the persistent channel (the controller stays)
    res = run({"uuid": res["domain_uuid"], "state": "absent"})
    assert res["changed"] and res["persistent_changed"]
    gone = virsh_xml(uri, name, inactive=True)
    assert not our_channels(gone) and has_controller(gone)
    assert res["channel"]["present"] is False


def test_running_domain_live_and_persistent(run, make_domain, uri):
    name = make_domain(controller=True, start=True)
    live_before = virsh_xml(uri, name)
    assert not our_channels(live_before)

    res = run({"name": name}, check=True, diff=True)
    assert res["changed"] and res["live_changed"] and res["persistent_changed"], res
    assert not our_channels(virsh_xml(uri, name))
    assert not our_channels(virsh_xml(uri, name, inactive=True))
    live_diff = diff_by_header(res, "live")
    assert not our_channels(live_diff["before"]) and len(our_channels(live_diff["after"])) == 1

    res = run({"name": name}, diff=True)
    assert res["changed"] and res["live_changed"] and res["persistent_changed"], res
    live = virsh_xml(uri, name)
    path = socket_path_of(live)
    assert path and path.endswith("/" + CHANNEL), live
    assert is_socket(path), f"{path} is not a listening socket"
    assert our_channels(live)[0].find("source").get("mode") == "bind"
    assert len(our_channels(virsh_xml(uri, name, inactive=True))) == 1
    assert res["channel"]["socket_path"] == path
    assert res["channel"]["present"] and res["channel"]["live"] and res["channel"]["persistent"]
    assert res["channel"]["state"] in (None, "connected", "disconnected")
    assert len(our_channels(diff_by_header(res, "live")["after"])) == 1

    res = run({"name": name})
    assert not res["changed"] and not res["live_changed"] and not res["persistent_changed"]

    # absent: check mode first, then for real
    res = run({"name": name, "state": "absent"}, check=True)
    assert res["changed"] and res["live_changed"] and res["persistent_changed"]
    assert len(our_channels(virsh_xml(uri, name))) == 1

    res = run({"name": name, "state": "absent"}, diff=True)
    assert res["changed"] and res["live_changed"] and res["persistent_changed"], res
    assert not our_channels(virsh_xml(uri, name))
    assert not our_channels(virsh_xml(uri, name, inactive=True))
    assert has_controller(virsh_xml(uri, name, inactive=True))
    assert res["channel"]["present"] is False and res["channel"]["live"] is False

    res = run({"name": name, "state": "absent"})
    assert not res["changed"]


def test_running_domain_pinned_socket_path_and_live_false(run, make_domain, uri, short_tmp):
    name = make_domain(controller=True, start=True)

    # live=false: only the definition changes
    res = run({"name": name, "live": False})
    assert res["changed"] and res["persistent_changed"] and not res["live_changed"], res
    assert not our_channels(virsh_xml(uri, name))
    assert res["channel"]["live"] is False and res["channel"]["persistent"] is True

    # now hot-plug with libvirt's own path
    res = run({"name": name})
    assert res["live_changed"] and not res["persistent_changed"], res
    auto = socket_path_of(virsh_xml(uri, name))

    # pin the socket: the live channel is replaced, the definition updated
    pinned = os.path.join(short_tmp, "ha.sock")
    res = run({"name": name, "socket_path": pinned})
    assert res["live_changed"] and res["persistent_changed"], res
    assert socket_path_of(virsh_xml(uri, name)) == pinned != auto
    assert socket_path_of(virsh_xml(uri, name, inactive=True)) == pinned
    assert is_socket(pinned)
    assert res["channel"]["socket_path"] == pinned

    res = run({"name": name, "socket_path": pinned})
    assert not res["changed"], res
    # without socket_path, an existing channel keeps its path
    res = run({"name": name})
    assert not res["changed"], res


def test_running_domain_without_controller_fails_with_advice(run, make_domain, uri):
    name = make_domain(controller=False, start=True)

    res = run({"name": name}, check=True)
    assert res.get("failed"), res
    assert "cannot be hot-plugged" in res["msg"]
    assert "would be added" in res["msg"]
    assert not has_controller(virsh_xml(uri, name, inactive=True))

    res = run({"name": name})
    assert res.get("failed"), res
    msg = res["msg"]
    assert "no virtio-serial controller" in msg and "cannot be hot-plugged" in msg
    assert f"virsh shutdown {name}" in msg and f"virsh start {name}" in msg
    assert "reboot" in msg
    # the persistent definition was fixed; the running domain was not touched
    assert res["persistent_changed"] is True and res["live_changed"] is False
    inactive = virsh_xml(uri, name, inactive=True)
    assert has_controller(inactive) and len(our_channels(inactive)) == 1
    assert not our_channels(virsh_xml(uri, name))

    # A second run still fails (live is still missing the controller) but has nothing
    # left to change in the definition.
    res = run({"name": name})
    assert res.get("failed") and res["persistent_changed"] is False


def test_missing_domain(run, uri):
    name = f"gha-test-chan-missing-{uuid.uuid4().hex[:8]}"
    res = run({"name": name})
    assert res.get("failed")
    assert "No libvirt domain" in res["msg"] and name in res["msg"] and uri in res["msg"]

    ghost = str(uuid.uuid4())
    res = run({"uuid": ghost})
    assert res.get("failed") and ghost in res["msg"] and "No libvirt domain" in res["msg"]


def test_unreachable_uri(run):
    res = run({"name": "whatever", "uri": "qemu:///nowhere"})
    assert res.get("failed")
    assert "Cannot connect to libvirt at 'qemu:///nowhere'" in res["msg"]
    assert "unexpected qemu URI path" in res["msg"]  # libvirt's own message is included

    res = run({"name": "whatever", "uri": "qemu+unix:///system?socket=/nonexistent/sock"})
    assert res.get("failed") and "Cannot connect to libvirt" in res["msg"]
    assert "/nonexistent/sock" in res["msg"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        ({"uri": "qemu:///system"}, "one of the following is required: name, uuid"),
        ({"name": "a", "uuid": str(uuid.UUID(int=1))}, "mutually exclusive"),
        ({"uuid": "not-a-uuid"}, "not a valid UUID"),
        ({"name": "a", "socket_path": "relative.sock"}, "absolute"),
        ({"name": "a", "socket_path": "/" + "x" * 120}, "107 bytes"),
        ({"name": "a", "live": False, "persistent": False}, "nothing to manage"),
        ({"name": "a", "state": "gone"}, "value of state must be one of"),
    ],
)
def test_bad_arguments(run, args, fragment):
    res = run(args)
    assert res.get("failed"), res
    assert fragment in res["msg"], res["msg"]
