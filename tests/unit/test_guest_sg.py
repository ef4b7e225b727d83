"""Server group relay in the guest daemon: the sg_* app API ops, pushes and the client.

One thread runs the app socket, the relay and a GuestChannel the way the
daemon's loop does; the test plays the host by feeding the channel validated
host-to-guest PDUs and by decoding what the guest queued for the host.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import socket
import threading
import time

import pytest

from channel_support import take_output
from guest_ha.guest.apps import AppRegistry, AppServer
from guest_ha.guest.cli import format_members, format_push
from guest_ha.guest.cli import sg_main as main
from guest_ha.guest.client import HealthClient
from guest_ha.guest.sg import ServerGroupRelay, nack_code
from guest_ha.guest.sg_client import (
    HostUnavailable,
    MessageTooLarge,
    Nacked,
    NotInServerGroup,
    OwnerTaken,
    RateLimited,
    ServerGroupClient,
    ServerGroupError,
    StatusTimeout,
)
from guest_ha.protocol import (
    GUEST_TO_HOST,
    HOST_TO_GUEST,
    SERVER_GROUP,
    FrameDecoder,
    GuestChannel,
    GuestHeartbeat,
    decode_envelope,
    make,
    validate,
)
from guest_ha.protocol.channel import HostPdu
from guest_ha.protocol.messages import nack

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test.guest.sg")
UUID_A = "0b7d2f3c-5a4e-4d1b-9c6e-1f2a3b4c5d6e"
UUID_B = "9f8e7d6c-5b4a-4392-8170-fedcba987654"


def member(uuid, name, state="active", power="running", task=None, host="compute-1"):
    return {
        "uuid": uuid,
        "display_name": name,
        "host": host,
        "state": state,
        "power_state": power,
        "task_state": task,
    }


class Harness:
    """The daemon's app-socket side, in one thread; the test is the host."""

    def __init__(self, path, *, rate=50.0, burst=100.0, status_timeout_s=5.0):
        now = time.monotonic()
        self.connected = True
        self.heartbeat = GuestHeartbeat(name="t", interval_ms=1000, invocation_id="inv-1")
        self.channel = GuestChannel(self.heartbeat, now)
        self.registry = AppRegistry(LOG)
        self.server = AppServer(path, self.registry, self._status, LOG)
        self.relay = ServerGroupRelay(
            self.channel,
            self.server,
            LOG,
            now,
            host_connected=lambda: self.connected,
            status_timeout_s=status_timeout_s,
            rate=rate,
            burst=burst,
            first_seq=100,
        )
        self.server.start()
        self.decoder = FrameDecoder()
        self.backlog: list = []
        self._calls: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _status(self, now):
        return {"server_group": self.relay.status(now)}

    def _run(self):
        while not self._stop.is_set():
            poller = select.poll()
            for fd, events in self.server.poll_fds():
                poller.register(fd, events)
            for fd, revents in poller.poll(5):
                self.server.handle(fd, revents, time.monotonic())
            while True:
                try:
                    fn, box, done = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    box.append(fn())
                except Exception as exc:  # handed back to the test
                    box.append(exc)
                done.set()
            now = time.monotonic()
            for item in self.channel.next_items():
                if isinstance(item, HostPdu):
                    self.relay.handle(item.msg, now)
            self.relay.tick(now)
            self.server.flush(now)

    def call(self, fn):
        box: list = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        assert done.wait(5)
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def host_send(self, *msgs):
        data = b"".join(m.encode() for m in msgs)
        self.call(lambda: self.channel.receive_data(data, time.monotonic()))

    def set_connected(self, value):
        def change():
            self.connected = value

        self.call(change)

    def sent(self):
        """Server group PDUs the guest queued for the host since the last call."""

        def take():
            return take_output(self.channel)

        msgs = []
        for frame in self.decoder.feed(self.call(take)):
            assert isinstance(frame, bytes), frame
            msg = validate(decode_envelope(frame), GUEST_TO_HOST)
            if msg.app == SERVER_GROUP:
                msgs.append(msg)
        return msgs

    def wait_sent(self, msg_type, timeout=5.0):
        """The next PDU of ``msg_type`` sent; others stay in ``self.backlog``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.backlog += self.sent()
            for i, msg in enumerate(self.backlog):
                if msg.msg_type == msg_type:
                    return self.backlog.pop(i)
            time.sleep(0.005)
        raise AssertionError(f"no {msg_type} sent (got {self.backlog})")

    def answer_status(self, query, members, done=True):
        msgs = [
            make(SERVER_GROUP, "status_response", HOST_TO_GUEST, seq=query["seq"], data=m)
            for m in members
        ]
        if done:
            msgs.append(make(SERVER_GROUP, "status_response_done", HOST_TO_GUEST, seq=query["seq"]))
        self.host_send(*msgs)

    def counters(self):
        return self.call(lambda: dict(self.relay.counters))

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def harness(tmp_path):
    made = []

    def make_harness(**kwargs):
        h = Harness(str(tmp_path / "app.sock"), **kwargs)
        made.append(h)
        return h

    yield make_harness
    for h in made:
        h.stop()


@pytest.fixture
def h(harness):
    return harness()


def host_broadcast(data, source=UUID_B):
    return make(SERVER_GROUP, "broadcast", HOST_TO_GUEST, source_instance=source, data=data)


class Raw:
    """A bare socket speaking the app API line protocol."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(5)
        self.buf = b""

    def send(self, *reqs):
        self.sock.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in reqs))

    def send_line(self, line: bytes):
        self.sock.sendall(line + b"\n")

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def close(self):
        self.sock.close()


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


