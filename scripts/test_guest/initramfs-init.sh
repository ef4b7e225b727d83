#!/bin/sh
# guest-ha test guest initramfs: load virtio modules, mount /dev/vda, switch_root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# shellcheck disable=SC2013 # one module name per word
for m in $(cat /modules.list); do
    insmod "/lib/modules/$m.ko" || echo "initramfs: insmod $m failed"
done
root=/dev/vda
init=/sbin/guest-ha-test-init
# shellcheck disable=SC2013 # the kernel command line is words, not lines
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=/dev/*) root=${arg#root=} ;;
        init=*) init=${arg#init=} ;;
    esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /newroot
if ! mount -t ext4 -o rw "$root" /newroot; then
    echo "initramfs: cannot mount $root; dropping to a shell"
    exec sh
fi
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot "$init"
