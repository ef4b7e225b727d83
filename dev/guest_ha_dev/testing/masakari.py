"""Masakari's instance recovery, attached to a running ``NovaCloud``:
**masakari-api 22** and **masakari-engine 22** on the cloud's Keystone,
RabbitMQ node and real Nova (api, conductor, scheduler, nova-compute), so a
``VM`` notification (``POST /v1/notifications``) makes the engine stop and
start the server through Nova, as Masakari does in production.

Both run from the cached ``masakari`` venv (``venv_cache.SERVICES``), on a
private SQLite DB (also the engine's taskflow store) and a private port, each
in its own process group, stopped by PID.  ``start()`` also creates a failover
segment (``service_type compute``, ``recovery_method auto``) holding the
cloud's compute host: masakari-api refuses notifications from a host that is
in no segment.

Settings that decide recovery time (``docs/masakari.md``) are given through
``engine_conf``; Masakari's defaults are kept unless the caller says otherwise
(here only ``notification_delay_max = 0``: one API worker).

Example::

    with NovaCloud() as cloud, Masakari(cloud) as mk:
        mk.notifications()
"""

from __future__ import annotations

import shutil
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import free_port
from .nova_cloud import NovaCloud
from .procs import CloudStartError, ProcessService, _http, _log, _merge, _write_ini
from .telemetry import register_service
from .venv_cache import _TEMPLATES, ensure_venvs

__all__ = ["Masakari"]


