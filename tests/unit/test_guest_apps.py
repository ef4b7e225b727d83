"""App health API: a real UNIX socket in tmp_path, plus the client library and CLI."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import stat
import threading
import time

import pytest

from guest_ha.guest.apps import MAX_LINE_BYTES, AppRegistry, AppServer
from guest_ha.guest.cli import health_main as main
from guest_ha.guest.client import DaemonUnavailable, HealthApiError, HealthClient

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test.guest.apps")


class ServerThread:
    """Runs an AppServer's poll loop in a thread (the daemon runs it in its own loop)."""

    def __init__(self, path, **kwargs):
        self.registry = AppRegistry(LOG, max_apps=kwargs.pop("max_apps", 64))
        self.server = AppServer(
            path, self.registry, lambda now: {"daemon": {"name": "test"}}, LOG, **kwargs
        )
        self.server.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            poller = select.poll()
            for fd, events in self.server.poll_fds():
                poller.register(fd, events)
            for fd, revents in poller.poll(20):
                self.server.handle(fd, revents, time.monotonic())

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.server.close()

    def unhealthy(self):
        return self.registry.unhealthy(time.monotonic())


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "run" / "guest-ha" / "app.sock")


@pytest.fixture
def server(sock_path):
    srv = ServerThread(sock_path)
    yield srv
    srv.stop()


def raw(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(path)
    return s


def roundtrip(s, payload: bytes):
    s.sendall(payload)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf.decode())


def test_socket_created_with_mode_0660(server, sock_path):
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "app.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    srv = ServerThread(path)
    try:
        with HealthClient(path) as c:
            assert c.status()["ok"]
    finally:
        srv.stop()
    assert not os.path.exists(path)


def test_second_server_refused(server, sock_path):
    other = AppServer(sock_path, AppRegistry(LOG), lambda now: {}, LOG)
    with pytest.raises(OSError, match="another process"):
        other.start()


def test_register_report_status(server, sock_path):
    with HealthClient(sock_path) as c:
        assert c.register("db", timeout_ms=0)["name"] == "db"
        assert not server.unhealthy()
        c.report(False, "replication broken")
        assert server.unhealthy() == [("db", "replication broken")]
        status = c.status()
        assert status["daemon"]["name"] == "test"
        (app,) = status["apps"]
        assert app["name"] == "db"
        assert app["healthy"] is False
        assert app["connected"] is True
        c.report(True)
        assert not server.unhealthy()
        c.unregister()
        assert c.status()["apps"] == []


def test_report_requires_register(server, sock_path):
    with HealthClient(sock_path) as c, pytest.raises(HealthApiError, match="not registered"):
        c.report(True)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"name": "bad name"}, "name must be"),
        ({"name": "x", "timeout_ms": 5}, "timeout_ms must be"),
        ({"name": "x", "timeout_ms": "1"}, "timeout_ms must be"),
        ({"name": "x", "on_disconnect": "explode"}, "on_disconnect must be"),
    ],
)
def test_register_validation(server, sock_path, fields, needle):
    with HealthClient(sock_path) as c, pytest.raises(HealthApiError, match=needle):
        c.request("register", **fields)


def test_report_validation(server, sock_path):
    with HealthClient(sock_path) as c:
        c.register("a")
        with pytest.raises(HealthApiError, match="healthy must be"):
            c.request("report", healthy="yes")
        c.report(False, "r" * 1000)
        assert len(server.unhealthy()[0][1]) == 256


def test_silent_app_times_out(server, sock_path):
    with HealthClient(sock_path) as c:
        c.register("worker", timeout_ms=200)
        c.report(True)
        assert not server.unhealthy()
        (name, reason) = wait_for(server.unhealthy)[0]
        assert name == "worker"
        assert "silent" in reason
        c.report(True)
        assert not server.unhealthy()


def test_disconnect_default_is_unhealthy_until_reregistered(server, sock_path):
    c = HealthClient(sock_path)
    c.register("db")
    c.close()
    assert wait_for(server.unhealthy) == [("db", "disconnected without unregistering")]
    with HealthClient(sock_path) as c2:
        c2.register("db")
        assert not server.unhealthy()
        c2.unregister()


