#!/usr/bin/env python3
"""Build a bootable test guest: kernel, initramfs and an ext4 root filesystem.

Usage::

    python3 scripts/build_test_guest.py [--out DIR] [--force]

Steps (each one cached under ``<repo>/.cache/guest-image/``, which git ignores):

1. **debootstrap** a Debian bookworm ``minbase`` root with ``python3`` (about
   36 s), kept as a tarball so later builds skip it;
2. **bake** a copy of it with ``playbooks/bake_guest_image.yml`` through the
   ``community.general.chroot`` connection: the image carries exactly what an
   operator's baked image carries;
3. add the **test-only** pieces: a tiny init (``/sbin/guest-ha-test-init``), a
   power-button watcher so an ACPI shutdown (``virsh shutdown``, QEMU
   ``system_powerdown``) stops the guest daemon first and powers off, a static
   busybox for ``poweroff -f``, and the check ``50-test-control`` that reads the
   first byte of a second virtio disk (``/dev/vdb``: ``1`` = unhealthy);
4. **kernel**: the image package ``linux-image-cloud-amd64`` depends on,
   fetched with ``apt-get download`` and unpacked with ``dpkg -x``; its
   compressed payload is unpacked to ``vmlinux``, an ELF that QEMU boots
   through the PVH entry point (see ``pvh_kernel``);
5. **initramfs** from ``busybox-static``: loads the virtio (and ACPI button,
   evdev) modules, mounts ``/dev/vda`` and ``switch_root``s into it;
6. ``mke2fs -d`` the root filesystem into ``rootfs.ext4``.

Outputs in ``--out`` (default ``.cache/guest-image/out``): ``vmlinux``,
``initrd.img``, ``rootfs.ext4`` and ``manifest.json``. The build is skipped
when the manifest's input hash (guest daemon sources, the role, the playbook,
this script, the cached root and kernel) still matches. Progress goes to stderr;
the last stdout line is the manifest path. Needs root (debootstrap, chroot).

The boot command line understands ``guest_ha.interval_ms=N`` (heartbeat
interval the guest daemon asks for; default 1000),
``guest_ha.corrective_action=log|reboot|stop`` (its hint) and ``init=PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "guest-image")
DEFAULT_OUT = os.path.join(CACHE, "out")
SUITE = "bookworm"
ROOTFS_TARBALL = os.path.join(CACHE, f"debootstrap-{SUITE}-minbase.tar")
KERNEL_CACHE = os.path.join(CACHE, "kernel")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
ROOTFS_SIZE = "600M"
GUEST_NAME = "guest-ha-test"

# insmod order (no modules.dep in the package). Dependencies are checked against
# each module's own "depends=" list, so a kernel that needs more fails loudly.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    # Entropy from the host (the domain's virtio-rng): no boot-time wait in getrandom().
    "virtio_rng",
    "virtio_console",
    "virtio_blk",
    # ACPI power button -> input event: lets "virsh shutdown" reach the test init.
    "button",
    "evdev",
)

# Role variables for the test image (what an operator would put in group_vars).
BAKE_VARS: Dict[str, object] = {
    "guest_ha_guest_name": GUEST_NAME,
    "guest_ha_guest_interval_ms": 1000,
    "guest_ha_guest_check_interval_ms": 250,
    "guest_ha_guest_check_timeout_ms": 2000,
    "guest_ha_guest_log": "stderr",
}

#: The scripts the image carries, kept as real files (ruff and shellcheck see them).
TEST_GUEST_DIR = os.path.join(REPO, "scripts", "test_guest")


def _test_guest_file(name: str) -> str:
    with open(os.path.join(TEST_GUEST_DIR, name), encoding="utf-8") as fh:
        return fh.read()


TEST_CONTROL_CHECK = _test_guest_file("control-check.sh")
TEST_INIT = _test_guest_file("init.sh")
DEMO_PEER = _test_guest_file("demo_peer.py")
POWER_BUTTON_WATCHER = _test_guest_file("power_button_watcher.py")
INITRAMFS_INIT = _test_guest_file("initramfs-init.sh")


# -- helpers ---------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[build-test-guest] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    log("$ " + " ".join(cmd))
    return subprocess.run(list(cmd), check=True, **kwargs)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _walk_files(top: str) -> Iterable[str]:
    """Files that can change the image: not bytecode, Molecule scenarios or docs
    (editing those must not rebuild the image and reboot the all-in-one guests)."""
    if os.path.isfile(top):
        yield top
        return
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "molecule"))
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo", ".md")):
                yield os.path.join(root, name)


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 ``URIs:``, else sources.list)."""
    deb822 = "/etc/apt/sources.list.d/debian.sources"
    try:
        with open(deb822, encoding="utf-8") as fh:
            for line in fh:
                m = re.match(r"\s*URIs:\s*(\S+)", line)
                if m and "security" not in m.group(1):
                    return m.group(1)
    except OSError:
        pass
    try:
        with open("/etc/apt/sources.list", encoding="utf-8") as fh:
            for line in fh:
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", line)
                if m and "security" not in m.group(1):
                    return m.group(1)
    except OSError:
        pass
    return FALLBACK_MIRROR


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("build_test_guest.py needs root (debootstrap, chroot, mke2fs -d)")


