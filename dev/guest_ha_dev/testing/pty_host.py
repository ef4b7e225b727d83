"""The host end of a pseudo-terminal that stands in for a guest's virtio port:
tests act as the compute host with the protocol core (send host-to-guest PDUs,
receive validated guest-to-host PDUs) against a real guest daemon process."""

from __future__ import annotations

import os
import select
import time
import tty
from typing import Any, Callable, List, Optional

from guest_ha.protocol import (
    GUEST_TO_HOST,
    HEARTBEAT,
    HOST_TO_GUEST,
    SERVER_GROUP,
    FrameDecoder,
    Message,
    decode_envelope,
    make,
    validate,
)


class PtyHost:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        """What the guest daemon opens as its port."""
        self.decoder = FrameDecoder()
        self.inbox: List[Message] = []
        self.seq = 0

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def send(self, *msgs: Message) -> None:
        data = b"".join(m.encode() for m in msgs)
        while data:
            _, ready, _ = select.select([], [self.master], [], 5)
            assert ready, "pty not writable"
            data = data[os.write(self.master, data) :]

    def pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            for frame in self.decoder.feed(data):
                assert isinstance(frame, bytes), frame
                self.inbox.append(validate(decode_envelope(frame), GUEST_TO_HOST))

    def recv(self, msg_type: str, app: Optional[str] = None, timeout: float = 5.0) -> Message:
        """The first received PDU of ``msg_type`` (of application ``app``, if given)."""
        end = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.inbox):
                if msg.msg_type == msg_type and app in (None, msg.app):
                    return self.inbox.pop(i)
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {app or ''} {msg_type} within {timeout} s ({self.inbox})")
            self.pump(min(left, 0.05))

    def register(self, interval_ms: int = 1000) -> Message:
        init = self.recv("init", HEARTBEAT)
        self.send(
            make(
                HEARTBEAT,
                "init_ack",
                HOST_TO_GUEST,
                invocation_id=init["invocation_id"],
                interval_ms=interval_ms,
            )
        )
        return init

    def challenge(self, timeout: float = 5.0) -> Message:
        self.seq += 1
        nonce = f"{self.seq:08x}c0ffee"
        self.send(make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=self.seq, nonce=nonce))
        resp = self.recv("challenge_response", HEARTBEAT, timeout)
        assert resp["seq"] == self.seq and resp["nonce"] == nonce
        return resp

    def challenge_until(self, predicate: Callable[[Message], Any], timeout: float = 5.0) -> Message:
        end = time.monotonic() + timeout
        while True:
            resp = self.challenge()
            if predicate(resp):
                return resp
            if time.monotonic() > end:
                raise AssertionError(f"last response {resp}")
            time.sleep(0.05)

    def answer_status(self, query: Message, members: List[Any]) -> None:
        seq = query["seq"]
        self.send(
            *[
                make(SERVER_GROUP, "status_response", HOST_TO_GUEST, seq=seq, data=m)
                for m in members
            ],
            make(SERVER_GROUP, "status_response_done", HOST_TO_GUEST, seq=seq),
        )
