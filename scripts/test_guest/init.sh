#!/bin/sh
# guest-ha TEST IMAGE ONLY: PID 1 after switch_root (no systemd in the test guest).
# Mounts the API file systems, links /dev/virtio-ports/*, starts guest-ha-guestd
# in a restart loop with its log on the console, and powers off on an ACPI power
# button press (watcher -> SIGTERM to PID 1), SIGTERM or SIGUSR2; reboots on
# SIGINT (Ctrl-Alt-Del). On the way down the daemon gets SIGTERM first, so it
# deregisters with "exit" before the power goes.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
BUSYBOX=/usr/local/lib/guest-ha-test/busybox
CONF=/etc/guest-ha/guestd.conf
PIDFILE=/run/guest-ha-guestd.pid
STOPFILE=/run/guest-ha-test-stopping

say() { echo "guest-ha-test-init: $*" >/dev/console; }

mountpoint -q /proc || mount -t proc -o nosuid,nodev,noexec proc /proc
mountpoint -q /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mountpoint -q /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint -q /dev/pts || mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mountpoint -q /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mountpoint -q /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mount -o remount,rw / 2>/dev/null
exec </dev/null >/dev/console 2>&1
hostname "$(cat /etc/hostname 2>/dev/null || echo guest)"

guest-ha-vport-links

interval=
action=
# shellcheck disable=SC2013 # the kernel command line is words, not lines
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        guest_ha.interval_ms=*) interval=${arg#*=} ;;
        guest_ha.corrective_action=*) action=${arg#*=} ;;
    esac
done
case "$interval" in
    ''|*[!0-9]*) ;;
    *)
        sed -i "s/^interval_ms *=.*/interval_ms = $interval/" "$CONF"
        say "interval_ms = $interval"
        ;;
esac
case "$action" in
    log|reboot|stop)
        sed -i "s/^corrective_action *=.*/corrective_action = $action/" "$CONF"
        say "corrective_action = $action"
        ;;
esac

run_daemon() {
    trap '' INT
    while [ ! -e "$STOPFILE" ]; do
        guest-ha-guestd --config "$CONF" &
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
        while [ $i -lt 50 ] && kill -0 "$pid" 2>/dev/null; do
            sleep 0.1
            i=$((i + 1))
        done
    fi
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
    sync
    mount -o remount,ro / 2>/dev/null
    say "$1 now"
    exec "$BUSYBOX" "$1" -f
}

trap 'shutdown_now poweroff' TERM USR2
trap 'shutdown_now reboot' INT

run_daemon &
# qemu-ga only where the domain has its port (Nova: image hw_qemu_guest_agent=yes).
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ] && command -v qemu-ga >/dev/null; then
    qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -f /run/qemu-ga.pid
fi
case " $(cat /proc/cmdline) " in
    *" guest_ha.demo_peer=1 "*) /usr/local/bin/guest-ha-demo-peer & ;;
esac
watcher=
if [ -x /usr/local/sbin/guest-ha-test-powerbtn ]; then
    /usr/local/sbin/guest-ha-test-powerbtn &
    watcher=$!
fi
say "up"
# PID 1 must never exit; "wait" also reaps orphans, and returns for traps.
while :; do
    sleep 3600 &
    wait
done