@contextlib.contextmanager
def cache_lock(name: str = "build") -> Iterator[None]:
    """Serialise builds: parallel test sessions share the cache."""
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, f".{name}.lock"), "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another {name} is running; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# -- 1. debootstrap --------------------------------------------------------------------
def ensure_rootfs_tarball(force: bool = False) -> str:
    """Debootstrap once; return the cached tarball of the pristine root."""
    if os.path.exists(ROOTFS_TARBALL) and not force:
        log(f"debootstrap: cached {os.path.relpath(ROOTFS_TARBALL, REPO)}")
        return ROOTFS_TARBALL
    require_root()
    with cache_lock("debootstrap"):
        if os.path.exists(ROOTFS_TARBALL) and not force:
            return ROOTFS_TARBALL
        return _debootstrap()


def _debootstrap() -> str:
    os.makedirs(CACHE, exist_ok=True)
    mirror = debian_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=CACHE) as tmp:
        root = os.path.join(tmp, "root")
        log(f"debootstrap {SUITE} from {mirror} (about 40 s)")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3-minimal,python3",
                SUITE,
                root,
                mirror,
            ],
            stdout=subprocess.DEVNULL,
        )
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in _glob_files(os.path.join(root, sub)):
                os.unlink(path)
        tmp_tar = ROOTFS_TARBALL + ".tmp"
        run(["tar", "-C", root, "--numeric-owner", "-cf", tmp_tar, "."])
        os.replace(tmp_tar, ROOTFS_TARBALL)
    log(f"debootstrap: done in {time.monotonic() - started:.1f} s")
    return ROOTFS_TARBALL


def _glob_files(top: str) -> List[str]:
    out = []
    for root, _dirs, files in os.walk(top):
        for name in files:
            if name != "lock":
                out.append(os.path.join(root, name))
    return out


def extract_rootfs(dest: str, tarball: Optional[str] = None) -> str:
    """Unpack the cached debootstrap root into ``dest`` (which must not exist yet)."""
    tarball = tarball or ensure_rootfs_tarball()
    os.makedirs(dest)
    run(["tar", "-C", dest, "--numeric-owner", "-xpf", tarball])
    return dest


# -- 2. bake ---------------------------------------------------------------------------
def ansible_playbook_bin() -> str:
    candidates = [
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
        os.path.join(REPO, ".venv", "bin", "ansible-playbook"),
    ]
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("ansible-playbook")
    if not found:
        raise SystemExit("ansible-playbook not found (run scripts/bootstrap.sh)")
    return found


