# Copyright: guest-ha contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Pure libvirt domain XML logic for guest-ha.

This module is shared by the Ansible module ``guest_ha_channel`` (imported as
``ansible.module_utils.guest_ha_domain_xml``) and by the compute agent
(``guest_ha.compute.domain_xml``, a symlink to this file). It therefore uses the
Python standard library only, runs on Python 3.8+, imports nothing from
Ansible or libvirt, and never talks to a hypervisor: every function takes and
returns XML text.

What it knows about:

* our virtio-serial channel, ``<channel type='unix'>`` with
  ``<source mode='bind'>`` (QEMU listens, the compute agent connects) and
  ``<target type='virtio' name='org.opnfv.ha.0'/>``;
* the virtio-serial controller the channel needs;
* opt-in metadata, both ours (standalone mode) and Nova's flavor extra specs.

Socket path: when no path is given, the ``<source>`` carries no ``path`` and
libvirt generates one when the domain starts (or when the channel is
hot-plugged), under its channel directory, e.g.
``/var/lib/libvirt/qemu/channel/target/domain-<id>-<name>/org.opnfv.ha.0``.
That is the default and what the compute agent expects: it always reads the
path from the live XML. An explicit path is only for operators who need a
fixed location (it must fit in ``sun_path``, 107 bytes).
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

__all__ = [
    "CHANNEL_NAME",
    "EXTRA_SPEC_HEARTBEAT",
    "EXTRA_SPEC_SERVER_GROUP_MESSAGING",
    "GUEST_HA_METADATA_NS",
    "GUEST_HA_METADATA_PREFIX",
    "MAX_SOCKET_PATH_BYTES",
    "NOVA_NAMESPACES",
    "NOVA_NS",
    "ChannelInfo",
    "DomainXmlError",
    "NovaMetadata",
    "OptIn",
    "channel_xml",
    "domain_metadata",
    "domain_name",
    "domain_uuid",
    "ensure_channel",
    "find_channel",
    "find_channels",
    "has_virtio_serial_controller",
    "normalize_xml",
    "nova_metadata",
    "opt_in",
    "opt_in_from_extra_specs",
    "opt_in_xml",
    "parse_domain",
    "validate_socket_path",
]

#: Name of the virtio-serial port (``/dev/virtio-ports/<name>`` in the guest).
CHANNEL_NAME = "org.opnfv.ha.0"

#: Namespace of our own standalone-mode opt-in metadata.
GUEST_HA_METADATA_NS = "https://opendev.org/guest-ha/metadata/1"
#: Prefix used when we write that metadata (``virsh metadata --key``).
GUEST_HA_METADATA_PREFIX = "guest_ha"

#: Nova's current metadata namespace; 1.0 is still found on old domains.
NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
#: Nova metadata namespaces, newest first.
NOVA_NAMESPACES = (NOVA_NS, "http://openstack.org/xmlns/libvirt/nova/1.0")

#: Flavor extra specs that opt an instance in.
EXTRA_SPEC_HEARTBEAT = "guest_ha:heartbeat"
EXTRA_SPEC_SERVER_GROUP_MESSAGING = "guest_ha:server_group_messaging"

#: ``sizeof(sun_path) - 1`` on Linux.
MAX_SOCKET_PATH_BYTES = 107

_TRUE = frozenset(("1", "true", "yes", "on", "y", "t"))
_FALSE = frozenset(("0", "false", "no", "off", "n", "f", ""))

# Prefixes for namespaces we know, so that re-serialised XML keeps readable
# prefixes instead of ElementTree's ns0, ns1...
_KNOWN_PREFIXES = {
    NOVA_NAMESPACES[0]: "nova",
    NOVA_NAMESPACES[1]: "nova",
    GUEST_HA_METADATA_NS: GUEST_HA_METADATA_PREFIX,
    "http://libosinfo.org/xmlns/libvirt/domain/1.0": "libosinfo",
    "http://libvirt.org/schemas/domain/qemu/1.0": "qemu",
}


