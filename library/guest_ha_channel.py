#!/usr/bin/python
# Copyright: guest-ha contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function  # noqa: UP010

__metaclass__ = type  # noqa: UP001

DOCUMENTATION = r"""
---
module: guest_ha_channel
short_description: Ensure the guest-ha virtio-serial channel on a libvirt domain
description:
  - Adds or removes the guest-ha host-to-guest channel, a C(<channel type='unix'>)
    device with C(<source mode='bind'>) and C(<target type='virtio' name='org.opnfv.ha.0'>),
    on a libvirt domain.
  - In the persistent definition the module also adds a C(<controller type='virtio-serial'>)
    when the domain has none.
  - On a running domain the channel is also hot-plugged (or unplugged) in the live
    configuration. A virtio-serial controller cannot be hot-plugged, so a running domain
    whose live configuration has no such controller makes the module fail, after the
    persistent definition was fixed. Shut the domain down and start it again (a reboot is not
    enough), then run the module again.
  - The XML logic lives in C(module_utils/guest_ha_domain_xml.py); it is shared with the
    guest-ha compute agent.
version_added: "0.1.0"
author:
  - guest-ha contributors (@guest-ha)
requirements:
  - python >= 3.8
  - libvirt-python
options:
  name:
    description:
      - Name of the libvirt domain.
      - Exactly one of O(name) and O(uuid) is required.
    type: str
  uuid:
    description:
      - UUID of the libvirt domain (for Nova instances, the instance UUID).
      - Exactly one of O(name) and O(uuid) is required.
    type: str
  uri:
    description:
      - libvirt connection URI.
    type: str
    default: qemu:///system
  state:
    description:
      - V(present) makes sure the channel exists, V(absent) removes it.
      - V(absent) leaves the virtio-serial controller in place.
    type: str
    choices: [present, absent]
    default: present
  socket_path:
    description:
      - Host path of the UNIX socket QEMU listens on.
      - When omitted, libvirt generates the path under its channel directory
        (for example C(/var/lib/libvirt/qemu/channel/target/domain-1-NAME/org.opnfv.ha.0))
        each time the domain starts or the channel is hot-plugged. This is the recommended
        setting; the compute agent always reads the path from the live XML.
      - When given, an existing channel with another path is updated. When omitted, an
        existing channel keeps its path.
      - Must be absolute and at most 107 bytes long. Ignored with O(state=absent).
    type: path
  live:
    description:
      - Also change the live configuration of a running (or paused) domain, by hot-plugging or
        unplugging the channel.
      - Has no effect on a domain that is not running.
    type: bool
    default: true
  persistent:
    description:
      - Change the persistent definition (what the domain gets at its next start).
      - Transient domains have no persistent definition; the module then warns and only acts
        on the live configuration.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and predict the change without modifying the domain.
    support: full
  diff_mode:
    description: >-
      Returns details on what has changed (or possibly needs changing in check_mode), when in diff
      mode: one entry for the persistent definition and one for the live XML of a running domain.
    support: full
notes:
  - Nova rewrites the domain XML on hard reboot, resize and migration. On compute nodes the
    guest-ha compute agent re-applies the channel itself; this module is for standalone hosts,
    images and one-off repairs.
  - Detaching leaves the old socket file behind on the host; libvirt removes it with the domain's
    channel directory when the domain stops.
seealso:
  - name: libvirt domain XML, channel devices
    description: Channel device format.
    link: https://libvirt.org/formatdomain.html#channel
"""

EXAMPLES = r"""
- name: Add the guest-ha channel to a domain (persistent and, if running, live)
  guest_ha_channel:
    name: web-1

- name: Same, addressing a Nova instance by UUID
  guest_ha_channel:
    uuid: 0b7d2f3c-5a4e-4d1b-9c6e-1f2a3b4c5d6e

- name: Pin the socket to a fixed path
  guest_ha_channel:
    name: web-1
    socket_path: /run/guest-ha/web-1.sock

- name: Prepare the definition only; the domain picks it up at its next start
  guest_ha_channel:
    name: web-1
    live: false

- name: Remove the channel everywhere, on a remote libvirt
  guest_ha_channel:
    name: web-1
    uri: qemu+ssh://root@compute-1/system
    state: absent

- name: Preview the change
  guest_ha_channel:
    name: web-1
  check_mode: true
  diff: true
"""

