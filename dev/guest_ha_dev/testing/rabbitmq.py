"""A private RabbitMQ node for tests, started and stopped by the test itself.

``RabbitMQNode`` runs Debian's ``rabbitmq-server`` (3.10) as a separate Erlang
node with its own name (``gha<random>@localhost``), its own AMQP and Erlang
distribution ports (picked free at construction), and its own Mnesia, log,
PID, config and enabled-plugins files under a private folder.  It never looks
at, stops or kills any node it did not start: every CLI call names its own
node with ``-n``.

Example::

    from guest_ha_dev.testing.rabbitmq import RabbitMQNode

    with RabbitMQNode() as node:
        transport = get_transport(node.url)   # rabbit://guest:guest@127.0.0.1:PORT/
        ...
        node.restart()   # same data folder, same port (fault injection)
        node.kill()      # SIGKILL, no clean shutdown

How it runs, and why:

- **User.** As root, the server and the CLI tools run as the ``rabbitmq``
  user (``subprocess`` ``user=``/``group=``) with ``HOME=/var/lib/rabbitmq``,
  exactly what Debian's ``/usr/sbin/rabbitmqctl`` wrapper does through ``su``.
  The private folder is ``chown``-ed to ``rabbitmq``.  As any other user, both
  run as that user with its own ``HOME``.
- **Erlang cookie.** The CLI authenticates to the node with the cookie in
  ``$HOME/.erlang.cookie``.  Root's own ``/root/.erlang.cookie`` (if any) does
  *not* match, so ``rabbitmqctl`` run as root with ``HOME=/root`` fails with
  "unable to perform an operation"; with ``HOME=/var/lib/rabbitmq`` (or via
  ``/usr/sbin/rabbitmqctl``) it works.  ``ensure_erlang_cookie()`` creates the
  cookie (0400, owned by ``rabbitmq``) when the package did not.
- **Isolation.** ``RABBITMQ_CONF_ENV_FILE`` points at an empty private file, so
  ``/etc/rabbitmq/rabbitmq-env.conf`` cannot rename the node or move its
  ports; ``RABBITMQ_CONFIG_FILE`` is a private ``rabbitmq.conf`` that binds
  AMQP to ``127.0.0.1`` only; the distribution port is bound to ``127.0.0.1``
  too (``-kernel inet_dist_use_interface``).  The ``guest`` user works from
  loopback only, which is all the tests need.
- **epmd.** Every Erlang node on the machine registers with the one ``epmd``
  daemon (port 4369); the first node starts it and it outlives the node.  It
  is shared, so it is left running.
- **CLI ports.** The CLI tools take an Erlang distribution port from
  35672-35682; node ports are picked outside that range.
- **Readiness** is ``rabbitmq-diagnostics -n NODE -q check_running`` polled
  until it succeeds (``await_startup`` returns too early), then the AMQP port
  itself: a protocol header is sent until the node answers with its
  ``connection.start`` frame.  "Running" alone was once seen with the listener
  refusing connections for minutes after a restart; a node that does not
  answer on its port in time is a start failure with the log tail, not a
  silent hang in the test that uses it.  Progress goes to stderr.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
RABBITMQ_USER = "rabbitmq"
RABBITMQ_HOME = Path("/var/lib/rabbitmq")
APT_PACKAGE = "rabbitmq-server"

# Ports used by the CLI tools' own Erlang nodes (RABBITMQ_CTL_DIST_PORT_MIN/MAX
# defaults) and well-known RabbitMQ/epmd ports: never picked for a private node.
_RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})
# Below the kernel's ephemeral range (32768-60999 on Linux), so an outgoing
# connection cannot grab a node's port while the node restarts.
_PORT_RANGE = (20000, 32000)
# Erlang distribution listens on loopback only.
_DIST_LOOPBACK_ONLY = "-kernel inet_dist_use_interface {127,0,0,1}"


class RabbitMQError(RuntimeError):
    """The private node could not be installed, started or stopped."""


def _log(msg: str) -> None:
    sys.stderr.write(f"[rabbitmq-fixture] {msg}\n")
    sys.stderr.flush()


def _is_root() -> bool:
    return os.geteuid() == 0


def rabbitmq_installed() -> bool:
    return (RABBITMQ_BIN / "rabbitmq-server").exists()


def ensure_rabbitmq_installed(progress: Callable[[str], None] = _log) -> None:
    """Install Debian's ``rabbitmq-server`` with apt when missing (root only).

    The package's maintainer script may try to start the system node
    (``rabbit@<hostname>`` on 5672); where the init system or ``policy-rc.d``
    allows it, that node is left alone like any other.
    """
    if rabbitmq_installed():
        return
    if not _is_root() or shutil.which("apt-get") is None:
        raise RabbitMQError(
            f"{APT_PACKAGE} is not installed and cannot be installed here "
            "(needs root and apt-get): run `apt-get install -y rabbitmq-server`"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "--no-install-recommends", APT_PACKAGE]
    progress(f"installing {APT_PACKAGE} with apt-get")
    res = subprocess.run(argv, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        progress("apt-get install failed; running apt-get update and retrying")
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        res = subprocess.run(argv, env=env, capture_output=True, text=True)
    if res.returncode != 0 or not rabbitmq_installed():
        raise RabbitMQError(
            f"apt-get install {APT_PACKAGE} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        )


def _home() -> Path:
    if _is_root():
        return RABBITMQ_HOME
    return Path(os.environ.get("HOME") or os.path.expanduser("~"))


def ensure_erlang_cookie() -> Path:
    """Make sure ``$HOME/.erlang.cookie`` of the user the nodes run as exists.

    The server creates it on first boot anyway; creating it up front means the
    CLI and the server can never race to create two different ones.
    """
    cookie = _home() / ".erlang.cookie"
    if cookie.exists():
        return cookie
    cookie.parent.mkdir(parents=True, exist_ok=True)
    value = "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
    fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    if _is_root():
        shutil.chown(cookie, RABBITMQ_USER, RABBITMQ_USER)
    return cookie


def _port_free(port: int) -> bool:
    for host in ("0.0.0.0", "127.0.0.1"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def pick_free_ports(count: int, rng: Optional[random.Random] = None) -> list:
    """``count`` distinct TCP ports that are free now, outside the ephemeral range."""
    rng = rng or random.SystemRandom()
    ports: list = []
    for _ in range(2000):
        port = rng.randrange(*_PORT_RANGE)
        if port in _RESERVED_PORTS or port in ports or not _port_free(port):
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RabbitMQError("no free TCP ports found")


class RabbitMQNode:
    """A private RabbitMQ node: ``with RabbitMQNode() as node: node.url``.

    ``base_dir``: where the private folder is created (default: a fresh
    ``/tmp/gha-rmq-*``, removed on exit).  A given ``base_dir`` is kept.
    """

    def __init__(
        self,
        base_dir: Optional[str] = None,
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        progress: Callable[[str], None] = _log,
        listen: Sequence[str] = (),
    ) -> None:
        #: Addresses the AMQP port also listens on (besides 127.0.0.1), e.g. the
        #: root side of a test's veth pair; they must exist before start().
        self.listen = list(listen)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._progress = progress
        self.node_name = f"gha{secrets.token_hex(4)}@localhost"
        self.amqp_port, self.dist_port = pick_free_ports(2)
        self._own_dir = base_dir is None
        self.data_dir = Path(base_dir or tempfile.mkdtemp(prefix="gha-rmq-"))
        self._started = False
        self._restarted_once = False

    # -- paths and environment -------------------------------------------------------
    @property
    def url(self) -> str:
        return f"rabbit://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "rabbitmq.pid"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.node_name}.log"

    @property
    def pid(self) -> Optional[int]:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            {
                "HOME": str(_home()),
                "RABBITMQ_NODENAME": self.node_name,
                "RABBITMQ_NODE_PORT": str(self.amqp_port),
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.data_dir / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.log_dir),
                "RABBITMQ_PID_FILE": str(self.pid_file),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.data_dir / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(self.data_dir / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.data_dir / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(self.data_dir / "rabbitmq-env.conf"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _DIST_LOOPBACK_ONLY,
            }
        )
        if _is_root():
            env["USER"] = env["LOGNAME"] = RABBITMQ_USER
        return env

    def _popen_kwargs(self) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {"env": self._env(), "cwd": str(self.data_dir)}
        if _is_root():
            kwargs.update(user=RABBITMQ_USER, group=RABBITMQ_USER, extra_groups=[])
        return kwargs

    def _prepare_dir(self) -> None:
        for sub in ("mnesia", "log"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.data_dir / "enabled_plugins").write_text("")
        (self.data_dir / "rabbitmq-env.conf").write_text("")
        (self.data_dir / "advanced.config").write_text("[].\n")
        (self.data_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            + "".join(
                f"listeners.tcp.{i} = {addr}:{self.amqp_port}\n"
                for i, addr in enumerate(self.listen, start=2)
            )
            + "loopback_users.guest = true\n"
            "log.file.level = info\n"
        )
        if _is_root():
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                shutil.chown(path, RABBITMQ_USER, RABBITMQ_USER)

    # -- CLI -------------------------------------------------------------------------
    def ctl(self, tool: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run ``rabbitmqctl``/``rabbitmq-diagnostics``/... against this node only."""
        argv = [str(RABBITMQ_BIN / tool), "-n", self.node_name, *args]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **self._popen_kwargs(),
        )

    def is_running(self) -> bool:
        try:
            res = self.ctl("rabbitmq-diagnostics", "-q", "check_running", timeout=20)
        except subprocess.TimeoutExpired:
            return False
        return res.returncode == 0

    def amqp_answers(self, timeout: float = 2.0) -> bool:
        """True when the AMQP port answers a protocol header with a method frame."""
        try:
            with socket.create_connection(("127.0.0.1", self.amqp_port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                first = sock.recv(1)
        except OSError:
            return False
        return first == b"\x01"  # frame type 1: connection.start

    def _process_alive(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie (no init reaping here) counts as dead.
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "RabbitMQNode":
        if self._started and self._process_alive():
            return self
        ensure_rabbitmq_installed(self._progress)
        ensure_erlang_cookie()
        self._prepare_dir()
        self._progress(
            f"starting {self.node_name} amqp=127.0.0.1:{self.amqp_port} "
            f"dist={self.dist_port} dir={self.data_dir}"
        )
        t0 = time.monotonic()
        res = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            **self._popen_kwargs(),
        )
        if res.returncode != 0:
            raise RabbitMQError(
                f"rabbitmq-server -detached failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        self._started = True
        deadline = t0 + self.start_timeout
        next_note = t0 + 5
        running_at: Optional[float] = None
        while True:
            if self.is_running():
                if self.amqp_answers():
                    break
                now = time.monotonic()
                if running_at is None:
                    running_at = now
                elif now - running_at > 15 and not self._restarted_once:
                    # Seen once: "running", yet the listener refused for minutes.
                    self._progress(
                        f"{self.node_name} runs but its AMQP port does not answer after "
                        f"15 s; restarting it once. Log tail:\n{self.tail_log(60)}"
                    )
                    self._restarted_once = True
                    self.stop()
                    return self.start()
            now = time.monotonic()
            if now > deadline:
                tail = self.tail_log()
                self.kill()
                raise RabbitMQError(
                    f"{self.node_name} not running after {self.start_timeout:.0f} s; "
                    f"log tail:\n{tail}"
                )
            if now >= next_note:
                self._progress(f"waiting for {self.node_name} ({now - t0:.0f} s)")
                next_note = now + 5
            time.sleep(0.5)
        self._progress(
            f"{self.node_name} running after {time.monotonic() - t0:.1f} s (pid {self.pid})"
        )
        self._restarted_once = False
        return self

    def stop(self) -> None:
        """Clean shutdown (``rabbitmqctl stop PIDFILE`` waits for the process to exit)."""
        if not self._started:
            return
        pid_file = str(self.pid_file)
        if self._process_alive():
            try:
                res = self.ctl("rabbitmqctl", "-q", "stop", pid_file, timeout=self.stop_timeout)
                if res.returncode != 0:
                    self._progress(f"rabbitmqctl stop: rc={res.returncode} {res.stderr.strip()}")
            except subprocess.TimeoutExpired:
                self._progress(f"rabbitmqctl stop timed out after {self.stop_timeout} s")
        if self._process_alive():
            self.kill()
        self._started = False
        self._progress(f"{self.node_name} stopped")

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (no clean shutdown: connections just drop)."""
        pid = self.pid
        if pid is not None and self._process_alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while self._process_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            self._progress(f"{self.node_name} killed (pid {pid})")
        self._started = False
        # The VM had no chance to remove it; a stale PID file would make a later
        # ``rabbitmqctl stop PIDFILE`` wait on a recycled pid.
        try:
            self.pid_file.unlink()
        except FileNotFoundError:
            pass

    def restart(self) -> "RabbitMQNode":
        """Stop cleanly (if running) and start again: same name, data folder and ports."""
        self.stop()
        return self.start()

    def add_user(self, user: str, password: str, vhost: str = "/") -> str:
        """Create ``user`` with full permissions on ``vhost``; return its URL.

        What the roles do for each compute host (its own broker credentials).
        """
        for args in (
            ("add_user", user, password),
            ("set_permissions", "-p", vhost, user, ".*", ".*", ".*"),
        ):
            res = self.ctl("rabbitmqctl", "-q", *args)
            if res.returncode != 0:
                raise RabbitMQError(f"rabbitmqctl {args[0]} {user}: {res.stderr.strip()}")
        return self.url_for(user, password, vhost)

    def url_for(self, user: str, password: str, vhost: str = "/") -> str:
        path = "" if vhost == "/" else vhost
        return f"rabbit://{user}:{password}@127.0.0.1:{self.amqp_port}/{path}"

    def tail_log(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "RabbitMQNode":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)


class RabbitMQCluster:
    """A private RabbitMQ cluster of ``size`` ``RabbitMQNode``s on this machine.

    The nodes share the Erlang cookie (same user), are named and ported apart,
    and nodes 2..n join node 1 (``stop_app``, ``join_cluster``, ``start_app``).
    ``url`` lists every node, so oslo.messaging fails over between them.
    ``kill(i)`` SIGKILLs one node; ``start_node(i)`` brings it back (it rejoins
    from its own data folder).
    """

    def __init__(self, size: int = 3, progress: Callable[[str], None] = _log) -> None:
        self._progress = progress
        self.nodes = [RabbitMQNode(progress=progress) for _ in range(size)]

    def _ok(self, node: RabbitMQNode, *args: str) -> None:
        res = node.ctl("rabbitmqctl", "-q", *args, timeout=120)
        if res.returncode != 0:
            raise RabbitMQError(f"{node.node_name}: rabbitmqctl {' '.join(args)}: {res.stderr}")

    def start(self) -> "RabbitMQCluster":
        first = self.nodes[0]
        for node in self.nodes:
            node.start()
        for node in self.nodes[1:]:
            self._ok(node, "stop_app")
            self._ok(node, "join_cluster", first.node_name)
            self._ok(node, "start_app")
        self.wait_members(len(self.nodes))
        self._progress(f"cluster of {len(self.nodes)} running: {self.url}")
        return self

    def running_members(self, via: Optional[RabbitMQNode] = None) -> list:
        import json

        node = via or next(n for n in self.nodes if n._process_alive())
        res = node.ctl("rabbitmqctl", "-q", "cluster_status", "--formatter", "json", timeout=30)
        if res.returncode != 0:
            return []
        try:
            return list(json.loads(res.stdout).get("running_nodes", []))
        except ValueError:
            return []

    def wait_members(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.running_members()) < count:
            if time.monotonic() > deadline:
                raise RabbitMQError(f"cluster has not {count} running nodes after {timeout} s")
            time.sleep(0.5)

    @property
    def url(self) -> str:
        return self.url_for("guest", "guest")

    def url_for(self, user: str, password: str, vhost: str = "/") -> str:
        path = "" if vhost == "/" else vhost
        hosts = ",".join(f"{user}:{password}@127.0.0.1:{n.amqp_port}" for n in self.nodes)
        return f"rabbit://{hosts}/{path}"

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def start_node(self, index: int) -> None:
        self.nodes[index].start()
        self.wait_members(len(self.nodes))

    def stop(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.stop()
            finally:
                if node._own_dir:
                    shutil.rmtree(node.data_dir, ignore_errors=True)

    def __enter__(self) -> "RabbitMQCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__: Sequence[str] = [
    "RabbitMQCluster",
    "RabbitMQError",
    "RabbitMQNode",
    "ensure_erlang_cookie",
    "ensure_rabbitmq_installed",
    "pick_free_ports",
    "rabbitmq_installed",
]