class DomainXmlError(ValueError):
    """The XML is not well-formed or is not a libvirt domain (or device)."""


@dataclass(frozen=True)
class ChannelInfo:
    """Our channel as found in a domain XML.

    Attributes:
        name: the virtio target name (``org.opnfv.ha.0``).
        socket_path: ``<source path>``; None in a persistent definition where
            libvirt will generate the path at start.
        state: ``<target state>`` from live XML: ``'connected'`` when a guest
            process has the port open, ``'disconnected'``, or None when libvirt
            does not report it (inactive XML, or guest driver not loaded).
        source_mode: ``'bind'``, ``'connect'`` or None (no ``<source>``).
        channel_type: the ``<channel type>`` (``'unix'`` for ours).
        alias: ``<alias name>`` in live XML (e.g. ``channel0``), else None.
        xml: the ``<channel>`` device XML, suitable for
            ``virDomainDetachDeviceFlags``.
    """

    name: str
    socket_path: Optional[str]
    state: Optional[str]
    source_mode: Optional[str]
    channel_type: str
    alias: Optional[str]
    xml: str

    @property
    def connected(self) -> bool:
        """True when libvirt reports a guest process on the port."""
        return self.state == "connected"

    @property
    def is_unix_bind(self) -> bool:
        """True for a ``unix`` channel where QEMU listens (our layout).

        A ``unix`` channel without ``<source>`` counts: libvirt drops the
        element from the persistent XML when the path is auto-generated, and
        binds at start.
        """
        return self.channel_type == "unix" and self.source_mode in (None, "bind")


@dataclass(frozen=True)
class OptIn:
    """What a domain asks guest-ha for."""

    heartbeat: bool = False
    server_group_messaging: bool = False
    server_group: Optional[str] = None

    @property
    def wants_channel(self) -> bool:
        """True when any feature needs the virtio-serial channel."""
        return self.heartbeat or self.server_group_messaging


@dataclass(frozen=True)
class NovaMetadata:
    """Nova's ``<nova:instance>`` metadata of a domain.

    ``instance_uuid`` is the domain ``<uuid>``, which Nova sets to the
    instance UUID. ``extra_specs`` is empty when Nova does not write them
    (releases before 2025.1 write flavor name and sizes only).
    """

    instance_uuid: Optional[str]
    name: Optional[str]
    flavor_name: Optional[str]
    flavor_id: Optional[str] = None
    extra_specs: Dict[str, str] = field(default_factory=dict)
    project_id: Optional[str] = None
    namespace: str = NOVA_NS

    def opt_in(self) -> OptIn:
        """Opt-in derived from the flavor extra specs carried in the XML."""
        return opt_in_from_extra_specs(self.extra_specs)


# --------------------------------------------------------------------------
# parsing / serialising


class _Doc:
    """A parsed document plus the namespace declarations of each element.

    ElementTree forgets prefixes (it would write ``ns0:`` and hoist every
    ``xmlns`` to the root), so we remember where each ``xmlns:prefix`` was
    declared and write it back there. Nova and libvirt find metadata by
    namespace URI, but operators read the XML (and diffs) by prefix.
    """

    __slots__ = ("decls", "root", "trailer")

    def __init__(
        self, root: ET.Element, decls: Dict[int, List[Tuple[str, str]]], trailer: str = ""
    ) -> None:
        self.root = root
        self.decls = decls
        self.trailer = trailer  # whitespace after the root element (libvirt: "\n")

    def tostring(self) -> str:
        return _serialize(self.root, self.decls) + self.trailer


