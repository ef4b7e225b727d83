"""The telemetry path of the Doctor chain, attached to a running ``NovaCloud``:
Nova's legacy ``compute.instance.update`` notification ->
**ceilometer-agent-notification 27** (event pipeline only, publishing to
``notifier://?topic=alarm.all``) -> **aodh-listener 23** (event alarms) ->
**aodh-notifier 23** (webhook), with **aodh-api 23** under gunicorn for the
alarms themselves (Keystone auth, catalog type ``alarming``).

Each service runs from its own cached venv (``venv_cache.SERVICES``), on
SQLite, on the cloud's private RabbitMQ node and a private port, in its own
process group, stopped by PID.  No Gnocchi and no Panko: event alarms need
neither.  The recipe and its five blockers are in
``shared/openstack/doctor-chain.md``; the ones met here:

- aodh-api's ``authtoken`` filter reads ``/etc/aodh`` unless the paste file
  names our config (``oslo_config_file``);
- ``aodh.wsgi.api`` parses no config file (``openstack_assets/gha_aodh_wsgi.py``);
- aodh-listener caches each project's alarms for 60 s, so a re-armed alarm
  would be skipped: ``event_alarm_cache_ttl = 0``.

Nova must publish legacy notifications: ``NovaCloud`` sets
``notification_format = both``.

Example::

    with NovaCloud() as cloud, Telemetry(cloud) as tel:
        tel.aodh("POST", "/v2/alarms", {...}, token=...)
"""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import free_port
from .nova_cloud import NovaCloud
from .procs import (
    CloudStartError,
    GunicornService,
    ProcessService,
    _http,
    _log,
    _write_ini,
)
from .venv_cache import _TEMPLATES, ensure_venvs

__all__ = ["Telemetry", "register_service"]

#: Queues that must each have a consumer before events flow end to end:
#: Nova -> Ceilometer, Ceilometer -> aodh-listener, aodh-listener -> aodh-notifier.
QUEUES = ("notifications.info", "alarm.all.sample", "alarming.sample")

EVENT_PIPELINE = """---
sources:
  - name: event_source
    events: ["*"]
    sinks: [event_sink]
sinks:
  - name: event_sink
    publishers:
      - notifier://?topic=alarm.all
"""


