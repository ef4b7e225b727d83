"""Run a real compute engine process against simulated VMs (tests, benchmarks, demo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import yaml

from .vmsim import SimVmInfo


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds process ``pid`` has used so far (from /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class JsonLinesTail:
    """Follows a JSON-lines file that another process appends to (the compute
    agent's event sink): each call reads the complete lines added since."""

    def __init__(self, path: str, from_end: bool = False) -> None:
        self.path = path
        self.offset = 0
        if from_end:
            try:
                self.offset = os.path.getsize(path)
            except OSError:
                pass
        self.records: List[Dict[str, Any]] = []

    def read_new(self) -> List[Dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        new = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
        self.records += new
        return new


class EngineProcess:
    """``guest-ha-compute run`` as a child process with a private config and event log."""

    def __init__(
        self,
        workdir: str,
        vms: Iterable[SimVmInfo] = (),
        *,
        socket_dir: Optional[str] = None,
        heartbeat: Optional[Dict[str, Any]] = None,
        limits: Optional[Dict[str, Any]] = None,
        log_events: bool = False,
        log_level: str = "info",
        extra: Optional[Dict[str, Any]] = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        #: Command prefix, e.g. ``nsenter -t PID -m`` to run in another mount namespace.
        self.wrapper = list(wrapper)
        os.makedirs(workdir, exist_ok=True)
        self.events_path = os.path.join(workdir, "events.jsonl")
        self.status_path = os.path.join(workdir, "compute.sock")
        self.config_path = os.path.join(workdir, "compute.yaml")
        self.log_path = os.path.join(workdir, "compute.log")
        config: Dict[str, Any] = {
            "vms": [{"uuid": v.uuid, "name": v.name, "socket": v.socket_path} for v in vms],
            "heartbeat": {"restart_timeout_s": 60.0, **(heartbeat or {})},
            "events": {"log": log_events, "jsonl": self.events_path},
            "status_socket": self.status_path,
            "log_level": log_level,
        }
        if socket_dir:
            config["socket_dir"] = socket_dir
            config["rescan_interval_s"] = 0.5
        if limits:
            config["limits"] = limits
        config.update(extra or {})
        with open(self.config_path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh)
        self.proc: Optional[subprocess.Popen] = None
        self._log = None
        self._event_log = JsonLinesTail(self.events_path)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "EngineProcess":
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "guest_ha.compute.cli",
                "run",
                "--config",
                self.config_path,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            # Generous: under load the agent's imports alone can take 15 s.
            wait_until(lambda: os.path.exists(self.status_path) or self.proc.poll() is not None, 60)
        except TimeoutError:
            self.stop()  # never leave an engine running that nobody holds
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"compute engine exited at start:\n{self.log_text()}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> "EngineProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        """User plus system CPU time the engine process has used so far."""
        return process_cpu_seconds(self.pid)

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def events(self) -> List[Dict[str, Any]]:
        """All events so far (read incrementally from the JSON-lines sink)."""
        self._event_log.read_new()
        return self._event_log.records

    def wait_event(
        self,
        kind: str,
        uuid: Optional[str] = None,
        timeout: float = 10.0,
        after: int = 0,
    ) -> Dict[str, Any]:
        """Wait for the first event of ``kind`` (for ``uuid``) at index >= ``after``."""

        def find() -> Optional[Dict[str, Any]]:
            for event in self.events()[after:]:
                if event["kind"] == kind and (uuid is None or event["instance_uuid"] == uuid):
                    return event
            return None

        try:
            return wait_until(find, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no {kind} event for {uuid} within {timeout} s; events: "
                f"{[(e['kind'], e['instance_uuid'][:8]) for e in self.events()[after:]][-20:]}"
            ) from None

    def faults(self, uuid: Optional[str] = None) -> List[Dict[str, Any]]:
        return [
            e for e in self.events() if e["fault"] and (uuid is None or e["instance_uuid"] == uuid)
        ]

    def status(self) -> Dict[str, Any]:
        from guest_ha.compute.cli import fetch_status

        return fetch_status(self.status_path)


def start_guest_daemon(
    port: str,
    *,
    name: str,
    interval_ms: int,
    app_socket: str,
    checks_dir: str,
    log_path: str,
    extra_args: Iterable[str] = (),
    command: Optional[Sequence[str]] = None,
) -> subprocess.Popen:
    """The real guest daemon as a child process, on ``port`` (e.g. a simulator pty).

    ``command`` replaces the Python daemon's argv prefix, e.g. with the C daemon's
    binary (agents/guest-c), which takes the same flags.
    """
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                *(command or (sys.executable, "-m", "guest_ha.guest.daemon")),
                "--config",
                os.devnull,
                "--port",
                port,
                "--name",
                name,
                "--interval-ms",
                str(interval_ms),
                "--checks-dir",
                checks_dir,
                "--app-socket",
                app_socket,
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