def _parse_doc(text: str, what: str = "domain XML") -> _Doc:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DomainXmlError(f"{what} is not UTF-8: {exc}") from None
    if not isinstance(text, str):
        raise DomainXmlError(f"{what} must be a string, not {type(text).__name__}")
    if not text.strip():
        raise DomainXmlError(f"{what} is empty")
    decls: Dict[int, List[Tuple[str, str]]] = {}
    pending: List[Tuple[str, str]] = []
    root = None
    try:
        for event, item in ET.iterparse(io.BytesIO(text.encode("utf-8")), ("start-ns", "start")):
            if event == "start-ns":
                pending.append(item)
            else:
                if root is None:
                    root = item
                if pending:
                    decls[id(item)] = pending
                    pending = []
    except ET.ParseError as exc:
        raise DomainXmlError(f"malformed {what}: {exc}") from None
    if root is None:  # pragma: no cover - expat reports "no element found"
        raise DomainXmlError(f"malformed {what}: no element found")
    return _Doc(root, decls, text[len(text.rstrip()) :])


def _parse_domain_doc(domain_xml: str) -> _Doc:
    doc = _parse_doc(domain_xml, "domain XML")
    if doc.root.tag != "domain":
        raise DomainXmlError(f"expected a <domain> root element, got <{doc.root.tag}>")
    return doc


def parse_domain(domain_xml: str) -> ET.Element:
    """Parse domain XML and return the ``<domain>`` root element.

    Raises:
        DomainXmlError: the text is not well-formed XML or the root element
            is not ``<domain>``.
    """
    return _parse_domain_doc(domain_xml).root


