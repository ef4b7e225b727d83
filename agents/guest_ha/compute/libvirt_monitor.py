"""Discovery and lifecycle tracking of VMs through libvirt.

Two threads, neither of which ever touches a VM socket: libvirt's default event
loop (it only queues what it hears), and a worker that talks to libvirtd
(reads domain XML, hot-attaches the channel) and hands the results to the
engine with :meth:`HeartbeatEngine.post`. A slow or restarting libvirtd can
delay discovery but never a challenge.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import yaml

from ..cloud_session import session_from_clouds_yaml
from ..protocol.heartbeat import VM_CRASHED
from . import domain_xml
from .config import LibvirtConfig, VmSpec
from .engine import HeartbeatEngine
from .nova import NovaFlavorOptIn, NovaLookupError
from .recovery import RecoveryPolicy, parse_policy

LOG = logging.getLogger("guest_ha.compute.libvirt")

_EVENT_LOOP_LOCK = threading.Lock()
_EVENT_LOOP_STARTED = False


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError as exc:
        raise RuntimeError(
            "libvirt discovery needs the libvirt-python package (pip install libvirt-python)"
        ) from exc
    return libvirt


def _start_event_loop(libvirt: Any) -> None:
    """libvirt's default event loop: registered once per process, run in a thread."""
    global _EVENT_LOOP_STARTED
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP_STARTED:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _EVENT_LOOP_STARTED = True