# -- broadcast: guest to host ---------------------------------------------------------------
def test_broadcast_goes_on_the_wire_without_source_instance(h):
    with ServerGroupClient(h.server.path) as sg:
        sg.broadcast({"role": "active", "epoch": 7})
        sg.broadcast("plain text")
        sg.broadcast(None)
    first = h.wait_sent("broadcast")
    assert first.app == SERVER_GROUP
    assert dict(first.fields) == {"data": {"role": "active", "epoch": 7}}
    assert "source_instance" not in first.fields
    assert h.wait_sent("broadcast")["data"] == "plain text"
    assert h.wait_sent("broadcast")["data"] is None
    assert h.counters()["broadcasts_sent"] == 3


def test_broadcast_size_limit_is_the_protocol_limit(h):
    exact = "x" * 3048  # compact encoding: 3050 bytes with the quotes
    wide = "\u00e9" * 1524  # 2 bytes each in UTF-8: 3048 + 2
    with ServerGroupClient(h.server.path) as sg:
        sg.broadcast(exact)
        sg.broadcast(wide)
        with pytest.raises(MessageTooLarge, match="3051 bytes"):
            sg.broadcast(exact + "y")
    assert h.wait_sent("broadcast")["data"] == exact
    assert h.wait_sent("broadcast")["data"] == wide
    # The daemon checks too (a client that skips the local check), with ASCII escapes
    # on the socket: the limit counts the compact UTF-8 encoding, not the request.
    raw = Raw(h.server.path)
    raw.send_line(json.dumps({"op": "sg_broadcast", "data": "\u00e9" * 1525}).encode())
    reply = raw.line()
    assert reply["ok"] is False and reply["code"] == "too_large"
    assert reply["size"] == 3052 and reply["limit"] == 3050
    raw.close()
    assert h.sent() == []


@pytest.mark.parametrize(
    "line, code",
    [
        (b'{"op":"sg_broadcast","data":NaN}', None),
        (b'{"op":"sg_broadcast","data":1e400}', None),
        (b'{"op":"sg_broadcast","data":"\\ud800"}', None),
        (b'{"op":"sg_broadcast"}', "invalid"),
        (b'{"op":"sg_status","timeout_ms":5}', "invalid"),
        (b'{"op":"sg_status","timeout_ms":true}', "invalid"),
    ],
)
def test_invalid_requests_are_refused_and_nothing_is_sent(h, line, code):
    raw = Raw(h.server.path)
    raw.send_line(line)
    reply = raw.line()
    assert reply["ok"] is False
    assert reply.get("code") == code
    raw.close()
    assert h.sent() == []


def test_non_json_data_is_refused_by_the_client(h):
    with ServerGroupClient(h.server.path) as sg:
        with pytest.raises(ServerGroupError, match="JSON"):
            sg.broadcast({"x": float("nan")})
        with pytest.raises(ServerGroupError, match="JSON"):
            sg.broadcast({"x": object()})


def test_local_rate_limit(harness):
    h = harness(rate=1.0, burst=3.0)
    with ServerGroupClient(h.server.path) as sg:
        for i in range(3):
            sg.broadcast(i)
        with pytest.raises(RateLimited):
            sg.broadcast(3)
        with pytest.raises(RateLimited):
            sg.request_status(timeout=1)
    assert [h.wait_sent("broadcast")["data"] for _ in range(3)] == [0, 1, 2]
    assert h.sent() == []
    assert h.counters()["rate_limited"] == 2


def test_no_host_means_an_error_not_a_silent_loss(h):
    h.set_connected(False)
    with ServerGroupClient(h.server.path) as sg:
        with pytest.raises(HostUnavailable):
            sg.broadcast("x")
        with pytest.raises(HostUnavailable):
            sg.request_status()