def bake(
    rootdir: str,
    extra_vars: Optional[Dict[str, object]] = None,
    *,
    playbook: str = os.path.join(REPO, "playbooks", "bake_guest_image.yml"),
    capture: bool = False,
) -> subprocess.CompletedProcess:
    """Run the bake playbook against ``rootdir`` through the chroot connection.

    Returns the completed process (stdout captured when ``capture``); raises
    CalledProcessError when the playbook fails.
    """
    rootdir = os.path.abspath(rootdir)
    with tempfile.TemporaryDirectory(prefix="gha-bake-") as tmp:
        inventory = os.path.join(tmp, "inventory.json")
        with open(inventory, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "guest_images": {
                        "hosts": {
                            "test-image": {
                                "ansible_connection": "community.general.chroot",
                                "ansible_host": rootdir,
                                "ansible_python_interpreter": "/usr/bin/python3",
                                # Leave nothing behind in the image's /root.
                                "ansible_remote_tmp": "/tmp/.ansible-tmp",
                            }
                        }
                    }
                },
                fh,
            )
        vars_file = os.path.join(tmp, "vars.json")
        with open(vars_file, "w", encoding="utf-8") as fh:
            json.dump(extra_vars or {}, fh)
        env = dict(os.environ)
        env.update(
            {
                "ANSIBLE_HOME": os.path.join(tmp, "ansible-home"),
                "ANSIBLE_LOCAL_TEMP": os.path.join(tmp, "local-tmp"),
                "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(tmp, "cp"),
                "ANSIBLE_ROLES_PATH": os.path.join(REPO, "roles"),
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_STDOUT_CALLBACK": "default",
                "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
                "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "0",
                "ANSIBLE_DEPRECATION_WARNINGS": "0",
            }
        )
        cmd = [
            ansible_playbook_bin(),
            "-i",
            inventory,
            "-e",
            "@" + vars_file,
            playbook,
        ]
        log("$ " + " ".join(cmd))
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
        )
    for leftover in ("tmp/.ansible-tmp", "root/.ansible"):
        shutil.rmtree(os.path.join(rootdir, leftover), ignore_errors=True)
    if proc.returncode != 0:
        if capture:
            sys.stderr.write(proc.stdout or "")
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout)
    return proc


def bake_vars(workdir: str) -> Dict[str, object]:
    """Role variables of the test image. The control check goes in through the role's
    ``guest_ha_guest_checks`` list, like any operator's check would."""
    check_src = os.path.join(workdir, "50-test-control")
    _write(check_src, TEST_CONTROL_CHECK)
    vars_ = dict(BAKE_VARS)
    vars_["guest_ha_guest_checks"] = [{"name": "50-test-control", "src": check_src}]
    vars_["guest_ha_guest_build_dir"] = os.path.join(workdir, "pyz")
    return vars_


# -- 3. test-only additions ------------------------------------------------------------
def _write(path: str, text: str, mode: int = 0o755) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, mode)


def add_test_files(rootdir: str) -> None:
    _write(os.path.join(rootdir, "sbin", "guest-ha-test-init"), TEST_INIT)
    _write(os.path.join(rootdir, "usr/local/sbin/guest-ha-test-powerbtn"), POWER_BUTTON_WATCHER)
    _write(os.path.join(rootdir, "usr/local/bin/guest-ha-demo-peer"), DEMO_PEER)
    busybox = os.path.join(rootdir, "usr/local/lib/guest-ha-test/busybox")
    os.makedirs(os.path.dirname(busybox), exist_ok=True)
    shutil.copy2(static_busybox(), busybox)
    _write(os.path.join(rootdir, "etc", "hostname"), GUEST_NAME + "\n", 0o644)
    # No getty, no login: the serial console only shows the daemon's log.
    add_qemu_guest_agent(rootdir)


#: qemu-ga and what it needs beyond minbase (for bench/vs_masakari.py: Masakari's
#: introspective instance monitor pings it).  The init starts it only when the
#: domain has its port (Nova's ``hw_qemu_guest_agent=yes``).
QGA_PACKAGES = ("qemu-guest-agent", "libglib2.0-0", "libnuma1", "liburing2", "libudev1")
QGA_CACHE = os.path.join(CACHE, "qga-debs")


def add_qemu_guest_agent(rootdir: str) -> None:
    """Unpack qemu-guest-agent and its libraries (``apt-get download``, cached) into the root."""
    os.makedirs(QGA_CACHE, exist_ok=True)
    have = os.listdir(QGA_CACHE)
    missing = [p for p in QGA_PACKAGES if not any(f.startswith(p + "_") for f in have)]
    if missing:
        run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *missing],
            cwd=QGA_CACHE, stdout=subprocess.DEVNULL)  # fmt: skip
    for name in sorted(os.listdir(QGA_CACHE)):
        if name.endswith(".deb"):
            # Not "dpkg -x": its tar would replace merged-/usr links (/lib, /sbin).
            deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", os.path.join(QGA_CACHE, name)],
                                   stdout=subprocess.PIPE)  # fmt: skip
            run(["tar", "-x", "--keep-directory-symlink", "-C", rootdir], stdin=deb.stdout)
            assert deb.stdout is not None
            deb.stdout.close()
            if deb.wait() != 0:
                raise SystemExit(f"dpkg-deb --fsys-tarfile {name} failed")


