"""Unit tests for module_utils/guest_ha_domain_xml.py (pure XML logic, no libvirt).

The compute agent imports the same file as ``guest_ha.compute.domain_xml`` (a
link to it), which is how these tests import it too: no ``sys.path`` edits."""

from __future__ import annotations

import ast
import os
import xml.etree.ElementTree as ET

import pytest

from guest_ha.compute import domain_xml as dx

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.unit

UUID = "3f1c2a9e-7b4d-4e2a-9c1f-5d6e7f8a9b0c"

# A persistent (inactive) definition as libvirt 9 writes it: no virtio-serial controller.
INACTIVE_NO_CONTROLLER = f"""<domain type='qemu'>
  <name>web-1</name>
  <uuid>{UUID}</uuid>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='piix3-uhci'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pci-root'/>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <graphics type='vnc' port='-1' autoport='yes' passwd='s3cr&apos;t'/>
    <audio id='1' type='none'/>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </memballoon>
  </devices>
</domain>
"""

# With a controller and the QEMU guest agent channel (another channel), but not ours.
INACTIVE_WITH_AGENT = f"""<domain type='qemu'>
  <name>db-1</name>
  <uuid>{UUID}</uuid>
  <memory unit='KiB'>65536</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='pci' index='0' model='pci-root'/>
    <controller type='virtio-serial' index='0'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </controller>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""

# libvirt drops <source> from the definition when the path is auto-generated.
INACTIVE_WITH_OURS = INACTIVE_WITH_AGENT.replace(
    "    <memballoon model='none'/>",
    """    <channel type='unix'>
      <target type='virtio' name='org.opnfv.ha.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='2'/>
    </channel>
    <memballoon model='none'/>""",
)

LIVE_PATH = "/var/lib/libvirt/qemu/channel/target/domain-7-db-1/org.opnfv.ha.0"
AGENT_PATH = "/var/lib/libvirt/qemu/channel/target/domain-7-db-1/org.qemu.guest_agent.0"
LIVE_CONNECTED = f"""<domain type='qemu' id='7'>
  <name>db-1</name>
  <uuid>{UUID}</uuid>
  <memory unit='KiB'>65536</memory>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='virtio-serial' index='0'>
      <alias name='virtio-serial0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </controller>
    <channel type='unix'>
      <source mode='bind' path='{AGENT_PATH}'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>
      <alias name='channel0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='{LIVE_PATH}'/>
      <target type='virtio' name='org.opnfv.ha.0' state='connected'/>
      <alias name='channel1'/>
      <address type='virtio-serial' controller='0' bus='0' port='2'/>
    </channel>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+0:+0</label>
  </seclabel>
</domain>
"""

NOVA_11 = f"""<domain type='kvm'>
  <name>instance-0000002a</name>
  <uuid>{UUID.upper()}</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="31.0.0"/>
      <nova:name>vnf-a-1</nova:name>
      <nova:creationTime>2025-05-01 10:00:00</nova:creationTime>
      <nova:flavor name="ha.small" id="7d5c3e1a-0000-4000-8000-000000000001">
        <nova:memory>2048</nova:memory>
        <nova:disk>20</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>2</nova:vcpus>
        <nova:extraSpecs>
          <nova:extraSpec name="guest_ha:heartbeat">true</nova:extraSpec>
          <nova:extraSpec name="guest_ha:server_group_messaging">False</nova:extraSpec>
          <nova:extraSpec name="hw:cpu_policy">shared</nova:extraSpec>
        </nova:extraSpecs>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="u-1">admin</nova:user>
        <nova:project uuid="p-1">demo</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="i-1"/>
    </nova:instance>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <devices>
    <controller type='virtio-serial' index='0'/>
  </devices>
</domain>
"""

NOVA_10 = """<domain type='kvm'>
  <name>instance-00000001</name>
  <uuid>aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.0">
      <nova:name>old-vm</nova:name>
      <nova:flavor name="m1.tiny">
        <nova:memory>512</nova:memory>
      </nova:flavor>
    </nova:instance>
  </metadata>
  <devices/>
</domain>
"""

OURS = """<domain type='qemu'>
  <name>standalone-1</name>
  <uuid>bbbbbbbb-cccc-4ddd-8eee-ffffffffffff</uuid>
  <metadata>
    <guest_ha:config xmlns:guest_ha="https://opendev.org/guest-ha/metadata/1">
      <heartbeat enabled='true'/>
      <server_group name='web'/>
    </guest_ha:config>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <devices>
  </devices>