# -- pushes: host to guest -------------------------------------------------------------------
def test_host_broadcast_reaches_the_subscriber_callback(h):
    got: queue.Queue = queue.Queue()
    with ServerGroupClient(h.server.path) as sg:
        sg.on_broadcast(lambda src, data: got.put(("broadcast", src, data)))
        sg.on_notification(lambda data: got.put(("notification", data)))
        assert sg.subscribe()["subscribed"] is True
        sg.start()
        h.host_send(host_broadcast({"epoch": 3}))
        h.host_send(
            make(SERVER_GROUP, "notification", HOST_TO_GUEST, data=member(UUID_B, "b", "stopped"))
        )
        assert got.get(timeout=5) == ("broadcast", UUID_B, {"epoch": 3})
        kind, data = got.get(timeout=5)
        assert kind == "notification" and data["state"] == "stopped"
    counters = h.counters()
    assert counters["broadcasts_received"] == 1
    assert counters["notifications_received"] == 1
    assert counters["dropped_no_owner"] == 0


def test_poll_style_dispatch(h):
    seen = []
    with ServerGroupClient(h.server.path) as sg:
        sg.on_broadcast(lambda src, data: seen.append(data))
        sg.subscribe()
        assert sg.poll(0) == 0
        h.host_send(host_broadcast(1), host_broadcast(2))
        end = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < end:
            sg.poll(0.2)
        # A request made while pushes arrive keeps them for the next poll.
        h.host_send(host_broadcast(3))
        time.sleep(0.05)
        sg.broadcast("mine")
        assert sg.poll(1.0) >= 1
    assert seen == [1, 2, 3]


def test_messages_without_a_subscriber_are_dropped_and_counted(h):
    h.host_send(host_broadcast("lost"), make(SERVER_GROUP, "notification", HOST_TO_GUEST, data={}))
    wait_for(lambda: h.counters()["dropped_no_owner"] == 2)
    with HealthClient(h.server.path) as client:
        status = client.status()
    assert status["server_group"]["owner"] is None


def test_push_and_reply_framing_when_a_push_arrives_during_a_request(h):
    raw = Raw(h.server.path)
    raw.send({"op": "sg_subscribe", "id": "s"})
    assert raw.line() == {"ok": True, "subscribed": True, "host_connected": True, "id": "s"}
    raw.send({"op": "sg_status", "id": 41}, {"op": "status", "id": 42})
    query = h.wait_sent("status_query")
    h.host_send(host_broadcast("during"))
    push = raw.line()
    assert push == {"push": "broadcast", "source_instance": UUID_B, "data": "during"}
    h.answer_status(query, [member(UUID_A, "a")])
    reply = raw.line()
    assert reply["ok"] is True and reply["id"] == 41 and "push" not in reply
    assert reply["members"] == [member(UUID_A, "a")]
    # The request pipelined behind the deferred one is answered after it, in order.
    second = raw.line()
    assert second["id"] == 42 and second["server_group"]["owner"]["client"] >= 1
    raw.close()


# -- status ------------------------------------------------------------------------------------
def test_status_collects_responses_until_done(h):
    result: queue.Queue = queue.Queue()
    with ServerGroupClient(h.server.path) as sg:
        t = threading.Thread(target=lambda: result.put(sg.request_status(timeout=5)))
        t.start()
        query = h.wait_sent("status_query")
        assert query["seq"] == 100
        # a stale answer, an interleaved broadcast (no owner: dropped), then the real ones
        h.answer_status(make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=99), [{"x": 1}])
        h.host_send(host_broadcast("x"))
        h.answer_status(query, [member(UUID_A, "a")], done=False)
        assert result.empty()
        h.answer_status(query, [member(UUID_B, "b", "stopped", "shutdown")])
        t.join(5)
    members = result.get_nowait()
    assert [m["uuid"] for m in members] == [UUID_A, UUID_B]
    counters = h.counters()
    assert counters["status_responses_stale"] == 2
    assert counters["status_responses_received"] == 2