RETURN = r"""
changed:
  description: Whether the persistent definition or the live configuration changed.
  returned: always
  type: bool
  sample: true
persistent_changed:
  description: Whether the persistent definition changed (or would change in check mode).
  returned: always
  type: bool
  sample: true
live_changed:
  description: Whether the channel was hot-plugged or unplugged (or would be in check mode).
  returned: always
  type: bool
  sample: false
domain_uuid:
  description: UUID of the domain.
  returned: when the domain was found
  type: str
  sample: 0b7d2f3c-5a4e-4d1b-9c6e-1f2a3b4c5d6e
channel:
  description: The channel after the run (as predicted, in check mode).
  returned: when the domain was found
  type: dict
  contains:
    name:
      description: Virtio port name; the guest sees C(/dev/virtio-ports/NAME).
      type: str
      returned: always
      sample: org.opnfv.ha.0
    present:
      description: >-
        Whether the channel exists where the module acted: in the live XML of a running domain
        handled with O(live=true), else in the persistent definition.
      type: bool
      returned: always
      sample: true
    persistent:
      description: Whether the persistent definition has the channel; null for a transient domain.
      type: bool
      returned: always
      sample: true
    live:
      description: Whether the live XML has the channel; null when the domain is not running.
      type: bool
      returned: always
      sample: true
    socket_path:
      description: >-
        Host socket path. From the live XML when the domain runs; from the definition otherwise,
        where null means libvirt generates it at start.
      type: str
      returned: always
      sample: /var/lib/libvirt/qemu/channel/target/domain-3-web-1/org.opnfv.ha.0
    state:
      description: >-
        V(connected) when a guest process holds the port, V(disconnected), or null when libvirt
        does not report it (domain not running, or guest driver not loaded yet).
      type: str
      returned: always
      sample: disconnected
"""

# Ansible modules keep their documentation blocks above the imports.
import time  # noqa: E402
import traceback  # noqa: E402
import uuid as uuidlib  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

# Installed as the collection guest_ha.guest_ha, the XML logic is the collection's
# module_utils; run from this repository (ansible.cfg: library, module_utils) it
# is a plain module_utils file. Ansible ships whichever of the two it finds.
try:
    from ansible_collections.guest_ha.guest_ha.plugins.module_utils.guest_ha_domain_xml import (
        CHANNEL_NAME,
        DomainXmlError,
        channel_xml,
        ensure_channel,
        find_channel,
        find_channels,
        has_virtio_serial_controller,
        normalize_xml,
        validate_socket_path,
    )
except ImportError:
    from ansible.module_utils.guest_ha_domain_xml import (
        CHANNEL_NAME,
        DomainXmlError,
        channel_xml,
        ensure_channel,
        find_channel,
        find_channels,
        has_virtio_serial_controller,
        normalize_xml,
        validate_socket_path,
    )

LIBVIRT_IMPORT_ERROR = None
try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()

DETACH_TIMEOUT = 5.0


class ModuleFailure(Exception):
    """Abort with a message; ``extra`` goes into the result."""

    def __init__(self, msg, **extra):
        super().__init__(msg)
        self.msg = msg
        self.extra = extra


def _libvirt_quiet():
    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _open(uri):
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise ModuleFailure(f"Cannot connect to libvirt at {uri!r}: {exc}") from None


def _lookup(conn, uri, name, uuid):
    try:
        if uuid:
            return conn.lookupByUUIDString(uuid)
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        what = f"UUID {uuid!r}" if uuid else f"name {name!r}"
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise ModuleFailure(f"No libvirt domain with {what} at {uri!r}") from None
        raise ModuleFailure(f"Cannot look up the domain with {what} at {uri!r}: {exc}") from None


