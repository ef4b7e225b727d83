#!/bin/sh
# guest-ha TEST IMAGE ONLY: unhealthy while the first byte of the control disk
# (second virtio disk, /dev/vdb) is "1" (0x31 or 0x01); slow (1.5 s) but healthy
# while it is "2" (0x32); "3" (0x33) freezes the guest daemon (SIGSTOP of the
# check's parent): a hung guest whose QEMU still answers. The host test writes it.
# O_DIRECT read, so a change the host makes to the disk file is seen at once.
dev=${GUEST_HA_TEST_CONTROL_DEV:-/dev/vdb}
[ -b "$dev" ] || exit 0
byte=$(dd if="$dev" bs=512 count=1 iflag=direct 2>/dev/null | od -An -tx1 -N1 | tr -d ' \n')
case "$byte" in
    31|01) echo "test control disk $dev says unhealthy"; exit 1 ;;
    32) sleep 1.5 ;;
    33) kill -STOP "$PPID"; sleep 1 ;;
esac
exit 0