def test_status_nack_fails_the_pending_query_and_tells_the_owner(h):
    nacks: queue.Queue = queue.Queue()
    with ServerGroupClient(h.server.path) as owner, ServerGroupClient(h.server.path) as asker:
        owner.on_nack(lambda orig, code, text: nacks.put((orig, code, text)))
        owner.subscribe()
        owner.start()
        errors: queue.Queue = queue.Queue()

        def ask():
            try:
                asker.request_status(timeout=5)
            except ServerGroupError as exc:
                errors.put(exc)

        t = threading.Thread(target=ask)
        t.start()
        h.wait_sent("status_query")
        h.host_send(nack(SERVER_GROUP, "status_query", "not_in_server_group: VM is in no group"))
        t.join(5)
        exc = errors.get_nowait()
        assert isinstance(exc, NotInServerGroup) and isinstance(exc, Nacked)
        assert exc.nack_code == "not_in_server_group"
        assert nacks.get(timeout=5) == (
            "status_query",
            "not_in_server_group",
            "not_in_server_group: VM is in no group",
        )
        # a nack of a broadcast only reaches the owner
        h.host_send(nack(SERVER_GROUP, "broadcast", "rate_limited: slow down"))
        assert nacks.get(timeout=5)[:2] == ("broadcast", "rate_limited")
        # other codes give a plain Nacked
        t = threading.Thread(target=ask)
        t.start()
        h.wait_sent("status_query")
        h.host_send(nack(SERVER_GROUP, "status_query", "rate_limited: slow down"))
        t.join(5)
        exc = errors.get_nowait()
        assert type(exc) is Nacked and exc.nack_code == "rate_limited"


def test_status_timeout_returns_the_partial_answer(h):
    with ServerGroupClient(h.server.path) as sg:
        errors: queue.Queue = queue.Queue()

        def ask():
            try:
                sg.request_status(timeout=0.3)
            except ServerGroupError as exc:
                errors.put(exc)

        t = threading.Thread(target=ask)
        t.start()
        query = h.wait_sent("status_query")
        h.answer_status(query, [member(UUID_A, "a")], done=False)
        t.join(5)
        exc = errors.get_nowait()
        assert isinstance(exc, StatusTimeout)
        assert exc.members == [member(UUID_A, "a")]
        # the late done is stale; the next query works
        h.answer_status(query, [])
        t = threading.Thread(target=lambda: errors.put(sg.request_status(timeout=5)))
        t.start()
        second = h.wait_sent("status_query")
        assert second["seq"] == query["seq"] + 1
        h.answer_status(second, [member(UUID_B, "b")])
        t.join(5)
        assert errors.get_nowait() == [member(UUID_B, "b")]
    assert h.counters()["status_timeouts"] == 1


def test_status_queries_go_to_the_host_one_at_a_time(h):
    results: queue.Queue = queue.Queue()
    clients = [ServerGroupClient(h.server.path) for _ in range(2)]
    try:
        threads = [
            threading.Thread(target=lambda c=c: results.put(c.request_status(timeout=5)))
            for c in clients
        ]
        for t in threads:
            t.start()
        first = h.wait_sent("status_query")
        time.sleep(0.1)
        assert h.sent() == []  # the second waits for the first
        h.answer_status(first, [member(UUID_A, "a")])
        second = h.wait_sent("status_query")
        assert second["seq"] == first["seq"] + 1
        h.answer_status(second, [member(UUID_B, "b")])
        for t in threads:
            t.join(5)
        assert sorted(results.get_nowait()[0]["uuid"] for _ in range(2)) == [UUID_A, UUID_B]
    finally:
        for c in clients:
            c.close()


def test_host_going_away_fails_the_pending_status(h):
    errors: queue.Queue = queue.Queue()
    with ServerGroupClient(h.server.path) as sg:

        def ask():
            try:
                sg.request_status(timeout=5)
            except ServerGroupError as exc:
                errors.put(exc)

        t = threading.Thread(target=ask)
        t.start()
        h.wait_sent("status_query")
        h.set_connected(False)
        t.join(5)
        assert isinstance(errors.get_nowait(), HostUnavailable)


def test_asker_disconnecting_does_not_break_the_next_query(h):
    raw = Raw(h.server.path)
    raw.send({"op": "sg_status"})
    query = h.wait_sent("status_query")
    raw.close()
    time.sleep(0.05)
    h.answer_status(query, [member(UUID_A, "a")])
    with ServerGroupClient(h.server.path) as sg:
        t = threading.Thread(target=sg.request_status)
        t.start()
        second = h.wait_sent("status_query")
        h.answer_status(second, [])
        t.join(5)


# -- ownership ----------------------------------------------------------------------------------
def test_only_one_subscriber_at_a_time(h):
    first = ServerGroupClient(h.server.path)
    first.subscribe()
    first.subscribe()  # again on the same connection: fine
    with ServerGroupClient(h.server.path) as second:
        with pytest.raises(OwnerTaken) as info:
            second.subscribe()
        assert "only one app" in str(info.value)
        assert info.value.owner_pid == os.getpid()
        # a non-owner may still send and ask
        second.broadcast("from a non-owner")
        with pytest.raises(ServerGroupError, match="not subscribed"):
            second.unsubscribe()
        first.unsubscribe()
        second.subscribe()
        second.unsubscribe()
        first.subscribe()
        first.close()  # gone without unsubscribing: the role is free
        wait_for(lambda: _subscribe_ok(second))
    h.wait_sent("broadcast")