class Masakari:
    """masakari-api and masakari-engine on ``cloud`` (a started ``NovaCloud``)."""

    SERVICE_USER = "masakari-ha"
    """Not ``masakari``: an ``OpenStackCloud(masakari=True)`` already has that user."""

    def __init__(
        self,
        cloud: NovaCloud,
        *,
        engine_conf: Optional[Mapping[str, Mapping[str, Any]]] = None,
        startup_timeout: float = 120,
    ) -> None:
        self.cloud = cloud
        self.engine_conf = engine_conf
        self.startup_timeout = startup_timeout
        self.password = "gha-masakari-" + uuidlib.uuid4().hex[:12]
        self.api: Optional[ProcessService] = None
        self.engine: Optional[ProcessService] = None
        self.segment_id = ""
        self.timings: Dict[str, float] = {}

    @property
    def url(self) -> str:
        """API v1, as in the catalog (type ``instance-ha``)."""
        assert self.api is not None, "masakari not started"
        return self.api.url + "/v1"

    @property
    def base(self) -> Path:
        assert self.cloud.state_dir is not None, "cloud not started"
        return self.cloud.state_dir / "masakari-ha"

    def __enter__(self) -> "Masakari":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "Masakari":
        started = time.monotonic()
        try:
            venv = ensure_venvs(["masakari"])["masakari"]
            deadline = time.monotonic() + self.startup_timeout
            port = free_port()
            conf = self._setup(venv, port)
            logs = self.cloud.state_dir / "logs"  # type: ignore[operator]
            argv = ["--config-file", str(conf)]
            self.api = ProcessService(
                "masakari-api", venv, ["masakari-api", *argv], logs / "masakari-api.log", port=port
            )
            self.engine = ProcessService(
                "masakari-engine", venv, ["masakari-engine", *argv], logs / "masakari-engine.log"
            )
            self.api.start()
            self.engine.start()
            self.api.wait_ready("/", deadline, lambda s: s in (200, 300))
            register_service(
                self.cloud, self.SERVICE_USER, self.password, "masakari", "instance-ha", self.url
            )
            self._segment()
            self._wait_engine(deadline)
            self.timings["start_total"] = round(time.monotonic() - started, 2)
            _log(f"masakari up in {self.timings['start_total']} s: {self.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in (self.engine, self.api):
            if service is not None:
                service.stop()

    def pids(self) -> Dict[str, int]:
        return {s.name: s.pid for s in (self.api, self.engine) if s and s.pid is not None}

    # ----------------------------------------------------------------- set-up
    def _setup(self, venv: Path, port: int) -> Path:
        cloud = self.cloud
        assert cloud.keystone is not None and cloud.rabbit_url
        mdir = self.base
        mdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(venv / "etc" / "masakari" / "api-paste.ini", mdir / "api-paste.ini")
        shutil.copyfile(venv / _TEMPLATES / "masakari.db", mdir / "masakari.db")
        db = f"sqlite:///{mdir / 'masakari.db'}?timeout=60"
        sections: Dict[str, Dict[str, Any]] = {
            "DEFAULT": {
                "auth_strategy": "keystone",
                "transport_url": cloud.rabbit_url,
                "use_stderr": "true",
                "host": "gha-masakari",
                # The API sleeps up to this many seconds before storing each
                # notification (against races of several API workers; one here).
                "notification_delay_max": 0,
                "os_privileged_user_name": self.SERVICE_USER,
                "os_privileged_user_password": self.password,
                "os_privileged_user_tenant": cloud.SERVICE_PROJECT,
                "os_privileged_user_auth_url": cloud.keystone.url + "/v3",
                "os_user_domain_name": cloud.DOMAIN,
                "os_project_domain_name": cloud.DOMAIN,
                "os_region_name": cloud.REGION,
                "nova_catalog_admin_info": "compute:nova:publicURL",
                "masakari_api_listen": "127.0.0.1",
                "masakari_api_listen_port": port,
                "masakari_api_workers": 1,
            },
            "wsgi": {"api_paste_config": mdir / "api-paste.ini"},
            "database": {"connection": db},
            "taskflow": {"connection": db},
            "oslo_concurrency": {"lock_path": mdir},
            "keystone_authtoken": cloud._authtoken_section(self.SERVICE_USER, self.password),
        }
        conf = mdir / "masakari.conf"
        _write_ini(conf, _merge(sections, self.engine_conf))
        return conf

    def _segment(self) -> None:
        """A failover segment with the cloud's compute host in it."""
        status, payload = self.call(
            "POST",
            "/segments",
            {"segment": {"name": "gha-seg", "service_type": "compute", "recovery_method": "auto"}},
        )
        if status not in (200, 201):
            raise CloudStartError(f"masakari segment: HTTP {status} {payload}")
        self.segment_id = payload["segment"]["uuid"]
        host = {
            "name": self.cloud.compute_host,
            "type": "COMPUTE",
            "control_attributes": "SSH",
        }
        status, payload = self.call("POST", f"/segments/{self.segment_id}/hosts", {"host": host})
        if status not in (200, 201):
            raise CloudStartError(f"masakari host: HTTP {status} {payload}")

    def _wait_engine(self, deadline: float) -> None:
        """Until masakari-engine consumes its RPC topic (``ha_engine``)."""
        rabbit = self.cloud.rabbit
        assert rabbit is not None, "the cloud has no RabbitMQ node of its own"
        while True:
            assert self.engine is not None
            self.engine.check_alive()
            out = rabbit.ctl("rabbitmqctl", "list_queues", "-q", "name", "consumers").stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "ha_engine" and parts[1] != "0":
                    return
            if time.monotonic() > deadline:
                raise CloudStartError(f"masakari-engine consumes no queue:\n{out}")
            time.sleep(0.5)

    # ----------------------------------------------------------------- API
    def call(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        """Call the Masakari API as admin; ``(status, json)``."""
        headers = {"X-Auth-Token": self.cloud.token()}
        status, _, payload = _http(method, self.url + path, body, headers=headers)
        return status, payload

    def notifications(self) -> List[Mapping[str, Any]]:
        status, payload = self.call("GET", "/notifications")
        if status != 200:
            raise CloudStartError(f"masakari notifications: HTTP {status} {payload}")
        return list(payload["notifications"])


def hang_guest_daemon(domain: str, path: "str | Path") -> None:
    """Hang the test guest's daemon inside a Nova-booted server (a hung guest
    whose QEMU still answers, so Nova can still stop it cleanly).

    Hot-plugs (``--live`` only) a raw control disk with byte ``3`` as the
    guest's ``/dev/vdb``: the test image's check ``50-test-control`` then
    SIGSTOPs the guest daemon (``scripts/test_guest/control-check.sh``).  Nova
    writes a fresh domain XML on start, so the recovered server has no such
    disk.  ``path`` is a file of the caller's own."""
    import subprocess

    with open(path, "wb") as fh:
        fh.write(b"3" + b"\0" * (1024 * 1024 - 1))
    subprocess.run(
        [
            "virsh",
            "-c",
            "qemu:///system",
            "attach-disk",
            domain,
            str(path),
            "vdb",
            "--targetbus",
            "virtio",
            "--driver",
            "qemu",
            "--subdriver",
            "raw",
            "--cache",
            "none",
            "--live",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