class OptInFile:
    """The standalone opt-in YAML file, re-read when it changes.

    ``domains: [{name: vnf-a, heartbeat: true, server_group: web}, {uuid: ...}]``
    """

    def __init__(self, path: Optional[str]) -> None:
        self.path = path
        self._mtime: Optional[float] = None
        self._entries: Dict[str, domain_xml.OptIn] = {}
        self._recovery: Dict[str, Dict[str, Any]] = {}

    def lookup(self, uuid: str, name: str) -> Optional[domain_xml.OptIn]:
        self._reload()
        return self._entries.get(uuid) or self._entries.get(f"name:{name}")

    def recovery(self, uuid: str, name: str) -> Optional[Dict[str, Any]]:
        """The domain's own ``recovery:`` settings in the file, if any."""
        self._reload()
        return self._recovery.get(uuid) or self._recovery.get(f"name:{name}")

    def _reload(self) -> None:
        if not self.path:
            return
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            if self._entries:
                LOG.warning("opt-in file %s is gone: no domain opted in by file", self.path)
            self._entries, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            with open(self.path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
            self._entries = parse_optin_file(raw)
            self._recovery = parse_optin_recovery(raw)
            LOG.info("opt-in file %s: %d domain(s)", self.path, len(self._entries))
        except (OSError, yaml.YAMLError, ValueError) as exc:
            LOG.error("opt-in file %s ignored: %s", self.path, exc)
            self._entries, self._recovery = {}, {}


def parse_optin_file(raw: Any) -> Dict[str, domain_xml.OptIn]:
    if not isinstance(raw, dict) or not isinstance(raw.get("domains", []), list):
        raise ValueError("expected a mapping with a 'domains' list")
    entries: Dict[str, domain_xml.OptIn] = {}
    for i, item in enumerate(raw.get("domains", [])):
        if not isinstance(item, dict) or not ({"name", "uuid"} & set(item)):
            raise ValueError(f"domains[{i}]: needs a name or a uuid")
        unknown = set(item) - {"name", "uuid", "heartbeat", "server_group", "recovery"}
        if unknown:
            raise ValueError(f"domains[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
        heartbeat = item.get("heartbeat", True)
        group = item.get("server_group")
        if not isinstance(heartbeat, bool):
            raise ValueError(f"domains[{i}].heartbeat: must be true or false")
        if group is not None and not isinstance(group, str):
            raise ValueError(f"domains[{i}].server_group: must be a string")
        opt = domain_xml.OptIn(
            heartbeat=heartbeat, server_group_messaging=group is not None, server_group=group
        )
        key = str(item["uuid"]).lower() if "uuid" in item else f"name:{item['name']}"
        entries[key] = opt
    return entries


def _entry_key(item: Mapping[str, Any]) -> str:
    return str(item["uuid"]).lower() if "uuid" in item else f"name:{item['name']}"


def parse_optin_recovery(raw: Any) -> Dict[str, Dict[str, Any]]:
    """Per-domain ``recovery:`` settings of the opt-in file, checked against the policy's keys."""
    out: Dict[str, Dict[str, Any]] = {}
    for i, item in enumerate(raw.get("domains", []) if isinstance(raw, dict) else []):
        if isinstance(item, dict) and "recovery" in item:
            where = f"domains[{i}].recovery"
            parse_policy(item["recovery"], where, per_domain=True)  # raises on a bad key
            out[_entry_key(item)] = dict(item["recovery"])
    return out


def metadata_recovery(xml: str) -> Optional[Dict[str, Any]]:
    """``<recovery enabled='true' actions='reset,stop' .../>`` in the domain's guest-ha
    metadata, as policy settings (attribute values converted; None: no element)."""
    node = domain_xml.domain_metadata(xml, domain_xml.GUEST_HA_METADATA_NS)
    if node is None:
        return None
    elem = next((c for c in node if c.tag.rsplit("}", 1)[-1] == "recovery"), None)
    if elem is None:
        return None
    settings: Dict[str, Any] = {}
    for key, text in elem.attrib.items():
        text = text.strip()
        if text.lower() in ("true", "false", "yes", "no", "1", "0") and key != "actions":
            settings[key] = text.lower() in ("true", "yes", "1")
        elif key == "actions":
            settings[key] = text
        else:
            try:
                settings[key] = float(text) if "." in text else int(text)
            except ValueError:
                settings[key] = text  # parse_policy names the key in its error
    return settings


class LibvirtMonitor:
    """Keeps the engine's VM set in step with the opted-in domains on this host."""

    def __init__(self, engine: HeartbeatEngine, config: LibvirtConfig) -> None:
        self.engine = engine
        self.config = config
        self.libvirt = _libvirt()
        self.optin_file = OptInFile(config.optin_file)
        self.nova: Optional[NovaFlavorOptIn] = None
        if config.mode == "nova":
            session = session_from_clouds_yaml(config.nova_clouds_yaml, config.nova_cloud)
            self.nova = NovaFlavorOptIn(
                session,
                region=config.nova_region,
                interface=config.nova_interface,
                cache_ttl_s=config.nova_cache_ttl_s,
            )
        self._queue: "queue.Queue[Tuple[str, str, int, int]]" = queue.Queue()
        self._confirms: "queue.Queue[Tuple[str, Any]]" = queue.Queue()
        self._actions: "queue.Queue[Tuple[str, str, RecoveryPolicy, Any]]" = queue.Queue()
        self._recovering: Dict[str, float] = {}
        """uuid -> until when a stop of this domain is our own recovery action."""
        self._conn: Any = None
        self._callbacks: list = []
        self._running = False
        self._worker: Optional[threading.Thread] = None
        self._warned: set = set()
        self.known: Dict[str, str] = {}
        self.known_opt_in: Dict[str, domain_xml.OptIn] = {}
        """uuid -> domain name of the domains handed to the engine."""

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        _start_event_loop(self.libvirt)
        self._running = True
        self._worker = threading.Thread(target=self._work, name="libvirt-worker", daemon=True)
        self._worker.start()
        threading.Thread(target=self._confirm_loop, name="libvirt-confirm", daemon=True).start()
        threading.Thread(target=self._action_loop, name="libvirt-recovery", daemon=True).start()
        self.engine.fault_confirmer = self.confirm_running

    # -- fault confirmation (own thread: never queued behind slow discovery work) -----
    def confirm_running(self, uuid: str, answer: Any) -> None:
        """Ask (asynchronously) whether the domain runs; ``answer(running, state)``."""
        self._confirms.put((uuid, answer))

    def _confirm_loop(self) -> None:
        lv = self.libvirt
        while self._running:
            try:
                uuid, answer = self._confirms.get(timeout=1.0)
            except queue.Empty:
                continue
            conn = self._conn
            try:
                if conn is None:
                    raise lv.libvirtError("not connected")
                state = conn.lookupByUUIDString(uuid).state()[0]
            except lv.libvirtError as exc:
                LOG.warning("[instance %s] cannot confirm the domain state: %s", uuid, exc)
                answer(True, "unknown")
                continue
            answer(state == lv.VIR_DOMAIN_RUNNING, _state_name(lv, state))

    # -- recovery actions (own thread: an action may wait on a hung QEMU) -------------
    def recover(
        self, uuid: str, action: str, policy: RecoveryPolicy, answer: Callable[[bool, str], None]
    ) -> None:
        """Carry a recovery action out; ``answer(ok, outcome)`` from the action thread."""
        self._actions.put((uuid, action, policy, answer))

    def _action_loop(self) -> None:
        while self._running:
            try:
                uuid, action, policy, answer = self._actions.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                ok, outcome = self._do_action(uuid, action, policy)
            except self.libvirt.libvirtError as exc:
                ok, outcome = False, str(exc)
            answer(ok, outcome)

    def _do_action(self, uuid: str, action: str, policy: RecoveryPolicy) -> Tuple[bool, str]:
        lv = self.libvirt
        conn = self._conn
        if conn is None:
            return False, "not connected to libvirt"
        dom = conn.lookupByUUIDString(uuid)
        state = dom.state()[0]
        if state != lv.VIR_DOMAIN_RUNNING:
            return False, f"domain is {_state_name(lv, state)}, not running: no action"
        # Our own stop of the domain is not a crash (destroyed_is_fault).
        self._recovering[uuid] = time.monotonic() + policy.action_timeout_s + 60.0
        if action in ("reset", "reboot"):
            call = (lambda: dom.reset(0)) if action == "reset" else (lambda: dom.reboot(0))
            if _finishes(call, policy.action_timeout_s):
                return True, action
            if "destroy-and-start" not in policy.actions:
                return False, (
                    f"{action} not carried out within {policy.action_timeout_s:g} s "
                    "(QEMU not responding) and destroy-and-start is not allowed"
                )
            dom.destroy()
            dom.create()
            return True, (
                f"{action} not carried out within {policy.action_timeout_s:g} s "
                "(QEMU not responding): destroyed and started"
            )
        if action == "destroy-and-start":
            dom.destroy()
            dom.create()
            return True, "destroyed and started"
        if action == "stop":
            dom.destroy()
            return True, "stopped"
        return False, f"unknown action {action!r}"

    def stop(self) -> None:
        self._running = False
        self._queue.put(("stop", "", 0, 0))
        if self._worker is not None:
            self._worker.join(timeout=5)
        self._disconnect()

    # -- libvirt connection ---------------------------------------------------------
    def _connect(self) -> None:
        lv = self.libvirt
        conn = lv.open(self.config.uri)
        conn.setKeepAlive(5, 3)
        conn.registerCloseCallback(self._on_close, None)
        for event_id, cb in (
            (lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
            (lv.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot),
            (lv.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, self._on_device),
            (lv.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_device),
            (lv.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata),
        ):
            self._callbacks.append(conn.domainEventRegisterAny(None, event_id, cb, None))
        self._conn = conn
        LOG.info("connected to %s", self.config.uri)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for cb_id in self._callbacks:
            try:
                conn.domainEventDeregisterAny(cb_id)
            except self.libvirt.libvirtError:
                pass
        self._callbacks = []
        try:
            conn.unregisterCloseCallback()
            conn.close()
        except self.libvirt.libvirtError:
            pass

    # -- event callbacks (libvirt's event thread: queue only) -------------------------
    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self._queue.put(("lifecycle", dom.UUIDString(), event, detail))

    def _on_reboot(self, _conn: Any, dom: Any, _opaque: Any) -> None:
        self._queue.put(("reboot", dom.UUIDString(), 0, 0))

    def _on_device(self, _conn: Any, dom: Any, _alias: str, _opaque: Any) -> None:
        self._queue.put(("reconcile", dom.UUIDString(), 0, 0))

    def _on_metadata(self, _conn: Any, dom: Any, *_args: Any) -> None:
        self._queue.put(("reconcile", dom.UUIDString(), 0, 0))

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._queue.put(("closed", "", reason, 0))

    # -- worker ---------------------------------------------------------------------
    def _work(self) -> None:
        backoff = 0.5
        while self._running:
            if self._conn is None:
                try:
                    self._connect()
                    backoff = 0.5
                    self._sync_all()
                except self.libvirt.libvirtError as exc:
                    LOG.warning(
                        "cannot connect to %s: %s (retry in %.1f s)", self.config.uri, exc, backoff
                    )
                    self._disconnect()
                    time.sleep(backoff)
                    backoff = min(backoff * 2, self.config.reconnect_max_s)
                    continue
            try:
                kind, uuid, event, detail = self._queue.get(timeout=30)
            except queue.Empty:
                self._sync_all()  # periodic safety net: catches anything missed
                continue
            try:
                self._handle(kind, uuid, event, detail)
            except self.libvirt.libvirtError as exc:
                LOG.warning("[instance %s] libvirt error handling %s: %s", uuid, kind, exc)
                if not self._conn_alive():
                    self._disconnect()
            except Exception:
                LOG.exception("[instance %s] failed handling %s", uuid, kind)

    def _conn_alive(self) -> bool:
        try:
            return bool(self._conn is not None and self._conn.isAlive())
        except self.libvirt.libvirtError:
            return False

    def _handle(self, kind: str, uuid: str, event: int, detail: int) -> None:
        if kind == "stop":
            return
        if kind == "closed":
            LOG.warning("connection to %s closed (reason %d): reconnecting", self.config.uri, event)
            self._disconnect()
            return
        if kind == "reboot":
            if uuid in self.known:
                self._post_lifecycle(uuid, "restart", "reboot")
            return
        if kind == "reconcile":
            self._reconcile_uuid(uuid)
            return
        self._on_lifecycle_event(uuid, event, detail)

    def _on_lifecycle_event(self, uuid: str, event: int, detail: int) -> None:
        lv = self.libvirt
        if event == lv.VIR_DOMAIN_EVENT_STARTED:
            if self._reconcile_uuid(uuid):
                self._post_lifecycle(uuid, "restart", "started")
        elif event == lv.VIR_DOMAIN_EVENT_UNDEFINED:
            self.engine.post(lambda: self.engine.channel_unavailable(uuid, "", ""))
            if uuid in self.known:
                del self.known[uuid]
                self.engine.post(lambda: self.engine.remove_vm(uuid))
        elif uuid not in self.known:
            if event in (lv.VIR_DOMAIN_EVENT_RESUMED, lv.VIR_DOMAIN_EVENT_DEFINED):
                self._reconcile_uuid(uuid)
        elif event == lv.VIR_DOMAIN_EVENT_SUSPENDED:
            self._post_lifecycle(uuid, "suspend", _name(lv, "SUSPENDED", detail))
        elif event == lv.VIR_DOMAIN_EVENT_RESUMED:
            self._post_lifecycle(uuid, "resume", _name(lv, "RESUMED", detail))
        elif event in (lv.VIR_DOMAIN_EVENT_SHUTDOWN, lv.VIR_DOMAIN_EVENT_PMSUSPENDED):
            self._post_lifecycle(
                uuid,
                "suspend",
                "shutdown" if event == lv.VIR_DOMAIN_EVENT_SHUTDOWN else "pmsuspended",
            )
        elif event == lv.VIR_DOMAIN_EVENT_CRASHED:
            self._post_fault(
                uuid, "guest crashed (" + _name(lv, "CRASHED", detail) + ")", "panicked"
            )
        elif event == lv.VIR_DOMAIN_EVENT_STOPPED:
            cause = _name(lv, "STOPPED", detail)
            crashed = detail in (
                lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                lv.VIR_DOMAIN_EVENT_STOPPED_FAILED,
            )
            destroyed = detail == lv.VIR_DOMAIN_EVENT_STOPPED_DESTROYED
            if destroyed and self._recovering.get(uuid, 0.0) > time.monotonic():
                self._post_lifecycle(uuid, "suspend", "stopped (recovery)")
                return
            if crashed or (destroyed and self.config.destroyed_is_fault):
                self._post_fault(uuid, f"domain stopped: {cause}", cause)
            else:
                self._post_lifecycle(uuid, "suspend", f"stopped ({cause})")

    def _post_lifecycle(self, uuid: str, action: str, reason: str) -> None:
        self.engine.post(lambda: self.engine.lifecycle(uuid, action, reason))

    def _post_fault(self, uuid: str, reason: str, cause: str) -> None:
        LOG.warning("[instance %s] %s", uuid, reason)
        self.engine.post(lambda: self.engine.report_fault(uuid, VM_CRASHED, reason, cause=cause))

    # -- reconciliation ---------------------------------------------------------------
    def _sync_all(self) -> None:
        if self._conn is None:
            return
        seen = set()
        for dom in self._conn.listAllDomains(0):
            uuid = dom.UUIDString()
            seen.add(uuid)
            try:
                self._reconcile(dom)
            except self.libvirt.libvirtError as exc:
                LOG.warning("[instance %s] cannot inspect domain: %s", uuid, exc)
        engine = self.engine

        def forget_gone_unattachable() -> None:
            for u in list(engine.unattachable):
                if u not in seen:
                    engine.channel_unavailable(u, "", "")

        engine.post(forget_gone_unattachable)
        for uuid in list(self.known):
            if uuid not in seen:
                del self.known[uuid]
                self.engine.post(functools.partial(self.engine.remove_vm, uuid))

    def _reconcile_uuid(self, uuid: str) -> bool:
        try:
            dom = self._conn.lookupByUUIDString(uuid)
        except self.libvirt.libvirtError:
            return False
        return self._reconcile(dom)

    def wants(self, uuid: str, name: str, xml: str) -> domain_xml.OptIn:
        """What the domain opted in to (heartbeat, server group messaging)."""
        if self.nova is not None:
            try:
                opt, source = self.nova.opt_in(xml)
            except NovaLookupError as exc:
                # Keep what we knew: an unreachable Nova must not stop heartbeating.
                self._warn_once(uuid, f"[instance {uuid}] {exc}; keeping current opt-in")
                return self.known_opt_in.get(uuid, domain_xml.OptIn())
            LOG.debug("[instance %s] opt-in %s from %s", uuid, opt, source)
            return opt
        if self.config.optin_metadata:
            from_metadata = domain_xml.opt_in(xml)
            if from_metadata is not None:
                return from_metadata
        return self.optin_file.lookup(uuid.lower(), name) or domain_xml.OptIn()

    def _considers(self, name: str) -> bool:
        """Whether the domain's name is in this agent's ``domain_names``."""
        pattern = self.config.domain_names
        return pattern is None or fnmatch.fnmatchcase(name, pattern)

    def recovery_policy(self, uuid: str, name: str, xml: str) -> Optional[RecoveryPolicy]:
        """The domain's own recovery settings over the host's (None: the host's)."""
        if self.config.mode == "nova":
            return None
        override = metadata_recovery(xml) if self.config.optin_metadata else None
        if override is None:
            override = self.optin_file.recovery(uuid.lower(), name)
        if override is None:
            return None
        base = self.engine.recovery.default if self.engine.recovery is not None else None
        try:
            return (base or RecoveryPolicy()).with_overrides(override, f"{name} recovery")
        except ValueError as exc:
            self._warn_once(uuid, f"[instance {uuid}] {exc}: using the host's recovery policy")
            return None

    def _reconcile(self, dom: Any) -> bool:
        """Bring one domain in line; return whether the engine heartbeats it."""
        lv = self.libvirt
        uuid, name = dom.UUIDString(), dom.name()
        state = dom.state()[0]
        running = state in (
            lv.VIR_DOMAIN_RUNNING,
            lv.VIR_DOMAIN_PAUSED,
            lv.VIR_DOMAIN_BLOCKED,
            lv.VIR_DOMAIN_PMSUSPENDED,
        )
        if not self._considers(name):
            return False
        xml = dom.XMLDesc(0)
        opt = self.wants(uuid, name, xml)
        if not opt.wants_channel:
            if uuid in self.known:
                LOG.info("[instance %s] %s no longer opted in", uuid, name)
                del self.known[uuid]
                self.engine.post(lambda: self.engine.remove_vm(uuid))
            return False
        if not running:
            return uuid in self.known
        channel = domain_xml.find_channel(xml)
        if channel is None or not channel.socket_path:
            channel = self._attach_channel(dom, uuid, name, xml)
            if channel is None:
                return False
        spec = VmSpec(
            uuid=uuid,
            name=name,
            socket_path=str(channel.socket_path),
            heartbeat=opt.heartbeat,
            server_group_messaging=opt.server_group_messaging,
            server_group=opt.server_group,
        )
        paused = state != lv.VIR_DOMAIN_RUNNING
        self.known[uuid] = name
        self.known_opt_in[uuid] = opt
        policy = self.recovery_policy(uuid, name, xml)

        def apply() -> None:
            self.engine.upsert_vm(spec, "libvirt")
            if self.engine.recovery is not None:
                self.engine.recovery.set_policy(uuid, policy)
            vm = self.engine.vms.get(uuid)
            if vm is not None and paused and not vm.lifecycle_suspended:
                self.engine.lifecycle(uuid, "suspend", "paused")

        self.engine.post(apply)
        return True

    def _attach_channel(self, dom: Any, uuid: str, name: str, xml: str) -> Any:
        lv = self.libvirt
        if not self.config.manage_channels:
            self._warn_once(
                uuid,
                f"[instance {uuid}] {name} opted in but has no "
                f"{domain_xml.CHANNEL_NAME} channel and manage_channels is off",
            )
            return None
        if not domain_xml.has_virtio_serial_controller(xml):
            if self.nova is not None:
                fix = (
                    "set image property hw_qemu_guest_agent=yes (Nova then adds one) "
                    "and rebuild the server, or boot it from such an image"
                )
            else:
                fix = "add one to its definition and restart it"
            reason = (
                f"opted in but has no virtio-serial controller, which cannot be hot-plugged: {fix}"
            )
            self._warn_once(uuid, f"[instance {uuid}] {name} {reason}")
            self.engine.post(lambda: self.engine.channel_unavailable(uuid, name, reason))
            return None
        flags = lv.VIR_DOMAIN_AFFECT_LIVE
        if dom.isPersistent():
            inactive = dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)
            if domain_xml.find_channel(inactive) is None:
                flags |= lv.VIR_DOMAIN_AFFECT_CONFIG
        started = time.monotonic()
        dom.attachDeviceFlags(domain_xml.channel_xml(None), flags)
        LOG.info(
            "[instance %s] hot-attached %s to %s (%s) in %.0f ms",
            uuid,
            domain_xml.CHANNEL_NAME,
            name,
            "live+config" if flags & lv.VIR_DOMAIN_AFFECT_CONFIG else "live",
            (time.monotonic() - started) * 1000,
        )
        channel = domain_xml.find_channel(dom.XMLDesc(0))
        if channel is None or not channel.socket_path:
            LOG.error("[instance %s] channel attached but no socket path in live XML", uuid)
            return None
        return channel

    def _warn_once(self, uuid: str, message: str) -> None:
        if (uuid, message) not in self._warned:
            self._warned.add((uuid, message))
            LOG.warning("%s", message)


def _state_name(lv: Any, state: int) -> str:
    """``paused``, ``shutoff``... for a ``VIR_DOMAIN_*`` state value."""
    for attr in (
        "RUNNING",
        "PAUSED",
        "SHUTDOWN",
        "SHUTOFF",
        "CRASHED",
        "PMSUSPENDED",
        "BLOCKED",
        "NOSTATE",
    ):
        if getattr(lv, f"VIR_DOMAIN_{attr}", None) == state:
            return attr.lower()
    return str(state)


def _name(lv: Any, event: str, detail: int) -> str:
    """Readable name of a libvirt lifecycle event detail, e.g. ``paused``."""
    prefix = f"VIR_DOMAIN_EVENT_{event}_"
    for attr in dir(lv):
        if attr.startswith(prefix) and getattr(lv, attr) == detail:
            return attr[len(prefix) :].lower()
    return str(detail)


def _finishes(call: Callable[[], Any], timeout_s: float) -> bool:
    """Run a libvirt call that may wait on a hung QEMU; True if it returned in time.

    A call still waiting is left to end by itself (a later destroy kills QEMU,
    which ends it with an error)."""
    done = threading.Event()
    failure: list = []

    def run() -> None:
        try:
            call()
        except Exception as exc:
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="libvirt-action", daemon=True).start()
    if not done.wait(timeout_s):
        return False
    if failure:
        raise failure[0]
    return True