def _subscribe_ok(client):
    try:
        client.subscribe()
    except OwnerTaken:
        return False
    return True


def test_slow_subscriber_loses_oldest_pushes_and_never_blocks(h):
    raw = Raw(h.server.path)
    raw.send({"op": "sg_subscribe"})
    assert raw.line()["ok"] is True
    payload = "p" * 2000
    for start in range(0, 3000, 100):
        h.host_send(*[host_broadcast({"n": n, "pad": payload}) for n in range(start, start + 100)])
    # The daemon keeps serving other clients at once.
    with ServerGroupClient(h.server.path, timeout=2) as other:
        t0 = time.monotonic()
        other.broadcast("still served")
        assert time.monotonic() - t0 < 1.0
    wait_for(lambda: h.call(lambda: h.server.counters["pushes_dropped"]) > 0)
    # Reading now: some pushes, then the "dropped" marker, then the newest ones.
    seen, dropped = [], 0
    raw.sock.settimeout(2)
    while True:
        try:
            msg = raw.line()
        except (socket.timeout, AssertionError):
            break
        if msg["push"] == "dropped":
            dropped += msg["count"]
        else:
            seen.append(msg["data"]["n"])
    assert dropped > 0
    assert len(seen) + dropped == 3000
    assert seen == sorted(seen) and seen[-1] == 2999
    raw.close()


def test_health_client_ignores_pushes(h):
    with HealthClient(h.server.path) as client:
        client.request("sg_subscribe")
        h.host_send(host_broadcast("noise"))
        time.sleep(0.05)
        assert "server_group" in client.status()


# -- helpers and CLI -------------------------------------------------------------------------------
def test_nack_code_parsing():
    assert nack_code("not_enabled: server group messaging is off") == "not_enabled"
    assert nack_code("rate_limited: a: b") == "rate_limited"
    assert nack_code("weird") == "weird"
    assert nack_code("") == "unknown"


def test_format_members_and_pushes():
    table = format_members(
        [member(UUID_B, "vnf-b", "stopped", "shutdown"), member(UUID_A, "vnf-a", task="rebooting")]
    ).splitlines()
    assert table[0].split() == ["UUID", "NAME", "HOST", "STATE", "POWER_STATE", "TASK_STATE"]
    assert table[1].split() == [UUID_A, "vnf-a", "compute-1", "active", "running", "rebooting"]
    assert table[2].split() == [UUID_B, "vnf-b", "compute-1", "stopped", "shutdown", "-"]
    assert (
        format_push({"push": "broadcast", "source_instance": UUID_A, "data": {"e": 1}})
        == f'broadcast from {UUID_A}: {{"e":1}}'
    )
    line = format_push({"push": "notification", "data": member(UUID_B, "b", "error")})
    assert line.startswith(f"notification: {UUID_B} b ") and "state=error" in line


def test_cli_broadcast_and_status(h, capsys):
    assert main(["--socket", h.server.path, "broadcast", "hello there"]) == 0
    assert h.wait_sent("broadcast")["data"] == "hello there"
    assert main(["--socket", h.server.path, "broadcast", "--json", '{"epoch": 4}']) == 0
    assert h.wait_sent("broadcast")["data"] == {"epoch": 4}
    assert main(["--socket", h.server.path, "broadcast", "x" * 3049]) == 1
    assert "3051 bytes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--socket", h.server.path, "broadcast", "--json", "{bad"])
    assert info.value.code == 2

    def answer():
        query = h.wait_sent("status_query")
        h.answer_status(query, [member(UUID_A, "vnf-a")])

    for as_json in (False, True):
        t = threading.Thread(target=answer)
        t.start()
        argv = ["--socket", h.server.path, "status"] + (["--json"] if as_json else [])
        assert main(argv) == 0
        t.join(5)
        out = capsys.readouterr().out
        if as_json:
            assert json.loads(out) == [member(UUID_A, "vnf-a")]
        else:
            assert out.splitlines()[1].split()[:2] == [UUID_A, "vnf-a"]


def test_cli_reports_an_unreachable_daemon(tmp_path, capsys):
    assert main(["--socket", str(tmp_path / "nope.sock"), "status"]) == 1
    assert "cannot connect" in capsys.readouterr().err
