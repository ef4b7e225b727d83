"""Path A of the Doctor chain: Vitrage 15 attached to a running ``NovaCloud``
(the session's one; no second Nova cloud).

Starts what ``OpenStackCloud(vitrage=True)`` starts (vitrage-api under
gunicorn, vitrage-graph, vitrage-persistor; Vitrage's ``nova.instance`` and
this project's ``guest_ha`` datasources), on the cloud's RabbitMQ node and
Keystone, plus **vitrage-notifier** with the ``nova`` notifier, and loads the
template this project ships
(``guest_ha/vitrage_datasource/templates/guest_ha_instance_fault.yaml``):
a ``guest_ha.heartbeat`` alarm on an instance marks it down, and the notifier
turns that into ``reset_state error`` (``active`` when the alarm goes).
"""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Dict, Optional

from . import free_port
from .nova_cloud import NovaCloud
from .procs import CloudStartError, GunicornService, ProcessService, _http, _log, _merge
from .telemetry import register_service
from .venv_cache import ensure_venvs

__all__ = ["VitragePath", "template_file"]


def template_file() -> Path:
    """The Vitrage template shipped with the ``guest_ha`` package."""
    import guest_ha.vitrage_datasource as ds

    return Path(ds.__file__).parent / "templates" / "guest_ha_instance_fault.yaml"


class VitragePath:
    """Vitrage with the nova notifier and our template, on ``cloud``."""

    def __init__(
        self,
        cloud: NovaCloud,
        *,
        startup_timeout: float = 240,
        conf_extra: Optional[Dict[str, Dict[str, Any]]] = None,
    ) -> None:
        """``conf_extra``: more ``vitrage.conf`` settings, e.g.
        ``{"guest_ha": {"controller_url": ...}}``."""
        self.cloud = cloud
        self.conf_extra = conf_extra or {}
        self.startup_timeout = startup_timeout
        self.notifier: Optional[ProcessService] = None
        self.template_uuid = ""
        self.timings: Dict[str, float] = {}

    def __enter__(self) -> "VitragePath":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "VitragePath":
        cloud = self.cloud
        started = time.monotonic()
        try:
            cloud.venvs.update(ensure_venvs(["vitrage"]))
            deadline = time.monotonic() + self.startup_timeout
            assert cloud.state_dir is not None
            cloud.with_vitrage = True
            cloud._vitrage_conf_extra = _merge(
                _merge({"DEFAULT": {"notifiers": "nova"}}, self.conf_extra),
                cloud._vitrage_conf_extra,
            )
            cloud.vitrage_service_password = "gha-vitrage-" + uuidlib.uuid4().hex[:12]
            cloud.vitrage_api = GunicornService(
                "vitrage-api",
                cloud.venvs["vitrage"],
                "gha_vitrage_wsgi:application",
                free_port(),
                cloud.state_dir / "logs" / "vitrage-api.log",
                env=cloud._vitrage_env(),
            )
            register_service(
                cloud,
                cloud.VITRAGE_SERVICE_USER,
                cloud.vitrage_service_password,
                "vitrage",
                "rca",
                cloud.vitrage_url,
            )
            cloud._bring_up_vitrage(deadline)
            conf = str(cloud.state_dir / "vitrage" / "vitrage.conf")
            self.notifier = ProcessService(
                "vitrage-notifier",
                cloud.venvs["vitrage"],
                ["vitrage-notifier", "--config-file", conf],
                cloud.state_dir / "logs" / "vitrage-notifier.log",
                env=cloud._vitrage_env(),
            )
            self.notifier.start()
            self.add_template(deadline)
            self.timings["start_total"] = round(time.monotonic() - started, 2)
            _log(f"vitrage path up in {self.timings['start_total']} s: {cloud.vitrage_url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None
        cloud = self.cloud
        for name in ("vitrage_api", "vitrage_persistor", "vitrage_graph"):
            service = getattr(cloud, name)
            if service is not None:
                service.stop()
                setattr(cloud, name, None)

    def restart_graph(self, deadline_s: float = 180, forget_graph: bool = False) -> None:
        """Stop vitrage-graph (SIGTERM by PID) and start it again; wait until
        it answers the API.  ``forget_graph``: meanwhile delete the graph
        snapshot and events Vitrage stored in its database, so it starts from
        scratch (datasources' ``get_all`` only)."""
        graph = self.cloud.vitrage_graph
        assert graph is not None and self.cloud.state_dir is not None
        graph.stop()
        if forget_graph:
            import sqlite3

            db = sqlite3.connect(str(self.cloud.state_dir / "vitrage" / "vitrage.db"))
            try:
                with db:
                    db.execute("DELETE FROM graph_snapshots")
                    db.execute("DELETE FROM events")
            finally:
                db.close()
        graph.start()
        deadline = time.monotonic() + deadline_s
        while True:
            graph.check_alive()
            try:
                self.cloud.vitrage_get("/v1/resources/?all_tenants=true", timeout=10)
                return
            except (CloudStartError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def add_template(self, deadline: float) -> None:
        """``vitrage template add`` of our template; wait until it is ACTIVE."""
        import yaml

        cloud = self.cloud
        path = template_file()
        body = {
            # As Vitrage and its client read templates: every scalar a string.
            "templates": [[str(path), yaml.load(path.read_text(), Loader=yaml.BaseLoader)]],
            "template_type": "standard",
        }
        status, _, payload = _http(
            "PUT", cloud.vitrage_url + "/v1/template", body, headers=cloud.vitrage_headers()
        )
        if status != 200:
            raise CloudStartError(f"vitrage template add: HTTP {status} {payload}")
        self.template_uuid = str(payload[0]["uuid"])
        while True:
            listed = cloud.vitrage_get("/v1/template/")
            mine = [t for t in listed if t.get("uuid") == self.template_uuid]
            state = mine[0].get("status") if mine else None
            if state == "ACTIVE":
                return
            if state == "ERROR" or time.monotonic() > deadline:
                raise CloudStartError(f"our template is {state}: {mine}")
            time.sleep(0.5)
