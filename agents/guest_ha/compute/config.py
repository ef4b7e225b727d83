"""Compute agent configuration: a YAML file checked into typed dataclasses.

Every error names the offending key, so an operator sees at once what to fix.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from ..protocol import ChannelLimits, HostPolicy
from .recovery import RecoveryPolicy, parse_policy

DEFAULT_STATUS_SOCKET = "/run/guest-ha/compute.sock"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


class ConfigError(ValueError):
    """The configuration is invalid; the message says where and why."""


@dataclass(frozen=True)
class VmSpec:
    """One VM to heartbeat: its identity comes from the socket, never from the guest."""

    uuid: str
    name: str
    socket_path: str
    heartbeat: bool = True
    """Report heartbeat faults for this VM (off: the channel serves messaging only)."""
    server_group_messaging: bool = False
    server_group: Optional[str] = None
    """Standalone group name (set by the operator, never by the guest)."""


@dataclass(frozen=True)
class ReconnectPolicy:
    initial_s: float = 0.1
    max_s: float = 5.0
    stable_s: float = 10.0
    """A connection must stay up this long before the backoff resets."""


@dataclass(frozen=True)
class EventsConfig:
    log: bool = True
    jsonl: Optional[str] = None


@dataclass(frozen=True)
class LibvirtConfig:
    """Discovery of VMs through libvirt (instead of, or besides, a static list)."""

    enabled: bool = False
    uri: str = "qemu:///system"
    mode: str = "standalone"
    """``standalone``: opt-in from domain metadata or ``optin_file``. ``nova``: from
    the flavor extra spec ``guest_ha:heartbeat`` (domain metadata, else the Nova API)."""
    optin_file: Optional[str] = None
    """YAML file listing opted-in domains (standalone mode)."""
    optin_metadata: bool = True
    """Honour ``<guest_ha:config>`` in the domain metadata (standalone mode)."""
    manage_channels: bool = True
    """Hot-attach the channel to opted-in running domains that lack it."""
    destroyed_is_fault: bool = True
    """Report ``virsh destroy`` as ``vm_crashed`` (set false where an orchestrator
    destroys domains as part of normal operations)."""
    reconnect_max_s: float = 10.0
    domain_names: Optional[str] = None
    """Shell-style pattern (``fnmatch``): only domains whose name matches are
    considered, for example Nova's ``instance_name_template`` prefix
    (``instance-*``) on a libvirtd that also runs domains others manage.
    None: every domain."""
    nova_clouds_yaml: str = "/etc/guest-ha/clouds.yaml"
    """Credentials for the Nova API lookups of nova mode (keystoneauth1)."""
    nova_cloud: str = "guest-ha"
    nova_region: Optional[str] = None
    nova_interface: str = "internal"
    nova_cache_ttl_s: float = 300.0

    def __post_init__(self) -> None:
        if self.mode not in ("standalone", "nova"):
            raise ValueError("mode must be standalone or nova")
        if self.nova_interface not in ("public", "internal", "admin"):
            raise ValueError("nova_interface must be public, internal or admin")
        if self.optin_file is not None and not self.optin_file.startswith("/"):
            raise ValueError("optin_file must be an absolute path")
        if self.reconnect_max_s <= 0:
            raise ValueError("reconnect_max_s must be positive")
        if self.domain_names is not None and not self.domain_names.strip():
            raise ValueError("domain_names must be a non-empty pattern (or null for every domain)")


@dataclass(frozen=True)
class ControllerLinkConfig:
    """Forwarding of events to the controllers over oslo.messaging."""

    enabled: bool = False
    transport_url: Optional[str] = None
    """Overrides ``[DEFAULT] transport_url`` of ``messaging_config``."""
    messaging_config: Optional[str] = "/etc/guest-ha/messaging.conf"
    """oslo.config file with the transport and ``[guest_ha]`` messaging options
    (sample: ``oslo-config-generator --namespace guest_ha.compute``)."""
    spool_dir: str = "/var/lib/guest-ha/spool"
    host: Optional[str] = None
    """This compute host's name as the controllers know it (default: hostname)."""

    def __post_init__(self) -> None:
        if not self.spool_dir.startswith("/"):
            raise ValueError("spool_dir must be an absolute path")