def static_busybox() -> str:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            with open(path, "rb") as fh:
                head = fh.read(1 << 16)
            if b"ld-linux" not in head:
                return path
    raise SystemExit("static busybox not found: apt-get install busybox-static")


def make_shell_root(root: str) -> None:
    """A root with nothing but a static busybox ``sh`` and ``/tmp``: enough for
    Ansible's chroot connection to reach it (and to find Python missing)."""
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "tmp"))
    shutil.copy2(static_busybox(), os.path.join(root, "bin", "busybox"))
    os.symlink("busybox", os.path.join(root, "bin", "sh"))


# -- 4. kernel -------------------------------------------------------------------------
def kernel_package() -> str:
    """The versioned image package the cloud kernel meta package depends on."""
    out = subprocess.run(
        ["apt-cache", "depends", KERNEL_META_PACKAGE],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise SystemExit(f"cannot resolve {KERNEL_META_PACKAGE} with apt-cache")


def ensure_kernel_deb() -> str:
    os.makedirs(KERNEL_CACHE, exist_ok=True)
    cached = sorted(f for f in os.listdir(KERNEL_CACHE) if f.endswith(".deb"))
    try:
        package = kernel_package()
    except (OSError, subprocess.CalledProcessError, SystemExit):
        if cached:
            return os.path.join(KERNEL_CACHE, cached[-1])
        raise
    for name in cached:
        if name.startswith(package + "_"):
            log(f"kernel: cached {name}")
            return os.path.join(KERNEL_CACHE, name)
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=CACHE) as tmp:
        # Downloading into a root-owned folder: no _apt sandbox (it could not write here).
        run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
        )
        debs = [f for f in os.listdir(tmp) if f.endswith(".deb")]
        if len(debs) != 1:
            raise SystemExit(f"apt-get download {package} gave {debs}")
        dest = os.path.join(KERNEL_CACHE, debs[0])
        shutil.move(os.path.join(tmp, debs[0]), dest)
    for name in cached:
        os.unlink(os.path.join(KERNEL_CACHE, name))
    return dest


def module_depends(path: str) -> List[str]:
    with open(path, "rb") as fh:
        data = fh.read()
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def extract_kernel(deb: str, dest: str) -> Tuple[str, str, Dict[str, str]]:
    """Unpack the kernel package; return (version, vmlinuz path, {module: .ko path})."""
    run(["dpkg-deb", "-x", deb, dest])
    boot = os.path.join(dest, "boot")
    vmlinuz = [f for f in os.listdir(boot) if f.startswith("vmlinuz-")]
    if len(vmlinuz) != 1:
        raise SystemExit(f"expected one vmlinuz in {deb}, found {vmlinuz}")
    version = vmlinuz[0][len("vmlinuz-") :]
    found: Dict[str, str] = {}
    for path in _walk_files(os.path.join(dest, "lib", "modules", version)):
        base = os.path.basename(path)
        for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
            if base.endswith(ext):
                found[base[: -len(ext)].replace("-", "_")] = path
    modules: Dict[str, str] = {}
    for name in MODULES:
        if name not in found:
            raise SystemExit(f"kernel {version} has no module {name}")
        if not found[name].endswith(".ko"):
            raise SystemExit(f"module {found[name]} is compressed; busybox insmod needs .ko")
        for dep in module_depends(found[name]):
            if dep not in modules:
                raise SystemExit(f"module {name} needs {dep}, which is not loaded before it")
        modules[name] = found[name]
    return version, os.path.join(boot, vmlinuz[0]), modules


