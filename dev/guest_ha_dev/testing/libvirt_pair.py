"""Two libvirtd "hosts" on this machine for live migration tests (root only).

Each side runs its own ``libvirtd -l`` and ``virtlogd`` inside its own network
namespace (:class:`NetNamespace`, reachable from the root namespace on its
address) and its own mount namespace, where ``/run/libvirt``,
``/var/lib/libvirt``, ``/var/cache/libvirt``, ``/var/log/libvirt`` and
``/etc/libvirt`` are private folders of the test (``/etc/libvirt`` gets the
machine's top-level config files, never its ``qemu/`` domain definitions).
Everything else, e.g. a guest's disk under /var/tmp, is seen by both sides.
A second veth pair joins the two namespaces directly for the migration stream.

``LibvirtHost.wrapper`` runs a command in that host's mount namespace (the
compute agent must: the guest channel sockets live in the private
``/var/lib/libvirt/qemu``).  Domains named with the pair's prefix are destroyed
and undefined on both sides at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, List, Optional, Tuple

from .netns import NetNamespace, _ip

_LOOP_LOCK = threading.Lock()
_LOOP_STARTED = False


def _ensure_event_loop() -> None:
    """libvirt's default event loop in a daemon thread (once per process)."""
    global _LOOP_STARTED
    import libvirt

    with _LOOP_LOCK:
        if _LOOP_STARTED:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _LOOP_STARTED = True


class LifecycleRecorder:
    """Every lifecycle event of one connection, stamped with ``time.monotonic()``
    (the same clock as the compute agent's events)."""

    def __init__(self, conn: Any) -> None:
        import libvirt

        self.events: List[Tuple[float, str, int, int]] = []
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
        )

    def _on_event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        self.events.append((time.monotonic(), dom.UUIDString(), event, detail))

    def first(self, uuid: str, event: int, detail: int) -> Optional[float]:
        for stamp, who, ev, det in list(self.events):
            if (who, ev, det) == (uuid, event, detail):
                return stamp
        return None


PRIVATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")


class LibvirtHost:
    """One libvirtd in its own network and mount namespace."""

    def __init__(self, root: str, index: int) -> None:
        self.root = os.path.join(root, f"host{index}")
        self.netns = NetNamespace(index)
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(self.root, "libvirtd.log")

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.netns.address}/system"

    @property
    def wrapper(self) -> List[str]:
        assert self.proc is not None
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--"]

    def _prepare(self) -> str:
        etc = os.path.join(self.root, "etc")
        os.makedirs(os.path.join(etc, "qemu"), exist_ok=True)
        for path in glob.glob("/etc/libvirt/*.conf"):
            shutil.copy(path, etc)
        with open(os.path.join(etc, "libvirtd.conf"), "a", encoding="utf-8") as fh:
            fh.write(
                '\nlisten_tls = 0\nlisten_tcp = 1\nauth_tcp = "none"\n'
                f'listen_addr = "{self.netns.address}"\nunix_sock_group = "root"\n'
            )
        with open(os.path.join(etc, "qemu.conf"), "a", encoding="utf-8") as fh:
            fh.write('\nuser = "root"\ngroup = "root"\n')
        lines = ["set -e"]
        for target in PRIVATE_DIRS:
            private = os.path.join(self.root, target.strip("/").replace("/", "_"))
            os.makedirs(private, exist_ok=True)
            lines.append(f"mount --bind {private} {target}")
        lines.append(f"mount --bind {etc} /etc/libvirt")
        lines.append(f"virtlogd -d -p {self.root}/virtlogd.pid")
        lines.append(f"exec libvirtd -l -p {self.root}/libvirtd.pid")
        return "\n".join(lines)

    def start(self, timeout: float = 60.0) -> "LibvirtHost":
        os.makedirs(self.root, exist_ok=True)
        self.netns.create()
        script = self._prepare()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns.name,
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(
                ["virsh", "-c", self.uri, "version"], capture_output=True, text=True
            )
            if probe.returncode == 0:
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(self.log_path, errors="replace") as fh:
                    raise RuntimeError(f"libvirtd {self.uri} did not answer: {fh.read()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        try:
            with open(os.path.join(self.root, "virtlogd.pid"), encoding="ascii") as fh:
                os.kill(int(fh.read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        self.netns.delete()


class LibvirtPair:
    """Source and destination hosts, joined by a direct link for migration."""

    def __init__(self, root: str, prefix: str = "gha-mig") -> None:
        self.root = root
        self.prefix = prefix
        self.source = LibvirtHost(root, 1)
        self.dest = LibvirtHost(root, 2)
        tag = f"{os.getpid() % 10000}"
        self._link = (f"gh{tag}m1", f"gh{tag}m2")
        net = f"10.{150 + os.getpid() % 50}.250"
        #: Addresses of the direct link (source side, destination side).
        self.link_addresses = (f"{net}.1", f"{net}.2")
        self._conns: List[Any] = []

    def start(self) -> "LibvirtPair":
        self.source.start()
        self.dest.start()
        a, b = self._link
        _ip(
            "link",
            "add",
            a,
            "netns",
            self.source.netns.name,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            self.dest.netns.name,
        )
        for host, dev, addr in (
            (self.source, a, self.link_addresses[0]),
            (self.dest, b, self.link_addresses[1]),
        ):
            _ip("-n", host.netns.name, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", host.netns.name, "link", "set", dev, "up")
        return self

    def open(self, host: LibvirtHost) -> Any:
        import libvirt

        _ensure_event_loop()
        conn = libvirt.open(host.uri)
        self._conns.append(conn)
        return conn

    def migrate(self, dom: Any, dest_conn: Any) -> Any:
        """Live-migrate ``dom`` to the destination over the direct link (the
        disks are on a path both sides see, hence ``UNSAFE``: libvirt cannot
        tell that a local folder is shared)."""
        import libvirt

        params = {
            libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{self.link_addresses[1]}",
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: self.link_addresses[1],
        }
        flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_UNSAFE
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        return dom.migrate3(dest_conn, params, flags)

    def cleanup_domains(self) -> None:
        import libvirt

        for conn in self._conns:
            try:
                doms = conn.listAllDomains(0)
            except libvirt.libvirtError:
                continue
            for dom in doms:
                if not dom.name().startswith(self.prefix):
                    continue
                for step in (dom.destroy, dom.undefine):
                    try:
                        step()
                    except libvirt.libvirtError:
                        pass

    def stop(self) -> None:
        self.cleanup_domains()
        for conn in self._conns:
            try:
                conn.close()
            except Exception:  # the daemon may be gone already
                pass
        self._conns.clear()
        self.source.stop()
        self.dest.stop()

    def __enter__(self) -> "LibvirtPair":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()