_XML_NS = "http://www.w3.org/XML/1998/namespace"


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attr(text: str) -> str:
    return (
        _escape_text(text)
        .replace("'", "&apos;")
        .replace('"', "&quot;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )


def _serialize(elem: ET.Element, decls: Mapping[int, List[Tuple[str, str]]]) -> str:
    """Write ``elem`` the way libvirt does: single quotes, ``<x/>``, own prefixes."""
    out: List[str] = []
    _write(elem, decls, {}, out, top=True)
    return "".join(out)


def _write(
    elem: ET.Element,
    decls: Mapping[int, List[Tuple[str, str]]],
    scope: Dict[str, str],
    out: List[str],
    top: bool = False,
) -> None:
    tag = elem.tag
    if not isinstance(tag, str):  # comments / PIs are not kept by the parser
        return
    own = list(decls.get(id(elem), ()))
    scope = dict(scope)  # prefix -> uri
    scope.update(own)

    def qname(name: str, attribute: bool) -> str:
        if not name.startswith("{"):
            if not attribute and scope.get(""):
                own.append(("", ""))
                scope[""] = ""
            return name
        uri, local = name[1:].split("}", 1)
        if uri == _XML_NS:
            return "xml:" + local
        for prefix, bound in scope.items():
            if bound == uri and (prefix or not attribute):
                return f"{prefix}:{local}" if prefix else local
        prefix = _KNOWN_PREFIXES.get(uri, "")
        if not prefix or prefix in scope:
            n = 0
            while f"ns{n}" in scope:
                n += 1
            prefix = f"ns{n}"
        own.append((prefix, uri))
        scope[prefix] = uri
        return f"{prefix}:{local}"

    name = qname(tag, False)
    attrs = [(qname(k, True), v) for k, v in elem.attrib.items()]
    out.append("<" + name)
    for prefix, uri in own:
        out.append(f" xmlns:{prefix}='{_escape_attr(uri)}'" if prefix else f" xmlns='{uri}'")
    for key, value in attrs:
        out.append(f" {key}='{_escape_attr(value)}'")
    children = list(elem)
    if not children and not elem.text:
        out.append("/>")
    else:
        out.append(">")
        if elem.text:
            out.append(_escape_text(elem.text))
        for child in children:
            _write(child, decls, scope, out)
        out.append(f"</{name}>")
    if elem.tail and not top:
        out.append(_escape_text(elem.tail))


def normalize_xml(domain_xml: str) -> str:
    """Re-serialise XML the way this module writes it.

    Useful to compare (or diff) a definition read from libvirt with one edited
    here: the output of :func:`ensure_channel` and ``normalize_xml`` of its
    input differ only where something was changed.
    """
    return _parse_doc(domain_xml, "XML").tostring()


def _bool(value: Optional[str], default: bool = False) -> bool:
    if value is None:
        return default
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return default


def domain_uuid(domain_xml: str) -> Optional[str]:
    """The domain ``<uuid>`` (lower case), or None when absent."""
    node = parse_domain(domain_xml).find("uuid")
    text = (node.text or "").strip() if node is not None else ""
    return text.lower() or None


def domain_name(domain_xml: str) -> Optional[str]:
    """The domain ``<name>``, or None when absent."""
    node = parse_domain(domain_xml).find("name")
    text = (node.text or "").strip() if node is not None else ""
    return text or None


# --------------------------------------------------------------------------
# channel


def validate_socket_path(socket_path: str) -> None:
    """Raise ValueError unless ``socket_path`` is usable for a unix socket.

    It must be absolute and at most :data:`MAX_SOCKET_PATH_BYTES` bytes.
    """
    if not isinstance(socket_path, str) or not socket_path:
        raise ValueError("socket_path must be a non-empty string")
    if not socket_path.startswith("/"):
        raise ValueError(f"socket_path must be an absolute path: {socket_path!r}")
    if "\x00" in socket_path:
        raise ValueError("socket_path must not contain NUL bytes")
    size = len(socket_path.encode("utf-8"))
    if size > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"socket_path is {size} bytes long; unix socket paths are limited to "
            f"{MAX_SOCKET_PATH_BYTES} bytes: {socket_path!r}"
        )


def _channel_element(socket_path: Optional[str], name: str) -> ET.Element:
    chan = ET.Element("channel", {"type": "unix"})
    source = ET.SubElement(chan, "source", {"mode": "bind"})
    if socket_path is not None:
        source.set("path", socket_path)
    ET.SubElement(chan, "target", {"type": "virtio", "name": name})
    return chan


def channel_xml(socket_path: Optional[str] = None, name: str = CHANNEL_NAME) -> str:
    """Device XML of our channel, for ``attachDeviceFlags`` or a definition.

    ``socket_path=None`` (the default and recommended setting) leaves ``path``
    out, so libvirt generates the socket under its channel directory when
    the domain starts or the device is hot-plugged; read it back from the
    live XML (:func:`find_channel`). Give a path only to pin the socket to a
    fixed location.

    Raises:
        ValueError: ``socket_path`` is not absolute or too long.
    """
    if socket_path is not None:
        validate_socket_path(socket_path)
    if not name:
        raise ValueError("channel name must not be empty")
    return _serialize(_indent(_channel_element(socket_path, name), "", "  "), {})


def _iter_channels(root: ET.Element, name: str) -> Iterator[Tuple[ET.Element, ET.Element]]:
    for devices in root.findall("devices"):
        for chan in devices.findall("channel"):
            target = chan.find("target")
            if target is None:
                continue
            if target.get("type") == "virtio" and target.get("name") == name:
                yield devices, chan


def _channel_info(chan: ET.Element, name: str) -> ChannelInfo:
    source = chan.find("source")
    target = chan.find("target")
    alias = chan.find("alias")
    return ChannelInfo(
        name=name,
        socket_path=source.get("path") if source is not None else None,
        state=target.get("state") if target is not None else None,
        source_mode=source.get("mode") if source is not None else None,
        channel_type=chan.get("type", ""),
        alias=alias.get("name") if alias is not None else None,
        xml=_serialize(chan, {}),
    )


def find_channels(domain_xml: str, name: str = CHANNEL_NAME) -> List[ChannelInfo]:
    """All ``<channel>`` devices whose virtio target is ``name`` (normally 0 or 1)."""
    root = parse_domain(domain_xml)
    return [_channel_info(chan, name) for _devices, chan in _iter_channels(root, name)]


def find_channel(domain_xml: str, name: str = CHANNEL_NAME) -> Optional[ChannelInfo]:
    """Our channel in ``domain_xml`` (live or persistent), or None.

    On live XML ``socket_path`` is the real socket QEMU listens on and
    ``state`` tells whether a guest process holds the port.
    """
    found = find_channels(domain_xml, name)
    return found[0] if found else None


def _virtio_serial_controllers(root: ET.Element) -> List[ET.Element]:
    return [
        ctl
        for devices in root.findall("devices")
        for ctl in devices.findall("controller")
        if ctl.get("type") == "virtio-serial"
    ]


def has_virtio_serial_controller(domain_xml: str) -> bool:
    """True when the domain has a ``<controller type='virtio-serial'>``.

    Note that QEMU also adds a virtio-serial controller implicitly when a
    domain *starts* with a virtio channel or console; libvirt then shows it in
    the live XML, so checking live XML is what tells whether hot-plug works.
    """
    return bool(_virtio_serial_controllers(parse_domain(domain_xml)))


# --------------------------------------------------------------------------
# editing


def _child_indent(parent: ET.Element, parent_indent: str, step: str) -> str:
    if parent.text and not parent.text.strip():
        text = parent.text
        return text[text.rfind("\n") + 1 :] if "\n" in text else parent_indent + step
    return parent_indent + step


def _indent(elem: ET.Element, indent: str, step: str) -> ET.Element:
    """Pretty-print a freshly built element (like ``ET.indent``, 3.9+)."""
    children = list(elem)
    if children:
        elem.text = "\n" + indent + step
        for i, child in enumerate(children):
            _indent(child, indent + step, step)
            child.tail = "\n" + indent + (step if i < len(children) - 1 else "")
    return elem


def _insert_device(devices: ET.Element, new: ET.Element, after_tags: Tuple[str, ...]) -> None:
    """Insert ``new`` after the last child with a tag in ``after_tags``.

    Falls back to the end of ``<devices>``. Keeps the indentation libvirt
    uses so diffs stay readable (libvirt re-orders devices on define anyway).
    """
    children = list(devices)
    indent = _child_indent(devices, "  ", "  ")
    step = "  "
    _indent(new, indent, step)
    pos = len(children)
    for i, child in enumerate(children):
        if child.tag in after_tags:
            pos = i + 1
    if not children:
        devices.text = "\n" + indent
        new.tail = "\n" + indent[: -len(step)] if len(indent) >= len(step) else "\n"
        devices.append(new)
        return
    if pos == len(children):
        last = children[-1]
        new.tail = last.tail
        last.tail = "\n" + indent
        devices.append(new)
    else:
        new.tail = "\n" + indent
        devices.insert(pos, new)


def _remove_device(devices: ET.Element, elem: ET.Element) -> None:
    children = list(devices)
    idx = children.index(elem)
    if idx == len(children) - 1 and idx > 0:
        # keep the closing </devices> indentation
        children[idx - 1].tail = elem.tail
    devices.remove(elem)


def _ensure_devices(root: ET.Element) -> ET.Element:
    devices = root.find("devices")
    if devices is None:
        devices = ET.Element("devices")
        _insert_device(root, devices, tuple(child.tag for child in root))
    return devices


def ensure_channel(
    domain_xml: str,
    present: bool,
    socket_path: Optional[str] = None,
    name: str = CHANNEL_NAME,
) -> Tuple[str, bool]:
    """Add or remove our channel in a domain definition.

    Meant for the *persistent* (inactive) XML, which may gain a controller;
    live domains need ``attachDeviceFlags`` instead.

    With ``present=True``:

    * adds ``<controller type='virtio-serial' index='0'/>`` when the domain
      has none (fine for a definition; it takes effect at the next start);
    * adds the channel when missing;
    * an existing ``unix``/``bind`` channel is kept as is, unless
      ``socket_path`` is given and differs, in which case its path is
      updated (``socket_path=None`` never touches an existing channel's
      path);
    * an existing channel with our name but another layout (``pty``,
      ``mode='connect'``...) is replaced by ours;
    * duplicates with our name are dropped (libvirt refuses them anyway).

    With ``present=False`` every channel with our name is removed; the
    controller stays (other devices may use it).

    Returns:
        ``(new_xml, changed)``. When nothing changed, ``new_xml`` is the
        input text unchanged, so calling it again is a no-op.

    Raises:
        DomainXmlError: malformed XML.
        ValueError: bad ``socket_path``.
    """
    if socket_path is not None:
        validate_socket_path(socket_path)
    doc = _parse_domain_doc(domain_xml)
    root = doc.root
    changed = False
    found = list(_iter_channels(root, name))

    if not present:
        for devices, chan in found:
            _remove_device(devices, chan)
            changed = True
        return (doc.tostring() if changed else domain_xml), changed

    devices = _ensure_devices(root)
    if not _virtio_serial_controllers(root):
        ctl = ET.Element("controller", {"type": "virtio-serial", "index": "0"})
        _insert_device(devices, ctl, ("controller",))
        changed = True

    keep = None
    for dev_parent, chan in found:
        info = _channel_info(chan, name)
        if keep is None and info.is_unix_bind:
            keep = chan
        else:
            _remove_device(dev_parent, chan)
            changed = True

    if keep is None:
        _insert_device(devices, _channel_element(socket_path, name), ("controller", "channel"))
        changed = True
    elif socket_path is not None:
        source = keep.find("source")
        if source is None:
            source = ET.Element("source")
            keep.insert(0, source)
            _reindent_children(keep)
        if source.get("path") != socket_path or source.get("mode") != "bind":
            source.set("mode", "bind")
            source.set("path", socket_path)
            changed = True

    return (doc.tostring() if changed else domain_xml), changed


def _reindent_children(elem: ET.Element) -> None:
    children = list(elem)
    if len(children) < 2:
        return
    inner = _child_indent(elem, "", "  ")
    if elem.text is None or not elem.text.strip():
        elem.text = elem.text if elem.text and "\n" in elem.text else "\n" + inner
    closing = children[-1].tail
    for child in children[:-1]:
        if child.tail is None or not child.tail.strip():
            child.tail = "\n" + inner
    children[-1].tail = closing


# --------------------------------------------------------------------------
# metadata


def domain_metadata(domain_xml: str, namespace_uri: str) -> Optional[ET.Element]:
    """The first element in ``<metadata>`` with namespace ``namespace_uri``.

    This is what ``virDomainGetMetadata(VIR_DOMAIN_METADATA_ELEMENT, uri)``
    returns, found in the domain XML instead (no extra libvirt call).
    Returns None when the domain has no such metadata.
    """
    root = parse_domain(domain_xml)
    prefix = f"{{{namespace_uri}}}"
    for meta in root.findall("metadata"):
        for child in meta:
            if isinstance(child.tag, str) and child.tag.startswith(prefix):
                return child
    return None


def _child(elem: ET.Element, local: str, ns: str) -> Optional[ET.Element]:
    """Child by local name, in ``ns`` or (leniently) in no namespace."""
    node = elem.find(f"{{{ns}}}{local}")
    if node is None:
        node = elem.find(local)
    return node


def opt_in(domain_xml: str) -> Optional[OptIn]:
    """Parse our standalone opt-in metadata; None when the domain has none.

    Format (children may also carry the ``guest_ha:`` prefix)::

        <metadata>
          <guest_ha:config xmlns:guest_ha="https://opendev.org/guest-ha/metadata/1">
            <heartbeat enabled='true'/>
            <server_group name='web'/>
          </guest_ha:config>
        </metadata>

    ``<heartbeat>`` without ``enabled`` means enabled. ``<server_group>``
    enables server group messaging unless ``enabled='false'``; ``name`` is
    the group (None: let the YAML file decide the group).
    """
    node = domain_metadata(domain_xml, GUEST_HA_METADATA_NS)
    if node is None:
        return None
    heartbeat = False
    hb = _child(node, "heartbeat", GUEST_HA_METADATA_NS)
    if hb is not None:
        heartbeat = _bool(hb.get("enabled"), default=True)
    messaging = False
    group = None
    sg = _child(node, "server_group", GUEST_HA_METADATA_NS)
    if sg is not None:
        messaging = _bool(sg.get("enabled"), default=True)
        group = (sg.get("name") or "").strip() or None
    return OptIn(heartbeat=heartbeat, server_group_messaging=messaging, server_group=group)


def opt_in_xml(opt: OptIn) -> str:
    """The ``<guest_ha:config>`` element for ``opt``.

    Suitable for ``virsh metadata DOMAIN --uri
    https://opendev.org/guest-ha/metadata/1 --key guest_ha --set "$XML"`` or
    ``virDomainSetMetadata``.
    """
    ns = GUEST_HA_METADATA_NS
    cfg = ET.Element(f"{{{ns}}}config")
    ET.SubElement(cfg, f"{{{ns}}}heartbeat", {"enabled": "true" if opt.heartbeat else "false"})
    attrs = {"enabled": "true" if opt.server_group_messaging else "false"}
    if opt.server_group:
        attrs["name"] = opt.server_group
    ET.SubElement(cfg, f"{{{ns}}}server_group", attrs)
    return _serialize(_indent(cfg, "", "  "), {id(cfg): [(GUEST_HA_METADATA_PREFIX, ns)]})


def opt_in_from_extra_specs(extra_specs: Mapping[str, str]) -> OptIn:
    """Opt-in from Nova flavor extra specs.

    ``guest_ha:heartbeat=true`` and ``guest_ha:server_group_messaging=true``;
    any other value (or a missing key) means off.
    """
    specs = extra_specs or {}
    return OptIn(
        heartbeat=_bool(specs.get(EXTRA_SPEC_HEARTBEAT)),
        server_group_messaging=_bool(specs.get(EXTRA_SPEC_SERVER_GROUP_MESSAGING)),
        server_group=None,
    )


def nova_metadata(domain_xml: str) -> Optional[NovaMetadata]:
    """Nova's instance metadata, or None when Nova did not create the domain.

    Nova writes (namespace ``.../nova/1.1``; ``1.0`` on old domains)::

        <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
          <nova:name>web-1</nova:name>
          <nova:flavor name="m1.small" id="...">
            <nova:memory>2048</nova:memory> ...
            <nova:extraSpecs>
              <nova:extraSpec name="guest_ha:heartbeat">true</nova:extraSpec>
            </nova:extraSpecs>
          </nova:flavor>
          <nova:owner><nova:project uuid="...">demo</nova:project>...</nova:owner>
        </nova:instance>

    ``extraSpecs`` (and the flavor ``id``) exist only in Nova 2025.1 and
    later; older releases need the flavor looked up in the Nova API by name.
    """
    root = parse_domain(domain_xml)
    inst = None
    ns = NOVA_NS
    for candidate in NOVA_NAMESPACES:
        for meta in root.findall("metadata"):
            inst = meta.find(f"{{{candidate}}}instance")
            if inst is not None:
                ns = candidate
                break
        if inst is not None:
            break
    if inst is None:
        return None

    def text(path: str) -> Optional[str]:
        node = inst.find(path)
        if node is None or node.text is None:
            return None
        return node.text.strip() or None

    q = f"{{{ns}}}"
    flavor = inst.find(q + "flavor")
    specs: Dict[str, str] = {}
    flavor_name = flavor_id = None
    if flavor is not None:
        flavor_name = flavor.get("name")
        flavor_id = flavor.get("id")
        container = flavor.find(q + "extraSpecs")
        if container is not None:
            for spec in container.findall(q + "extraSpec"):
                key = spec.get("name")
                if key:
                    specs[key] = (spec.text or "").strip()
    project = inst.find(q + "owner/" + q + "project")
    uuid_node = root.find("uuid")
    instance_uuid = None
    if uuid_node is not None and uuid_node.text and uuid_node.text.strip():
        instance_uuid = uuid_node.text.strip().lower()
    return NovaMetadata(
        instance_uuid=instance_uuid,
        name=text(q + "name"),
        flavor_name=flavor_name,
        flavor_id=flavor_id,
        extra_specs=specs,
        project_id=project.get("uuid") if project is not None else None,
        namespace=ns,
    )