#: ELF note type XEN_ELFNOTE_PHYS32_ENTRY: the kernel's PVH entry point.
PVH_ENTRY_NOTE = 18
# What the kernel's build compresses its payload with, by leading bytes, and
# whether it appended the unpacked size (4 bytes, little-endian) to the stream.
PAYLOAD_FORMATS = (
    (b"\x02\x21\x4c\x18", ["lz4", "-dc"], True),  # lz4 legacy frame
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"], True),
    (b"\xfd7zXZ\x00", ["xz", "-dc"], True),
    (b"\x1f\x8b", ["gzip", "-dc"], False),
)


def pvh_kernel(vmlinuz: str, dest: str) -> str:
    """Unpack ``vmlinuz``'s payload to the ELF ``dest``; QEMU boots it via PVH.

    Why: a bzImage's decompressor runs inside the guest. After a warm reset
    (``virsh reset``, the recovery action) it writes the new kernel over pages
    the old kernel ran from, and QEMU's TCG then invalidates translated code on
    each of those pages: 1 to 24 s of guest CPU before the kernel's first line,
    depending on where KASLR put the two kernels; a cold start writes into
    fresh memory and never pays it. With the ELF, QEMU itself copies the
    kernel in and no decompressor runs (docs/benchmarks.md, "Recovery without
    OpenStack").
    """
    with open(vmlinuz, "rb") as fh:
        image = fh.read()
    if image[0x202:0x206] != b"HdrS":
        raise SystemExit(f"{vmlinuz} is not a bzImage")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)  # payload_offset, _length
    start = (setup_sects + 1) * 512 + offset
    payload = image[start : start + length]
    found = next((f for f in PAYLOAD_FORMATS if payload.startswith(f[0])), None)
    if found is None:
        raise SystemExit(f"{vmlinuz}: unknown payload compression {payload[:4].hex()}")
    _, command, sized = found
    size = None
    if sized:  # the decompressor would read the size as the start of another frame
        (size,) = struct.unpack("<I", payload[-4:])
        payload = payload[:-4]
    if shutil.which(command[0]) is None:
        raise SystemExit(f"{command[0]} is needed to unpack {vmlinuz} (scripts/bootstrap.sh)")
    unpacked = subprocess.run(command, input=payload, capture_output=True, check=False)
    if unpacked.returncode != 0:
        err = unpacked.stderr.decode(errors="replace")[-500:]
        raise SystemExit(f"{' '.join(command)} failed on {vmlinuz}'s payload: {err}")
    elf = unpacked.stdout
    if size is not None and len(elf) != size:
        raise SystemExit(f"{vmlinuz}: unpacked {len(elf)} bytes, the image says {size}")
    if not elf.startswith(b"\x7fELF") or not _has_note(elf, b"Xen", PVH_ENTRY_NOTE):
        raise SystemExit(f"{vmlinuz}: the unpacked kernel has no PVH entry point (CONFIG_PVH)")
    tmp = dest + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(elf)
    os.replace(tmp, dest)
    return dest


