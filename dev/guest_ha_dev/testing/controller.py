"""Run a real ``guest-ha-controller`` process with a private config (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

from . import free_port


class ControllerProcess:
    def __init__(
        self,
        workdir: str,
        transport_url: str,
        *,
        host: str,
        reporters: Sequence[str] = ("log",),
        database: Optional[str] = None,
        notification_topics: Sequence[str] = ("notifications",),
        notification_url: Optional[str] = None,
        extra: Optional[Dict[str, Dict[str, Any]]] = None,
        netns: Optional[str] = None,
        status_address: str = "127.0.0.1",
    ) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        #: Run inside this network namespace (``ip netns exec``); then
        #: ``status_address`` must be an address of it the test can reach.
        self.netns = netns
        self.port = free_port()
        self.url = f"http://{status_address}:{self.port}"
        self.log_path = os.path.join(workdir, f"controller-{host}.log")
        self.config_path = os.path.join(workdir, f"controller-{host}.conf")
        sections: Dict[str, Dict[str, Any]] = {
            "DEFAULT": {"transport_url": transport_url},
            "guest_ha": {"host": host, "rpc_timeout_s": 5},
            "controller": {
                "reporters": ",".join(reporters),
                "database": database or os.path.join(workdir, "controller.sqlite"),
                "status_listen": f"{status_address}:{self.port}",
                "notification_topics": ",".join(notification_topics),
                "retry_initial_s": 0.2,
                "retry_max_s": 2.0,
                "lease_s": 5,
            },
        }
        if notification_url:
            sections["oslo_messaging_notifications"] = {"transport_url": notification_url}
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)
        with open(self.config_path, "w", encoding="utf-8") as fh:
            for section, values in sections.items():
                fh.write(f"[{section}]\n")
                for key, value in values.items():
                    fh.write(f"{key} = {value}\n")
                fh.write("\n")
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 30.0) -> "ControllerProcess":
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "guest_ha.controller.cli",
                "run",
                "--config-file",
                self.config_path,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited at start:\n{self.log_text()}")
            try:
                self.status()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"controller not ready:\n{self.log_text()}") from None
                time.sleep(0.1)

    def status(self) -> Dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/status", timeout=5) as response:
            return json.load(response)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def __enter__(self) -> "ControllerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class NotificationCollector:
    """A notification listener (own pool) recording guest-ha notifications."""

    def __init__(
        self, url: str, topic: str = "notifications", pool: Optional[str] = "guest-ha-test"
    ) -> None:
        import oslo_messaging

        from guest_ha.messaging.options import configure
        from guest_ha.messaging.rpc import get_notification_transport

        configure()
        self.got: List[Dict[str, Any]] = []
        self.transport = get_notification_transport(url)
        self.listener = oslo_messaging.get_notification_listener(
            self.transport, [oslo_messaging.Target(topic=topic)], [self], pool=pool
        )
        self.listener.start()

    def info(
        self, ctxt: Any, publisher_id: str, event_type: str, payload: Any, metadata: Any
    ) -> None:
        if event_type.startswith("guest_ha."):
            self.got.append(
                {
                    "event_type": event_type,
                    "publisher_id": publisher_id,
                    "payload": payload,
                    "received_at": time.monotonic(),
                }
            )

    error = warn = info

    def keys(self) -> List[str]:
        return [g["payload"]["idempotency_key"] for g in self.got]

    def stop(self) -> None:
        self.listener.stop()
        self.listener.wait()
        self.transport.cleanup()
