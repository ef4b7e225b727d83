#!/usr/bin/python3
# guest-ha TEST IMAGE ONLY: the test guest has no acpid. Watch the input event
# devices for KEY_POWER (what the ACPI "button" driver reports for an ACPI power
# button press, i.e. "virsh shutdown" / QEMU system_powerdown) and send SIGTERM
# to PID 1, whose handler stops guest-ha-guestd and powers off.
import glob
import os
import select
import signal
import struct
import time

EVENT = struct.Struct("llHHi")  # struct input_event on 64-bit
EV_KEY, KEY_POWER = 1, 116

fds = []
while not fds:
    for path in sorted(glob.glob("/dev/input/event*")):
        try:
            fds.append(os.open(path, os.O_RDONLY))
        except OSError:
            pass
    if not fds:
        time.sleep(1)
poller = select.poll()
for fd in fds:
    poller.register(fd, select.POLLIN)
while True:
    for fd, _ in poller.poll():
        data = os.read(fd, EVENT.size * 64)
        for off in range(0, len(data) - EVENT.size + 1, EVENT.size):
            _s, _us, etype, code, value = EVENT.unpack_from(data, off)
            if etype == EV_KEY and code == KEY_POWER and value == 1:
                os.kill(1, signal.SIGTERM)