@dataclass(frozen=True)
class ComputeConfig:
    vms: List[VmSpec] = field(default_factory=list)
    socket_dir: Optional[str] = None
    rescan_interval_s: float = 2.0
    heartbeat: HostPolicy = field(default_factory=HostPolicy)
    limits: ChannelLimits = field(default_factory=ChannelLimits)
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    events: EventsConfig = field(default_factory=EventsConfig)
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    controller: ControllerLinkConfig = field(default_factory=ControllerLinkConfig)
    recovery: RecoveryPolicy = field(default_factory=RecoveryPolicy)
    """The host's recovery policy (off by default; domains may override it)."""
    status_socket: Optional[str] = DEFAULT_STATUS_SOCKET
    log_level: str = "info"
    metrics_listen: Optional[str] = None
    """``host:port`` of the Prometheus endpoint (``:port``: loopback); None disables."""


def looks_like_uuid(text: str) -> bool:
    return bool(_UUID_RE.match(text))


def _section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: Dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        default = known[key].default
        if value is None and (default is None or "Optional" in str(known[key].type)):
            kwargs[key] = None
            continue
        expected = type(default) if default is not None else str
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is bool and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: must be true or false")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where}.{key}: must be of type {expected.__name__}, got {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _vms(raw: Any) -> List[VmSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError("vms: must be a list")
    out: List[VmSpec] = []
    seen = set()
    for i, item in enumerate(raw):
        where = f"vms[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: must be a mapping with uuid, socket and optional name")
        unknown = set(item) - {"uuid", "name", "socket", "heartbeat", "server_group"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        uuid, sock = item.get("uuid"), item.get("socket")
        if not isinstance(uuid, str) or not looks_like_uuid(uuid):
            raise ConfigError(f"{where}.uuid: must be an instance UUID, got {uuid!r}")
        if not isinstance(sock, str) or not sock.startswith("/"):
            raise ConfigError(f"{where}.socket: must be an absolute path, got {sock!r}")
        if uuid in seen:
            raise ConfigError(f"{where}.uuid: duplicate instance {uuid}")
        seen.add(uuid)
        name = item.get("name", uuid)
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name: must be a string")
        heartbeat = item.get("heartbeat", True)
        group = item.get("server_group")
        if not isinstance(heartbeat, bool):
            raise ConfigError(f"{where}.heartbeat: must be true or false")
        if group is not None and not isinstance(group, str):
            raise ConfigError(f"{where}.server_group: must be a string")
        out.append(
            VmSpec(
                uuid=uuid,
                name=name,
                socket_path=sock,
                heartbeat=heartbeat,
                server_group_messaging=group is not None,
                server_group=group,
            )
        )
    return out


def _recovery(raw: Any) -> RecoveryPolicy:
    try:
        return parse_policy(raw, "recovery")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def parse_config(raw: Any) -> ComputeConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("top level: must be a mapping")
    known = {f.name for f in dataclasses.fields(ComputeConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    socket_dir = raw.get("socket_dir")
    if socket_dir is not None and not (isinstance(socket_dir, str) and socket_dir.startswith("/")):
        raise ConfigError("socket_dir: must be an absolute path")
    rescan = raw.get("rescan_interval_s", 2.0)
    if not isinstance(rescan, (int, float)) or isinstance(rescan, bool) or rescan <= 0:
        raise ConfigError("rescan_interval_s: must be a positive number")
    status_socket = raw.get("status_socket", DEFAULT_STATUS_SOCKET)
    if status_socket is not None and not isinstance(status_socket, str):
        raise ConfigError("status_socket: must be a path or null")
    level = raw.get("log_level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level: must be debug, info, warning or error")
    reconnect = _section(ReconnectPolicy, raw.get("reconnect"), "reconnect")
    if not 0 < reconnect.initial_s <= reconnect.max_s:
        raise ConfigError("reconnect: need 0 < initial_s <= max_s")
    if reconnect.stable_s < 0:
        raise ConfigError("reconnect: stable_s must not be negative")
    return ComputeConfig(
        vms=_vms(raw.get("vms")),
        socket_dir=socket_dir,
        rescan_interval_s=float(rescan),
        heartbeat=_section(HostPolicy, raw.get("heartbeat"), "heartbeat"),
        limits=_section(ChannelLimits, raw.get("limits"), "limits"),
        reconnect=reconnect,
        events=_section(EventsConfig, raw.get("events"), "events"),
        libvirt=_section(LibvirtConfig, raw.get("libvirt"), "libvirt"),
        controller=_section(ControllerLinkConfig, raw.get("controller"), "controller"),
        recovery=_recovery(raw.get("recovery")),
        status_socket=status_socket,
        log_level=level,
        metrics_listen=_metrics_listen(raw.get("metrics_listen")),
    )


def load_config(path: str) -> ComputeConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _metrics_listen(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    from .metrics import parse_listen

    try:
        parse_listen(str(value))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return str(value)