def _has_note(elf: bytes, owner: bytes, note_type: int) -> bool:
    """Whether the 64-bit ELF ``elf`` has a PT_NOTE entry (``owner``, ``note_type``)."""
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        entry = phoff + i * phentsize
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, entry)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == owner and ntype == note_type:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# -- 5. initramfs ----------------------------------------------------------------------
class Newc:
    """Minimal writer for the kernel's ``newc`` cpio format (deterministic, no mknod)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: Tuple[int, int] = (0, 0)):  # type: ignore[no-untyped-def]
        fields = [
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0,
        ]  # fmt: skip
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(header + name.encode() + b"\0")
        self.buf.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(out: str, modules: Dict[str, str]) -> None:
    arc = Newc()
    for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        arc.dir(d)
    arc.chardev("dev/console", 5, 1)
    arc.chardev("dev/null", 1, 3, 0o666)
    with open(static_busybox(), "rb") as fh:
        arc.file("bin/busybox", fh.read(), 0o755)
    arc.symlink("bin/sh", "busybox")
    arc.file("init", INITRAMFS_INIT.encode(), 0o755)
    arc.file("modules.list", ("\n".join(modules) + "\n").encode())
    for name, path in modules.items():
        with open(path, "rb") as fh:
            arc.file(f"lib/modules/{name}.ko", fh.read())
    tmp = out + ".tmp"
    with open(tmp, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(arc.finish())
    os.replace(tmp, out)


# -- 6. inputs, manifest, main ---------------------------------------------------------
INPUTS = (
    "agents/guest_ha/__init__.py",
    "agents/guest_ha/protocol",
    "agents/guest_ha/guest",
    "scripts/build_guestd_pyz.py",
    "scripts/build_test_guest.py",
    "scripts/test_guest",
    "roles/guest",
    "playbooks/bake_guest_image.yml",
)


def inputs_hash(tarball: str, kernel_deb: str) -> str:
    digest = hashlib.sha256()
    for rel in INPUTS:
        for path in _walk_files(os.path.join(REPO, rel)):
            digest.update(os.path.relpath(path, REPO).encode() + b"\0")
            digest.update(sha256_file(path).encode())
    for path in (tarball, kernel_deb):
        st = os.stat(path)
        digest.update(f"{os.path.basename(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return digest.hexdigest()


def read_manifest(out: str) -> Optional[Dict[str, object]]:
    try:
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    for key in ("kernel", "initrd", "rootfs"):
        if not os.path.exists(os.path.join(out, str(manifest.get(key, "")))):
            return None
    return manifest


def build(out: str = DEFAULT_OUT, force: bool = False) -> Dict[str, object]:
    """Build (or reuse) the test guest in ``out``; return the manifest (absolute paths)."""
    with cache_lock():
        return _build(os.path.abspath(out), force)


def _build(out: str, force: bool) -> Dict[str, object]:
    started = time.monotonic()
    tarball = ensure_rootfs_tarball(force=False)
    kernel_deb = ensure_kernel_deb()
    wanted = inputs_hash(tarball, kernel_deb)
    manifest = read_manifest(out)
    if manifest and manifest.get("inputs_sha256") == wanted and not force:
        log(f"up to date: {out}")
        return _absolute(out, manifest)

    require_root()
    os.makedirs(out, exist_ok=True)
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="work-", dir=CACHE) as work:
        rootdir = extract_rootfs(os.path.join(work, "rootfs"), tarball)
        log("bake: ansible-playbook playbooks/bake_guest_image.yml (chroot connection)")
        bake(rootdir, bake_vars(work))
        add_test_files(rootdir)
        pyz = os.path.join(rootdir, "usr/local/lib/guest-ha/guestd.pyz")
        pyz_sha = sha256_file(pyz)

        log("kernel: unpacking " + os.path.basename(kernel_deb))
        version, vmlinuz, modules = extract_kernel(kernel_deb, os.path.join(work, "kernel"))
        pvh_kernel(vmlinuz, os.path.join(out, "vmlinux"))
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, "vmlinuz"))  # what builds before PVH boot left
        log(f"initramfs: busybox + {', '.join(modules)}")
        build_initramfs(os.path.join(out, "initrd.img"), modules)

        log(f"rootfs: mke2fs -d ({ROOTFS_SIZE})")
        tmp_img = os.path.join(out, "rootfs.ext4.tmp")
        run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "guest-ha-root", "-d", rootdir,
             tmp_img, ROOTFS_SIZE])  # fmt: skip
        os.replace(tmp_img, os.path.join(out, "rootfs.ext4"))

    manifest = {
        "kernel": "vmlinux",
        "initrd": "initrd.img",
        "rootfs": "rootfs.ext4",
        "kernel_version": version,
        "kernel_package": os.path.basename(kernel_deb),
        "modules": list(modules),
        "rootfs_format": "raw",
        "root_device": "/dev/vda",
        "cmdline": "console=ttyS0 root=/dev/vda rw panic=-1",
        "guest_name": GUEST_NAME,
        "port_name": "org.opnfv.ha.0",
        "control_disk": "/dev/vdb",
        "guestd_pyz_sha256": pyz_sha,
        "inputs_sha256": wanted,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    tmp_manifest = os.path.join(out, "manifest.json.tmp")
    with open(tmp_manifest, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    os.replace(tmp_manifest, os.path.join(out, "manifest.json"))
    log(f"built {out} in {manifest['build_seconds']} s")
    return _absolute(out, manifest)


# -- variant c: no Python, busybox + the static C daemon (scripts/build_test_guest_c.py) --
DEFAULT_OUT_C = os.path.join(CACHE, "out-c")
INPUTS_C = (
    "agents/guest-c",
    "scripts/build_test_guest.py",
    "scripts/build_test_guest_c.py",
    "scripts/test_guest/control-check.sh",
)
ROOTFS_SIZE_C = "32M"


def build_c(out: str = DEFAULT_OUT_C, force: bool = False) -> Dict[str, object]:
    """Build (or reuse) the no-Python test guest in ``out``; return its manifest."""
    import build_test_guest_c as variant

    with cache_lock():
        out = os.path.abspath(out)
        started = time.monotonic()
        kernel_deb = ensure_kernel_deb()
        digest = hashlib.sha256()
        for rel in INPUTS_C:
            for path in _walk_files(os.path.join(REPO, rel)):
                if "/build/" not in path:
                    digest.update(os.path.relpath(path, REPO).encode() + sha256_file(path).encode())
        digest.update(os.path.basename(kernel_deb).encode())
        wanted = digest.hexdigest()
        manifest = read_manifest(out)
        if manifest and manifest.get("inputs_sha256") == wanted and not force:
            log(f"up to date: {out}")
            return _absolute(out, manifest)
        require_root()
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="work-c-", dir=CACHE) as work:
            rootdir = os.path.join(work, "rootfs")
            daemon_sha = variant.build_c_rootfs(
                rootdir, REPO, static_busybox(), TEST_CONTROL_CHECK, log
            )
            if variant.has_python(rootdir):
                raise SystemExit("the no-Python image contains Python")
            version, vmlinuz, modules = extract_kernel(kernel_deb, os.path.join(work, "kernel"))
            pvh_kernel(vmlinuz, os.path.join(out, "vmlinux"))
            build_initramfs(os.path.join(out, "initrd.img"), modules)
            tmp_img = os.path.join(out, "rootfs.ext4.tmp")
            run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "guest-ha-root-c", "-d", rootdir,
                 tmp_img, ROOTFS_SIZE_C])  # fmt: skip
            os.replace(tmp_img, os.path.join(out, "rootfs.ext4"))
        variant.write_manifest(
            out,
            {"kernel": "vmlinux", "initrd": "initrd.img", "rootfs": "rootfs.ext4"},
            {
                "variant": "c",
                "kernel_version": version,
                "modules": list(modules),
                "rootfs_format": "raw",
                "root_device": "/dev/vda",
                "cmdline": "console=ttyS0 root=/dev/vda rw panic=-1",
                "guest_name": "guest-ha-test-c",
                "port_name": "org.opnfv.ha.0",
                "control_disk": "/dev/vdb",
                "guestd_c_sha256": daemon_sha,
                "inputs_sha256": wanted,
                "build_seconds": variant.elapsed(started),
            },
        )
        log(f"built the no-Python variant in {out}")
        return _absolute(out, read_manifest(out) or {})


def _absolute(out: str, manifest: Dict[str, object]) -> Dict[str, object]:
    result = dict(manifest)
    result["dir"] = out
    for key in ("kernel", "initrd", "rootfs"):
        result[key] = os.path.join(out, str(manifest[key]))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the inputs did not change"
    )
    parser.add_argument(
        "--refresh-rootfs", action="store_true", help="debootstrap again (drops the cached root)"
    )
    parser.add_argument(
        "--variant",
        choices=("python", "c"),
        default="python",
        help=f"c: busybox + the static C guest daemon, no Python (default out: {DEFAULT_OUT_C})",
    )
    args = parser.parse_args(argv)
    if args.variant == "c":
        out = DEFAULT_OUT_C if args.out == DEFAULT_OUT else args.out
        try:
            build_c(out, force=args.force)
        except subprocess.CalledProcessError as exc:
            log(f"failed: {' '.join(map(str, exc.cmd))} exited with {exc.returncode}")
            return 1
        print(os.path.join(os.path.abspath(out), "manifest.json"))
        return 0
    if args.refresh_rootfs:
        ensure_rootfs_tarball(force=True)
    try:
        build(args.out, force=args.force or args.refresh_rootfs)
    except subprocess.CalledProcessError as exc:
        log(f"failed: {' '.join(map(str, exc.cmd))} exited with {exc.returncode}")
        return 1
    print(os.path.join(os.path.abspath(args.out), "manifest.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