def test_disconnect_forget_and_keep(server, sock_path):
    with HealthClient(sock_path) as c:
        c.register("gone", on_disconnect="forget")
    with HealthClient(sock_path) as c:
        c.register("kept", on_disconnect="keep")
        c.report(False, "sad")
    wait_for(lambda: "gone" not in server.registry.apps)
    wait_for(lambda: server.registry.apps["kept"].client_id is None)
    assert server.unhealthy() == [("kept", "sad")]


def test_name_held_by_connected_client(server, sock_path):
    with HealthClient(sock_path) as a, HealthClient(sock_path) as b:
        a.register("db")
        with pytest.raises(HealthApiError, match="another connected client"):
            b.register("db")
        with pytest.raises(HealthApiError, match="unregister first"):
            a.register("other")


def test_bad_json_and_unknown_op_keep_connection(server, sock_path):
    s = raw(sock_path)
    reply = roundtrip(s, b"{not json\n")
    assert reply["ok"] is False and "JSON" in reply["error"]
    reply = roundtrip(s, b"[1,2]\n")
    assert reply == {"ok": False, "error": "request must be a JSON object"}
    reply = roundtrip(s, b'{"op":"fly"}\n')
    assert "unknown op" in reply["error"]
    reply = roundtrip(s, b'{"op":"status"}\n')
    assert reply["ok"] is True
    s.close()


def test_oversized_line_gets_error_and_disconnect(server, sock_path):
    s = raw(sock_path)
    reply = roundtrip(s, b"x" * (MAX_LINE_BYTES + 10))
    assert reply["ok"] is False and "longer than" in reply["error"]
    assert s.recv(10) == b""
    s.close()
    with HealthClient(sock_path) as c:  # the server is fine
        assert c.status()["ok"]


def test_too_many_clients(sock_path):
    srv = ServerThread(sock_path, max_clients=4)
    socks = []
    try:
        for _ in range(4):
            socks.append(raw(sock_path))
        for s in socks:  # make sure all four were accepted
            assert roundtrip(s, b'{"op":"status"}\n')["ok"]
        extra = raw(sock_path)
        reply = json.loads(extra.recv(1000).decode())
        assert reply == {"ok": False, "error": "too many clients"}
        extra.close()
        socks.pop().close()
        wait_for(lambda: len(srv.server.clients) == 3)
        with HealthClient(sock_path) as c:
            assert c.status()["ok"]
    finally:
        for s in socks:
            s.close()
        srv.stop()


def test_too_many_apps(sock_path):
    srv = ServerThread(sock_path, max_apps=2)
    try:
        with HealthClient(sock_path) as a, HealthClient(sock_path) as b:
            a.register("a")
            b.register("b")
            with HealthClient(sock_path) as c, pytest.raises(HealthApiError, match="too many"):
                c.register("c")
    finally:
        srv.stop()


def test_add_op_extends_the_table(server, sock_path):
    server.server.add_op("echo", lambda client, req, now: {"echo": req.get("value")})
    with HealthClient(sock_path) as c:
        assert c.request("echo", value=[1, 2])["echo"] == [1, 2]


def test_client_errors(tmp_path):
    with pytest.raises(DaemonUnavailable, match="cannot connect"):
        HealthClient(str(tmp_path / "none.sock"))


def test_cli_report_and_status(server, sock_path, capsys):
    assert main(["--socket", sock_path, "report", "cron", "--unhealthy", "--reason", "late"]) == 0
    wait_for(lambda: server.registry.apps["cron"].client_id is None)
    assert server.unhealthy() == [("cron", "late")]  # kept after the CLI exits
    assert main(["--socket", sock_path, "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["apps"][0]["name"] == "cron"
    assert main(["--socket", sock_path, "status"]) == 0
    assert "cron: unhealthy: late" in capsys.readouterr().out
    assert main(["--socket", sock_path, "report", "cron", "--healthy", "--timeout-ms", "200"]) == 0
    assert wait_for(server.unhealthy)[0][0] == "cron"  # expires
    assert main(["--socket", sock_path, "unregister", "cron"]) == 0
    wait_for(lambda: "cron" not in server.registry.apps)


def test_cli_unavailable(tmp_path, capsys):
    assert main(["--socket", str(tmp_path / "x.sock"), "status"]) == 1
    assert "cannot connect" in capsys.readouterr().err