class Telemetry:
    """Ceilometer's notification agent and Aodh (api, listener, notifier) on the
    RabbitMQ node and Keystone of ``cloud`` (a started ``NovaCloud``)."""

    AODH_SERVICE_USER = "aodh"

    def __init__(self, cloud: NovaCloud, *, startup_timeout: float = 180) -> None:
        self.cloud = cloud
        self.startup_timeout = startup_timeout
        self.aodh_service_password = "gha-aodh-" + uuidlib.uuid4().hex[:12]
        self.venvs: Dict[str, Path] = {}
        self.aodh_api: Optional[GunicornService] = None
        self.aodh_listener: Optional[ProcessService] = None
        self.aodh_notifier: Optional[ProcessService] = None
        self.ceilometer: Optional[ProcessService] = None
        self.timings: Dict[str, float] = {}

    @property
    def aodh_url(self) -> str:
        assert self.aodh_api is not None, "telemetry not started"
        return self.aodh_api.url

    @property
    def base(self) -> Path:
        assert self.cloud.state_dir is not None, "cloud not started"
        return self.cloud.state_dir

    def __enter__(self) -> "Telemetry":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "Telemetry":
        started = time.monotonic()
        try:
            self.venvs = ensure_venvs(["aodh", "ceilometer"])
            self.timings["install"] = round(time.monotonic() - started, 2)
            deadline = time.monotonic() + self.startup_timeout
            self._setup_aodh()
            self._setup_ceilometer()
            logs = self.base / "logs"
            conf = str(self.base / "aodh" / "aodh.conf")
            aodh = self.venvs["aodh"]
            self.aodh_api = GunicornService(
                "aodh-api",
                aodh,
                "gha_aodh_wsgi:application",
                free_port(),
                logs / "aodh-api.log",
                env={"GHA_AODH_CONFIG": conf, **self.cloud.SQLITE_ENV},
            )
            self.aodh_listener = ProcessService(
                "aodh-listener",
                aodh,
                ["aodh-listener", "--config-file", conf],
                logs / "aodh-listener.log",
                env=self.cloud.SQLITE_ENV,
            )
            self.aodh_notifier = ProcessService(
                "aodh-notifier",
                aodh,
                ["aodh-notifier", "--config-file", conf],
                logs / "aodh-notifier.log",
                env=self.cloud.SQLITE_ENV,
            )
            self.ceilometer = ProcessService(
                "ceilometer-agent-notification",
                self.venvs["ceilometer"],
                [
                    "ceilometer-agent-notification",
                    "--config-file",
                    str(self.base / "ceilometer" / "ceilometer.conf"),
                ],
                logs / "ceilometer-agent-notification.log",
            )
            for service in self._services():
                service.start()
            self.aodh_api.wait_ready("/", deadline, lambda s: s == 200)
            self._register_catalog()
            self._wait_consumers(deadline)
            self.timings["start_total"] = round(time.monotonic() - started, 2)
            _log(f"telemetry up in {self.timings['start_total']} s: aodh {self.aodh_url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in self._services():
            service.stop()

    def _services(self) -> List[Any]:
        mine = (self.ceilometer, self.aodh_notifier, self.aodh_listener, self.aodh_api)
        return [s for s in mine if s is not None]

    def pids(self) -> Dict[str, int]:
        return {s.name: s.pid for s in self._services() if s.pid is not None}

    # ----------------------------------------------------------------- set-up
    def _setup_aodh(self) -> None:
        cloud = self.cloud
        assert cloud.keystone is not None and cloud.rabbit_url
        adir = self.base / "aodh"
        adir.mkdir(parents=True, exist_ok=True)
        venv = self.venvs["aodh"]
        conf = adir / "aodh.conf"
        paste = (venv / "lib").glob("python3*/site-packages/aodh/api/api-paste.ini")
        text = next(paste).read_text()
        # keystonemiddleware would read /etc/aodh/aodh.conf otherwise.
        text = text.replace(
            "[filter:authtoken]\n", f"[filter:authtoken]\noslo_config_file = {conf}\n"
        )
        (adir / "api-paste.ini").write_text(text)
        (adir / "aodh.db").write_bytes((venv / _TEMPLATES / "aodh.db").read_bytes())
        _write_ini(
            conf,
            {
                "DEFAULT": {
                    "transport_url": cloud.rabbit_url,
                    "use_stderr": "true",
                    # Read each project's event alarms at every event: a
                    # re-armed alarm is otherwise skipped for 60 s.
                    "event_alarm_cache_ttl": 0,
                },
                "api": {"auth_mode": "keystone", "paste_config": adir / "api-paste.ini"},
                # aodh-api and aodh-listener both write it: the booting cloud's
                # SQLite settings (BEGIN IMMEDIATE, busy timeout; nova_cloud.py).
                "database": {"connection": f"sqlite:///{adir / 'aodh.db'}{cloud.SQLITE_QUERY}"},
                "listener": {"workers": 1, "batch_size": 1},
                "notifier": {"workers": 1, "batch_size": 1},
                "oslo_concurrency": {"lock_path": adir},
                "keystone_authtoken": cloud._authtoken_section(
                    self.AODH_SERVICE_USER, self.aodh_service_password
                ),
            },
        )

    def _setup_ceilometer(self) -> None:
        cloud = self.cloud
        cdir = self.base / "ceilometer"
        cdir.mkdir(parents=True, exist_ok=True)
        data = next(
            (self.venvs["ceilometer"] / "lib").glob(
                "python3*/site-packages/ceilometer/pipeline/data"
            )
        )
        (cdir / "event_definitions.yaml").write_bytes(
            (data / "event_definitions.yaml").read_bytes()
        )
        (cdir / "event_pipeline.yaml").write_text(EVENT_PIPELINE)
        (cdir / "pipeline.yaml").write_text("---\nsources: []\nsinks: []\n")
        _write_ini(
            cdir / "ceilometer.conf",
            {
                "DEFAULT": {
                    "transport_url": cloud.rabbit_url,
                    "use_stderr": "true",
                    "event_pipeline_cfg_file": cdir / "event_pipeline.yaml",
                    "pipeline_cfg_file": cdir / "pipeline.yaml",
                },
                "notification": {
                    "pipelines": "event",
                    "workers": 1,
                    "notification_control_exchanges": "nova",
                },
                "event": {"definitions_cfg_file": cdir / "event_definitions.yaml"},
                "oslo_messaging_notifications": {"topics": "notifications"},
                "oslo_concurrency": {"lock_path": cdir},
            },
        )

    def _register_catalog(self) -> None:
        """User ``aodh`` (service, admin) and the ``alarming`` service."""
        register_service(
            self.cloud,
            self.AODH_SERVICE_USER,
            self.aodh_service_password,
            "aodh",
            "alarming",
            self.aodh_url,
        )

    def queue_consumers(self) -> Dict[str, int]:
        """Consumers per queue on the cloud's RabbitMQ node."""
        rabbit = self.cloud.rabbit
        assert rabbit is not None, "the cloud has no RabbitMQ node of its own"
        out = rabbit.ctl("rabbitmqctl", "list_queues", "-q", "name", "consumers").stdout
        found: Dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                found[parts[0]] = int(parts[1])
        return found

    def _wait_consumers(self, deadline: float) -> None:
        while True:
            for service in self._services():
                if isinstance(service, ProcessService):
                    service.check_alive()
            found = self.queue_consumers()
            if all(found.get(q, 0) >= 1 for q in QUEUES):
                return
            if time.monotonic() > deadline:
                raise CloudStartError(f"telemetry queues without consumers: {found}")
            time.sleep(0.5)

    # ----------------------------------------------------------------- API
    def aodh(
        self, method: str, path: str, body: Any = None, *, token: Optional[str] = None
    ) -> Tuple[int, Any]:
        """Call the Aodh API (admin token unless ``token``); ``(status, json)``."""
        headers = {"X-Auth-Token": token or self.cloud.token()}
        status, _, payload = _http(method, self.aodh_url + path, body, headers=headers)
        return status, payload

    def alarm_history(self, alarm_id: str, token: Optional[str] = None) -> List[Mapping[str, Any]]:
        status, payload = self.aodh("GET", f"/v2/alarms/{alarm_id}/history", token=token)
        if status != 200:
            raise CloudStartError(f"Aodh history of {alarm_id}: HTTP {status} {payload}")
        return list(payload)


def register_service(
    cloud: NovaCloud, user: str, password: str, name: str, service_type: str, url: str
) -> None:
    """Add a service user (roles ``service`` and ``admin`` in the service
    project) and a catalog entry (public, internal, admin at ``url``) to the
    running ``cloud``'s Keystone."""
    system, _ = cloud._keystone_token(
        {"system": {"all": True}}, cloud.ADMIN_USER, cloud.admin_password
    )

    def call(method: str, path: str, body: Any = None) -> Any:
        status, _, payload = _http(
            method, cloud.auth_url + path, body, headers={"X-Auth-Token": system}
        )
        if status not in (200, 201, 204):
            raise CloudStartError(f"Keystone {method} {path}: HTTP {status} {payload}")
        return payload

    domain = call("GET", "/domains?name=" + cloud.DOMAIN)["domains"][0]["id"]
    project = call("GET", "/projects?name=" + cloud.SERVICE_PROJECT)["projects"][0]["id"]
    roles = {r["name"]: r["id"] for r in call("GET", "/roles")["roles"]}
    body = {"name": user, "password": password, "domain_id": domain, "default_project_id": project}
    user_id = call("POST", "/users", {"user": body})["user"]["id"]
    for role in ("service", "admin"):
        call("PUT", f"/projects/{project}/users/{user_id}/roles/{roles[role]}")
    service = call(
        "POST", "/services", {"service": {"name": name, "type": service_type, "enabled": True}}
    )["service"]["id"]
    for interface in ("public", "internal", "admin"):
        endpoint = {
            "service_id": service,
            "interface": interface,
            "region_id": cloud.REGION,
            "url": url,
            "enabled": True,
        }
        call("POST", "/endpoints", {"endpoint": endpoint})