class ChannelManager:
    def __init__(self, module, dom):
        self.module = module
        self.dom = dom
        self.check = module.check_mode
        self.params = module.params
        self.present = module.params["state"] == "present"
        self.socket_path = module.params["socket_path"] if self.present else None
        self.label = dom.name()
        self.result = {
            "changed": False,
            "persistent_changed": False,
            "live_changed": False,
            "domain_uuid": dom.UUIDString(),
        }
        self.diffs = []
        self.persistent_has = None
        self.persistent_path = None
        self.live_info = None
        self.live_has = None

    # -- helpers ---------------------------------------------------------
    def _call(self, what, func, *args):
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise ModuleFailure(
                f"Failed to {what} of domain {self.label!r}: {exc}", **self.result
            ) from None

    def _mark(self, key):
        self.result[key] = True
        self.result["changed"] = True

    # -- persistent definition ------------------------------------------
    def persistent(self):
        if not self._call("check persistence", self.dom.isPersistent):
            self.module.warn(
                f"Domain {self.label!r} is transient (it has no persistent definition); "
                "only its live configuration is handled."
            )
            return
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE
        # The SECURE variant keeps passwords (VNC/SPICE) that defineXML would otherwise drop.
        secure = self._call(
            "read the persistent definition",
            self.dom.XMLDesc,
            flags | libvirt.VIR_DOMAIN_XML_SECURE,
        )
        # The diff shows the non-secure XML: no passwords in logs.
        before = None
        if self.module._diff:
            before = self._call("read the persistent definition", self.dom.XMLDesc, flags)
        new_xml, changed = ensure_channel(secure, self.present, self.socket_path)
        if changed:
            self._mark("persistent_changed")
            if not self.check:
                self._call(
                    "define the new persistent definition", self.dom.connect().defineXML, new_xml
                )
        if changed and self.check:
            final = new_xml
        else:
            final = self._call("read the persistent definition", self.dom.XMLDesc, flags)
        if before is not None:
            after = final
            if changed and self.check:
                before = normalize_xml(before)
                after = ensure_channel(before, self.present, self.socket_path)[0]
            self.diffs.append(
                {
                    "before_header": f"{self.label} (persistent definition)",
                    "after_header": f"{self.label} (persistent definition)",
                    "before": before,
                    "after": after,
                }
            )
        info = find_channel(final)
        self.persistent_has = info is not None
        self.persistent_path = info.socket_path if info else None

    def controller_message(self):
        name = self.label
        if not self.params["persistent"]:
            where = (
                "Run the module with persistent=true (the default) to add the controller "
                "and the channel to the persistent definition, then"
            )
        elif self.persistent_has is None:
            where = "The domain is transient: define it with a virtio-serial controller, then"
        elif self.check:
            where = (
                "The controller and the channel would be added to the persistent "
                "definition (check mode: nothing was changed). After a real run,"
            )
        else:
            where = (
                "The controller and the channel are now in the persistent definition "
                f"(persistent_changed={self.result['persistent_changed']})."
            )
            where += " To use them,"
        return (
            f"Domain {name!r} is running and its live configuration has no virtio-serial "
            f"controller, so the {CHANNEL_NAME} channel cannot be hot-plugged: QEMU cannot "
            f"hot-plug a virtio-serial controller. {where} shut the domain down and start it "
            f"again ('virsh shutdown {name}' then 'virsh start {name}'; a reboot keeps the "
            "running QEMU process and does not apply the new definition), then run this module "
            "again. Use live=false to change only the persistent definition without this error."
        )

    # -- live configuration ---------------------------------------------
    def live(self):
        live_flag = libvirt.VIR_DOMAIN_AFFECT_LIVE
        before = self._call("read the live XML", self.dom.XMLDesc, 0)
        info = find_channel(before)
        to_detach = []
        attach = False
        if self.present:
            if info is None:
                attach = True
            elif not info.is_unix_bind or (
                self.socket_path is not None and info.socket_path != self.socket_path
            ):
                to_detach = [info]
                attach = True
            if attach and not has_virtio_serial_controller(before):
                raise ModuleFailure(self.controller_message(), **self.result)
        else:
            to_detach = find_channels(before)

        if to_detach or attach:
            self._mark("live_changed")
        if not self.check:
            for old in to_detach:
                self._call("hot-unplug the channel", self.dom.detachDeviceFlags, old.xml, live_flag)
            if to_detach:
                self._wait_detached(len(find_channels(before)) - len(to_detach))
            if attach:
                self._call(
                    "hot-plug the channel",
                    self.dom.attachDeviceFlags,
                    channel_xml(self.socket_path),
                    live_flag,
                )

        if self.check:
            after = before
            if attach or to_detach:
                after = ensure_channel(before, self.present, self.socket_path)[0]
                before = normalize_xml(before)
        elif attach or to_detach:
            after = self._call("read the live XML", self.dom.XMLDesc, 0)
        else:
            after = before
        if self.module._diff:
            self.diffs.append(
                {
                    "before_header": f"{self.label} (live XML)",
                    "after_header": f"{self.label} (live XML)",
                    "before": before,
                    "after": after,
                }
            )
        self.live_info = find_channel(after)
        self.live_has = self.live_info is not None

    def _wait_detached(self, expected):
        # Unplugging a virtio-serial port is normally synchronous, but libvirt may report
        # success before QEMU confirms (DEVICE_DELETED); wait briefly for the live XML.
        deadline = time.monotonic() + DETACH_TIMEOUT
        while True:
            xml = self._call("read the live XML", self.dom.XMLDesc, 0)
            if len(find_channels(xml)) <= expected:
                return
            if time.monotonic() > deadline:
                self.module.warn(
                    f"The channel of domain {self.label!r} was unplugged but is still listed in "
                    f"the live XML after {DETACH_TIMEOUT:.0f} s; the guest may not have released "
                    "the port yet."
                )
                return
            time.sleep(0.1)

    # -- main ----------------------------------------------------------------
    def run(self):
        if self.params["persistent"]:
            self.persistent()
        active = self._call("check the state", self.dom.isActive)
        if self.params["live"] and active:
            self.live()
        if self.live_has is not None:
            present = self.live_has
            path = self.live_info.socket_path if self.live_info else None
            state = self.live_info.state if self.live_info else None
        else:
            present = bool(self.persistent_has)
            path = self.persistent_path
            state = None
            if active:
                # live=false on a running domain: still report what QEMU has now.
                info = find_channel(self._call("read the live XML", self.dom.XMLDesc, 0))
                self.live_has = info is not None
                if info is not None:
                    path, state = info.socket_path, info.state
        self.result["channel"] = {
            "name": CHANNEL_NAME,
            "present": present,
            "persistent": self.persistent_has,
            "live": self.live_has if active else None,
            "socket_path": path,
            "state": state,
        }
        return self.result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            uuid=dict(type="str"),
            uri=dict(type="str", default="qemu:///system"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            socket_path=dict(type="path"),
            live=dict(type="bool", default=True),
            persistent=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("name", "uuid")],
        required_one_of=[("name", "uuid")],
        supports_check_mode=True,
    )
    params = module.params
    if libvirt is None:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    if not params["live"] and not params["persistent"]:
        module.fail_json(msg="live and persistent are both false: there is nothing to manage")
    if params["uuid"]:
        try:
            params["uuid"] = str(uuidlib.UUID(params["uuid"]))
        except ValueError:
            module.fail_json(msg=f"uuid is not a valid UUID: {params['uuid']!r}")
    if params["name"] is not None and not params["name"].strip():
        module.fail_json(msg="name must not be empty")
    if params["socket_path"] is not None:
        if params["state"] == "absent":
            module.warn("socket_path is ignored with state=absent")
        else:
            try:
                validate_socket_path(params["socket_path"])
            except ValueError as exc:
                module.fail_json(msg=str(exc))

    _libvirt_quiet()
    conn = None
    manager = None
    result = None
    failure = None
    try:
        conn = _open(params["uri"])
        dom = _lookup(conn, params["uri"], params["name"], params["uuid"])
        manager = ChannelManager(module, dom)
        result = manager.run()
    except ModuleFailure as exc:
        failure = dict(exc.extra, msg=exc.msg)
    except DomainXmlError as exc:
        failure = {"msg": f"libvirt returned domain XML this module cannot parse: {exc}"}
    finally:
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
    # Report outside the except blocks: these are expected errors, not tracebacks.
    if failure is not None:
        if manager is not None and module._diff and manager.diffs:
            failure["diff"] = manager.diffs
        module.fail_json(**failure)
    if module._diff:
        result["diff"] = manager.diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
