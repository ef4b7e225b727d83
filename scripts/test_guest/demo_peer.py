#!/usr/bin/python3
# guest-ha TEST IMAGE ONLY: a tiny VNF-like app for the demos, started when the
# kernel command line has guest_ha.demo_peer=1. It owns the server-group role,
# prints every broadcast and peer notification it receives to the console, and
# broadcasts "hello from <hostname> #N" every few seconds, using the same
# client library (guest_ha.guest.sg_client, from the guest daemon's zipapp)
# that VNF developers use.
import socket
import sys
import time

sys.path.insert(0, "/usr/local/lib/guest-ha/guestd.pyz")
from guest_ha.guest.sg_client import ServerGroupClient, ServerGroupError

SOCKET = "/run/guest-ha/app.sock"
NAME = socket.gethostname()


def say(text):
    with open("/dev/console", "w") as console:
        console.write(f"guest-ha-demo-peer: {text}\n")


def main():
    while True:
        try:
            client = ServerGroupClient(SOCKET)
            break
        except ServerGroupError:
            time.sleep(0.5)
    client.on_broadcast(lambda source, data: say(f"RECEIVED broadcast from {source}: {data}"))
    client.on_notification(lambda data: say(f"peer notification: {data}"))
    client.subscribe()
    client.start()
    say("subscribed")
    n = 0
    while True:
        n += 1
        try:
            client.broadcast({"hello": NAME, "n": n})
            say(f"SENT broadcast #{n}")
        except ServerGroupError as exc:
            say(f"broadcast #{n} not sent: {exc}")
        time.sleep(3)


main()
