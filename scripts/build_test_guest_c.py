"""The no-Python variant of the test guest: busybox and the static C daemon only.

Called by ``scripts/build_test_guest.py --variant c``. It reuses that script's
kernel, modules and initramfs, and builds a root filesystem holding nothing but
a static busybox, ``guest-ha-guestd`` and the example app from agents/guest-c (``make static``, with
musl-gcc when installed), its config and the test-control check. There is no
Python (and no libc) in it at all.

TEST IMAGE ONLY pieces: the init below, the ``50-test-control`` check (first
byte of ``/dev/vdb``: ``1`` = unhealthy) and the stop switch (second byte of
``/dev/vdb``: ``S`` = stop the daemon with SIGTERM, as ``systemctl stop`` would,
then power off). The host writes both with ``guest_ha_dev.sim.testguest``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Callable, Dict

C_GUEST_CONF = """[guestd]
name = guest-ha-test-c
interval_ms = 1000
check_interval_ms = 250
check_timeout_ms = 2000
log = stderr
"""

C_TEST_INIT = r"""#!/bin/sh
# guest-ha TEST IMAGE ONLY (no-Python variant): PID 1 after switch_root.
# Mounts the API file systems, links /dev/virtio-ports/*, runs the static C
# guest-ha-guestd in a restart loop with its log on the console. Stops it with
# SIGTERM and powers off when the control disk's second byte is "S", on SIGTERM
# or SIGUSR2; reboots on SIGINT.
PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
CONF=/etc/guest-ha/guestd.conf
PIDFILE=/run/guest-ha-guestd.pid
STOPFILE=/run/guest-ha-test-stopping
say() { echo "guest-ha-test-init: $*" >/dev/console; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -o remount,rw /
exec </dev/null >/dev/console 2>&1
hostname guest-ha-test-c
links() {
    mkdir -p /dev/virtio-ports
    for f in /sys/class/virtio-ports/*/name; do
        [ -r "$f" ] || continue
        d=${f%/name}; d=${d##*/}
        ln -sf "../$d" "/dev/virtio-ports/$(cat "$f")"
    done
}
links
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        guest_ha.interval_ms=[0-9]*)
            sed -i "s/^interval_ms *=.*/interval_ms = ${arg#*=}/" "$CONF"
            say "interval_ms = ${arg#*=}" ;;
    esac
done
run_daemon() {
    trap '' INT
    while [ ! -e "$STOPFILE" ]; do
        /usr/sbin/guest-ha-guestd --config "$CONF" &
        echo $! >"$PIDFILE"
        wait $!
        rc=$?
        [ -e "$STOPFILE" ] && break
        say "guest-ha-guestd exited with status $rc; restarting in 1 s"
        sleep 1
    done
}
shutdown_now() {
    say "$1 requested: stopping guest-ha-guestd"
    touch "$STOPFILE"
    pid=$(cat "$PIDFILE" 2>/dev/null)
    if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
        i=0
        while [ $i -lt 50 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
    fi
    say "guest-ha-guestd stopped"
    sync
    mount -o remount,ro / 2>/dev/null
    say "$1 now"
    exec busybox "$1" -f
}
trap 'shutdown_now poweroff' TERM USR2
trap 'shutdown_now reboot' INT
demo_peer() {
    # the C example app (agents/guest-c/examples) as a server-group demo peer:
    # broadcasts every 3 s and prints what it receives as JSON lines
    while [ ! -e "$STOPFILE" ]; do
        gh-example-app --name demo-peer-c --every 3 --broadcast '"from C"'
        sleep 1
    done
}
run_daemon &
case " $(cat /proc/cmdline) " in
    *" guest_ha.demo_peer=1 "*) demo_peer & ;;
esac
say "up (no Python: busybox + static C guest-ha-guestd)"
while :; do
    # hot-plugged ports appear later: keep the links fresh (the daemon also
    # finds ports by name in /sys itself)
    links
    if [ -b /dev/vdb ]; then
        b=$(dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null \
            | od -An -c -j1 -N1 | tr -d ' \n')
        [ "$b" = "S" ] && shutdown_now poweroff
    fi
    sleep 0.3 &
    wait $!
done
"""


def build_c_rootfs(
    rootdir: str, repo: str, busybox: str, check_script: str, log: Callable[[str], None]
) -> str:
    """Fill ``rootdir``; return the sha256 of the static daemon put in it."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/guest-ha/checks.d", "proc", "sys",
              "dev", "run", "tmp", "var/log"):  # fmt: skip
        os.makedirs(os.path.join(rootdir, d), exist_ok=True)
    shutil.copy2(busybox, os.path.join(rootdir, "bin", "busybox"))
    applets = subprocess.run(
        [busybox, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        path = os.path.join(rootdir, applet)
        if not os.path.lexists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink("/bin/busybox", path)
    build = tempfile.mkdtemp(prefix="gha-cstatic-")
    try:
        log("C daemon: make static (agents/guest-c)")
        subprocess.run(
            ["make", "-s", "-C", os.path.join(repo, "agents", "guest-c"), f"BUILD={build}",
             "static"],
            check=True,
        )  # fmt: skip
        daemon = os.path.join(rootdir, "usr", "sbin", "guest-ha-guestd")
        shutil.copy2(os.path.join(build, "static", "guest-ha-guestd"), daemon)
        shutil.copy2(
            os.path.join(build, "static", "gh-example-app"),
            os.path.join(rootdir, "usr", "bin", "gh-example-app"),
        )
    finally:
        shutil.rmtree(build, ignore_errors=True)
    with open(daemon, "rb") as fh:
        head = fh.read(1 << 16)
    if b"ld-linux" in head or b"ld-musl" in head:
        raise SystemExit("the C daemon is not static")
    files = {
        "sbin/guest-ha-test-init": (C_TEST_INIT, 0o755),
        "etc/guest-ha/guestd.conf": (C_GUEST_CONF, 0o644),
        "etc/guest-ha/checks.d/50-test-control": (check_script, 0o755),
        "etc/hostname": ("guest-ha-test-c\n", 0o644),
    }
    for rel, (text, mode) in files.items():
        with open(os.path.join(rootdir, rel), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(os.path.join(rootdir, rel), mode)
    with open(daemon, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def has_python(rootdir: str) -> bool:
    return any(n.startswith("python") for _top, _dirs, names in os.walk(rootdir) for n in names)


def write_manifest(out: str, base: Dict[str, object], extra: Dict[str, object]) -> None:
    manifest = dict(base)
    manifest.update(extra)
    manifest["built_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    tmp = os.path.join(out, "manifest.json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, os.path.join(out, "manifest.json"))


def elapsed(started: float) -> float:
    return round(time.monotonic() - started, 1)