</domain>
"""

MALFORMED = [
    "",
    "   ",
    "<domain><name>x</name>",
    "<domain type='qemu'><devices></domain>",
    "not xml at all",
    "<domain>&undefined;</domain>",
]


def channels(xml: str, name: str = dx.CHANNEL_NAME):
    root = ET.fromstring(xml)
    return [
        c
        for c in root.iter("channel")
        if c.find("target") is not None and c.find("target").get("name") == name
    ]


def vs_controllers(xml: str):
    return [c for c in ET.fromstring(xml).iter("controller") if c.get("type") == "virtio-serial"]


# ---------------------------------------------------------------------------
# module hygiene


def test_module_uses_standard_library_only():
    path = os.path.join(REPO, "module_utils", "guest_ha_domain_xml.py")
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots <= {"__future__", "dataclasses", "io", "typing", "xml"}, roots


def test_public_api_is_exported():
    for name in dx.__all__:
        assert hasattr(dx, name), name
    assert dx.CHANNEL_NAME == "org.opnfv.ha.0"
    assert dx.GUEST_HA_METADATA_NS == "https://opendev.org/guest-ha/metadata/1"
    assert issubclass(dx.DomainXmlError, ValueError)


# ---------------------------------------------------------------------------
# channel_xml


def test_channel_xml_without_path_lets_libvirt_choose():
    elem = ET.fromstring(dx.channel_xml(None))
    assert elem.tag == "channel" and elem.get("type") == "unix"
    source = elem.find("source")
    assert source.get("mode") == "bind"
    assert "path" not in source.attrib
    target = elem.find("target")
    assert target.attrib == {"type": "virtio", "name": "org.opnfv.ha.0"}
    assert dx.channel_xml() == dx.channel_xml(None)


def test_channel_xml_with_path_and_name():
    text = dx.channel_xml("/run/guest-ha/it's.sock", name="org.example.0")
    elem = ET.fromstring(text)
    assert elem.find("source").get("path") == "/run/guest-ha/it's.sock"
    assert elem.find("target").get("name") == "org.example.0"
    assert "&apos;" in text  # libvirt style: single-quoted attributes, escaped


@pytest.mark.parametrize("bad", ["relative.sock", "", "/" + "x" * 107, "/tmp/a\x00b", "~/x.sock"])
def test_channel_xml_rejects_bad_paths(bad):
    with pytest.raises(ValueError):
        dx.channel_xml(bad)


def test_socket_path_limit_is_107_bytes():
    dx.validate_socket_path("/" + "x" * 106)
    with pytest.raises(ValueError, match="107"):
        dx.validate_socket_path("/" + "é" * 60)  # 121 bytes in UTF-8


# ---------------------------------------------------------------------------
# find_channel / has_virtio_serial_controller


def test_find_channel_absent():
    assert dx.find_channel(INACTIVE_NO_CONTROLLER) is None
    assert dx.find_channel(INACTIVE_WITH_AGENT) is None  # another channel is not ours
    assert dx.find_channels(INACTIVE_WITH_AGENT) == []


def test_find_channel_live_connected():
    info = dx.find_channel(LIVE_CONNECTED)
    assert info is not None
    assert info.name == "org.opnfv.ha.0"
    assert info.socket_path == LIVE_PATH
    assert info.state == "connected" and info.connected
    assert info.source_mode == "bind" and info.channel_type == "unix"
    assert info.is_unix_bind
    assert info.alias == "channel1"
    # The device XML is what detachDeviceFlags needs: the whole <channel>, no tail.
    elem = ET.fromstring(info.xml)
    assert elem.tag == "channel"
    assert elem.find("source").get("path") == LIVE_PATH
    assert elem.find("address").get("port") == "2"
    assert info.xml.endswith("</channel>")


def test_find_channel_disconnected_and_other_name():
    live = LIVE_CONNECTED.replace("state='connected'", "state='disconnected'")
    info = dx.find_channel(live)
    assert info.state == "disconnected" and not info.connected
    agent = dx.find_channel(LIVE_CONNECTED, name="org.qemu.guest_agent.0")
    assert agent.alias == "channel0" and agent.socket_path.endswith("guest_agent.0")


def test_find_channel_in_definition_without_source():
    info = dx.find_channel(INACTIVE_WITH_OURS)
    assert info.socket_path is None and info.state is None and info.source_mode is None
    assert info.is_unix_bind  # libvirt binds an auto-generated path at start


def test_has_virtio_serial_controller():
    assert not dx.has_virtio_serial_controller(INACTIVE_NO_CONTROLLER)
    assert dx.has_virtio_serial_controller(INACTIVE_WITH_AGENT)
    assert dx.has_virtio_serial_controller(LIVE_CONNECTED)
    assert not dx.has_virtio_serial_controller("<domain/>")


# ---------------------------------------------------------------------------
# ensure_channel


def test_ensure_present_adds_controller_and_channel():
    new, changed = dx.ensure_channel(INACTIVE_NO_CONTROLLER, present=True)
    assert changed
    assert len(vs_controllers(new)) == 1
    assert vs_controllers(new)[0].get("index") == "0"
    (chan,) = channels(new)
    assert chan.get("type") == "unix"
    assert chan.find("source").get("mode") == "bind"
    assert "path" not in chan.find("source").attrib
    # nothing else was lost, secrets included (the module defines the SECURE XML)
    root = ET.fromstring(new)
    assert root.find("devices/graphics").get("passwd") == "s3cr't"
    before = ET.fromstring(INACTIVE_NO_CONTROLLER)
    assert len(root.find("devices")) == len(before.find("devices")) + 2


def test_ensure_present_is_idempotent():
    once, changed = dx.ensure_channel(INACTIVE_NO_CONTROLLER, True)
    twice, changed_again = dx.ensure_channel(once, True)
    assert changed and not changed_again
    assert twice == once  # the very same text comes back


def test_ensure_present_changes_only_devices_lines():
    new, _ = dx.ensure_channel(INACTIVE_NO_CONTROLLER, True)
    old_lines = INACTIVE_NO_CONTROLLER.splitlines()
    new_lines = new.splitlines()
    added = [line for line in new_lines if line not in old_lines]
    assert added == [
        "    <controller type='virtio-serial' index='0'/>",
        "    <channel type='unix'>",
        "      <source mode='bind'/>",
        "      <target type='virtio' name='org.opnfv.ha.0'/>",
        "    </channel>",
    ]
    assert [line for line in old_lines if line not in new_lines] == []
    assert new.endswith("</domain>\n")


def test_ensure_present_keeps_existing_controller_and_other_channel():
    new, changed = dx.ensure_channel(INACTIVE_WITH_AGENT, True)
    assert changed
    assert len(vs_controllers(new)) == 1
    assert len(channels(new)) == 1
    assert len(channels(new, "org.qemu.guest_agent.0")) == 1


def test_ensure_present_with_existing_channel_and_no_path_is_noop():
    new, changed = dx.ensure_channel(INACTIVE_WITH_OURS, True)
    assert not changed and new == INACTIVE_WITH_OURS
    live_new, live_changed = dx.ensure_channel(LIVE_CONNECTED, True)
    assert not live_changed and live_new == LIVE_CONNECTED


def test_ensure_present_updates_path_only_when_requested():
    new, changed = dx.ensure_channel(INACTIVE_WITH_OURS, True, socket_path="/run/gha/db-1.sock")
    assert changed
    (chan,) = channels(new)
    assert chan.find("source").attrib == {"mode": "bind", "path": "/run/gha/db-1.sock"}
    assert chan.find("address").get("port") == "2"  # address kept
    again, changed = dx.ensure_channel(new, True, socket_path="/run/gha/db-1.sock")
    assert not changed and again == new
    other, changed = dx.ensure_channel(new, True, socket_path="/run/gha/other.sock")
    assert changed and channels(other)[0].find("source").get("path") == "/run/gha/other.sock"
    kept, changed = dx.ensure_channel(new, True)  # no path requested: keep the pinned one
    assert not changed and kept == new


def test_ensure_present_replaces_foreign_layout():
    pty = INACTIVE_WITH_AGENT.replace(
        "    <memballoon model='none'/>",
        "    <channel type='pty'>\n      <target type='virtio' name='org.opnfv.ha.0'/>\n"
        "    </channel>\n    <memballoon model='none'/>",
    )
    new, changed = dx.ensure_channel(pty, True)
    assert changed
    (chan,) = channels(new)
    assert chan.get("type") == "unix" and chan.find("source").get("mode") == "bind"
    connect = INACTIVE_WITH_OURS.replace(
        "<target type='virtio' name='org.opnfv.ha.0'/>",
        "<source mode='connect' path='/tmp/x'/>\n"
        "      <target type='virtio' name='org.opnfv.ha.0'/>",
    )
    assert not dx.find_channel(connect).is_unix_bind
    new, changed = dx.ensure_channel(connect, True)
    assert changed and channels(new)[0].find("source").get("mode") == "bind"


def test_ensure_present_drops_duplicates():
    dup = INACTIVE_WITH_OURS.replace(
        "    <memballoon model='none'/>",
        "    <channel type='unix'>\n      <target type='virtio' name='org.opnfv.ha.0'/>\n"
        "    </channel>\n    <memballoon model='none'/>",
    )
    assert len(dx.find_channels(dup)) == 2
    new, changed = dx.ensure_channel(dup, True)
    assert changed and len(channels(new)) == 1
    assert channels(new)[0].find("address").get("port") == "2"  # the first one is kept


def test_ensure_absent_removes_channel_keeps_controller():
    new, changed = dx.ensure_channel(INACTIVE_WITH_OURS, present=False)
    assert changed
    assert channels(new) == []
    assert len(vs_controllers(new)) == 1
    assert len(channels(new, "org.qemu.guest_agent.0")) == 1
    assert new == INACTIVE_WITH_AGENT  # exact inverse, formatting included
    again, changed = dx.ensure_channel(new, present=False)
    assert not changed and again == new


def test_ensure_absent_without_channel_is_noop():
    new, changed = dx.ensure_channel(INACTIVE_NO_CONTROLLER, False)
    assert not changed and new == INACTIVE_NO_CONTROLLER


def test_ensure_absent_from_live_xml():
    new, changed = dx.ensure_channel(LIVE_CONNECTED, False)
    assert changed and channels(new) == []
    assert dx.find_channel(new, "org.qemu.guest_agent.0") is not None


def test_ensure_present_without_devices_element():
    new, changed = dx.ensure_channel("<domain type='qemu'><name>x</name></domain>", True)
    assert changed
    root = ET.fromstring(new)
    assert root.find("devices/controller").get("type") == "virtio-serial"
    assert root.find("devices/channel/target").get("name") == dx.CHANNEL_NAME
    assert dx.ensure_channel(new, True) == (new, False)


def test_ensure_present_into_empty_devices():
    new, changed = dx.ensure_channel(OURS, True)
    assert changed and len(channels(new)) == 1 and len(vs_controllers(new)) == 1


def test_ensure_keeps_metadata_prefixes():
    new, changed = dx.ensure_channel(OURS, True)
    assert changed
    assert "ns0" not in new
    assert "<guest_ha:config xmlns:guest_ha='https://opendev.org/guest-ha/metadata/1'>" in new
    assert "<libosinfo:os id='http://debian.org/debian/12'/>" in new
    assert dx.opt_in(new) == dx.opt_in(OURS)
    nova, _ = dx.ensure_channel(NOVA_11, True)
    assert "<nova:instance xmlns:nova=" in nova.replace("'", '"')
    assert dx.nova_metadata(nova) == dx.nova_metadata(NOVA_11)


def test_ensure_rejects_bad_socket_path():
    with pytest.raises(ValueError):
        dx.ensure_channel(INACTIVE_WITH_AGENT, True, socket_path="relative")


def test_normalize_xml_is_identity_on_libvirt_output():
    for sample in (INACTIVE_NO_CONTROLLER, INACTIVE_WITH_AGENT, LIVE_CONNECTED):
        assert dx.normalize_xml(sample) == sample
    # double quotes become libvirt's single quotes; content is the same
    norm = dx.normalize_xml(NOVA_11)
    assert ET.tostring(ET.fromstring(norm)) == ET.tostring(ET.fromstring(NOVA_11))


# ---------------------------------------------------------------------------
# metadata


def test_domain_uuid_and_name():
    assert dx.domain_uuid(NOVA_11) == UUID  # lower-cased
    assert dx.domain_name(LIVE_CONNECTED) == "db-1"
    assert dx.domain_uuid("<domain/>") is None and dx.domain_name("<domain/>") is None


def test_domain_metadata():
    elem = dx.domain_metadata(NOVA_11, dx.NOVA_NS)
    assert elem is not None and elem.tag == f"{{{dx.NOVA_NS}}}instance"
    assert dx.domain_metadata(NOVA_11, dx.GUEST_HA_METADATA_NS) is None
    assert dx.domain_metadata(INACTIVE_NO_CONTROLLER, dx.NOVA_NS) is None
    ours = dx.domain_metadata(OURS, dx.GUEST_HA_METADATA_NS)
    assert ours.tag == f"{{{dx.GUEST_HA_METADATA_NS}}}config"


def test_opt_in_from_our_metadata():
    opt = dx.opt_in(OURS)
    assert opt == dx.OptIn(heartbeat=True, server_group_messaging=True, server_group="web")
    assert opt.wants_channel
    assert dx.opt_in(NOVA_11) is None
    assert dx.opt_in(INACTIVE_NO_CONTROLLER) is None


@pytest.mark.parametrize(
    "body, expected",
    [
        ("<heartbeat/>", dx.OptIn(True, False, None)),
        ("<heartbeat enabled='false'/>", dx.OptIn(False, False, None)),
        ("<heartbeat enabled='no'/><server_group enabled='yes'/>", dx.OptIn(False, True, None)),
        ("<server_group name=' g1 ' enabled='false'/>", dx.OptIn(False, False, "g1")),
        (
            "<guest_ha:heartbeat enabled='1'/><guest_ha:server_group name='g2'/>",
            dx.OptIn(True, True, "g2"),
        ),
        ("", dx.OptIn(False, False, None)),
    ],
)
def test_opt_in_variants(body, expected):
    xml = (
        "<domain><metadata><guest_ha:config xmlns:guest_ha="
        f"'https://opendev.org/guest-ha/metadata/1'>{body}</guest_ha:config></metadata></domain>"
    )
    opt = dx.opt_in(xml)
    assert opt == expected
    assert opt.wants_channel == (expected.heartbeat or expected.server_group_messaging)


def test_opt_in_xml_round_trip():
    for opt in (dx.OptIn(True, True, "web"), dx.OptIn(True, False, None), dx.OptIn()):
        element = dx.opt_in_xml(opt)
        assert element.startswith("<guest_ha:config xmlns:guest_ha=")
        ET.fromstring(element)
        xml = f"<domain><metadata>{element}</metadata></domain>"
        assert dx.opt_in(xml) == opt


def test_opt_in_from_extra_specs():
    assert dx.opt_in_from_extra_specs({}) == dx.OptIn()
    assert dx.opt_in_from_extra_specs(
        {"guest_ha:heartbeat": "True", "guest_ha:server_group_messaging": "true"}
    ) == dx.OptIn(True, True, None)
    assert dx.opt_in_from_extra_specs({"guest_ha:heartbeat": "maybe"}) == dx.OptIn()


def test_nova_metadata_1_1_with_extra_specs():
    meta = dx.nova_metadata(NOVA_11)
    assert meta.instance_uuid == UUID
    assert meta.name == "vnf-a-1"
    assert meta.flavor_name == "ha.small"
    assert meta.flavor_id == "7d5c3e1a-0000-4000-8000-000000000001"
    assert meta.project_id == "p-1"
    assert meta.namespace == dx.NOVA_NS
    assert meta.extra_specs == {
        "guest_ha:heartbeat": "true",
        "guest_ha:server_group_messaging": "False",
        "hw:cpu_policy": "shared",
    }
    assert meta.opt_in() == dx.OptIn(heartbeat=True, server_group_messaging=False)


def test_nova_metadata_1_0_without_extra_specs():
    meta = dx.nova_metadata(NOVA_10)
    assert meta.namespace.endswith("/1.0")
    assert meta.name == "old-vm" and meta.flavor_name == "m1.tiny"
    assert meta.flavor_id is None and meta.extra_specs == {}
    assert meta.instance_uuid == "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    assert meta.opt_in() == dx.OptIn()


def test_nova_metadata_absent():
    assert dx.nova_metadata(INACTIVE_NO_CONTROLLER) is None
    assert dx.nova_metadata(OURS) is None


# ---------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("bad", MALFORMED)
@pytest.mark.parametrize(
    "func",
    [
        dx.find_channel,
        dx.has_virtio_serial_controller,
        lambda x: dx.ensure_channel(x, True),
        lambda x: dx.ensure_channel(x, False),
        lambda x: dx.domain_metadata(x, dx.NOVA_NS),
        dx.opt_in,
        dx.nova_metadata,
        dx.domain_uuid,
        dx.normalize_xml,
    ],
)
def test_malformed_xml_raises_domain_xml_error(func, bad):
    with pytest.raises(dx.DomainXmlError):
        func(bad)


def test_wrong_root_and_wrong_type():
    with pytest.raises(dx.DomainXmlError, match="<domain>"):
        dx.find_channel("<network><name>default</name></network>")
    with pytest.raises(dx.DomainXmlError):
        dx.find_channel(None)  # type: ignore[arg-type]


def test_bytes_input_is_accepted():
    assert dx.find_channel(LIVE_CONNECTED.encode()).socket_path == LIVE_PATH  # type: ignore[arg-type]
