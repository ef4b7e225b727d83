"""STAND-IN for a VNF manager (no real VNFM runs here): what one does to hear
about its servers' faults through the Doctor chain.

It owns a tenant (a Keystone project and a ``member`` user of its own), boots
its servers there through the Nova API, creates one Aodh **event alarm** per
server with its own project-scoped token, and receives the alarms' webhooks
on an HTTP server in the calling process.  Re-arming after a fault sets the
alarm's state back to ``ok`` (``PUT /v2/alarms/{id}/state``).
"""

from __future__ import annotations

import json
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

from .nova_cloud import MICROVERSION, NovaApiError, NovaCloud
from .procs import CloudStartError, _http
from .telemetry import Telemetry

__all__ = ["VnfmStandIn", "Webhook"]


@dataclass
class Webhook:
    """One POST received: arrival (monotonic and wall clock), path and JSON body."""

    monotonic: float
    wall: float
    path: str
    body: Dict[str, Any]

    @property
    def alarm_id(self) -> str:
        return str(self.body.get("alarm_id"))

    @property
    def traits(self) -> Dict[str, Any]:
        """The Ceilometer event's traits (``[name, type, value]`` triples) as a dict."""
        event = (self.body.get("reason_data") or {}).get("event") or {}
        out: Dict[str, Any] = {}
        for trait in event.get("traits") or []:
            if isinstance(trait, (list, tuple)) and len(trait) == 3:
                out[str(trait[0])] = trait[2]
            elif isinstance(trait, dict):
                out[str(trait.get("name"))] = trait.get("value")
        return out


class VnfmStandIn:
    """A VNF manager stand-in on ``cloud`` and ``telemetry``.  ``start()``
    creates its project and user and its webhook server; ``stop()`` closes it."""

    def __init__(self, cloud: NovaCloud, telemetry: Telemetry, name: str = "gha-vnfm") -> None:
        self.cloud = cloud
        self.telemetry = telemetry
        self.name = name
        self.password = "gha-vnfm-" + uuidlib.uuid4().hex[:12]
        self.project_id = ""
        self.user_id = ""
        self.webhooks: List[Webhook] = []
        self.alarms: Dict[str, str] = {}
        """Alarm id -> the instance it watches, for every alarm created here."""
        self._cond = threading.Condition()
        self._token: Optional[Tuple[str, float]] = None
        vnfm = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(length, 1 << 20))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode(errors="replace")}
                hook = Webhook(time.monotonic(), time.time(), self.path, body)
                with vnfm._cond:
                    vnfm.webhooks.append(hook)
                    vnfm._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "VnfmStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "VnfmStandIn":
        self._make_tenant()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ----------------------------------------------------------------- tenant
    def _make_tenant(self) -> None:
        cloud = self.cloud
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
        suffix = uuidlib.uuid4().hex[:6]
        self.project_id = call(
            "POST", "/projects", {"project": {"name": f"{self.name}-{suffix}", "domain_id": domain}}
        )["project"]["id"]
        self.user_id = call(
            "POST",
            "/users",
            {
                "user": {
                    "name": f"{self.name}-{suffix}",
                    "password": self.password,
                    "domain_id": domain,
                    "default_project_id": self.project_id,
                }
            },
        )["user"]["id"]
        roles = {r["name"]: r["id"] for r in call("GET", "/roles")["roles"]}
        call("PUT", f"/projects/{self.project_id}/users/{self.user_id}/roles/{roles['member']}")
        self._user_name = f"{self.name}-{suffix}"

    def token(self) -> str:
        """The VNFM user's token, scoped to its own project."""
        if self._token is None or self._token[1] < time.monotonic():
            tok, _ = self.cloud._keystone_token(
                {"project": {"id": self.project_id}}, self._user_name, self.password
            )
            self._token = (tok, time.monotonic() + 1800)
        return self._token[0]

    # ----------------------------------------------------------------- servers
    def boot(self, name: str, flavor_id: str, image_id: str) -> str:
        """Boot a server in the VNFM's project (``networks: none``); its id."""
        body = {
            "server": {
                "name": name,
                "imageRef": image_id,
                "flavorRef": flavor_id,
                "networks": "none",
            }
        }
        headers = {
            "X-Auth-Token": self.token(),
            "OpenStack-API-Version": f"compute {MICROVERSION}",
        }
        status, _, payload = _http(
            "POST", self.cloud.nova_url + "/servers", body, headers=headers, timeout=60
        )
        if status != 202:
            raise NovaApiError(f"VNFM boot {name}: HTTP {status} {str(payload)[:300]}")
        uuid = str(payload["server"]["id"])
        self.cloud.booted.append(uuid)  # its domain is removed by cloud.stop()
        return uuid

    # ----------------------------------------------------------------- alarms
    def create_alarm(self, instance_id: str, *, token: Optional[str] = None, path: str = "") -> str:
        """An event alarm on ``compute.instance.update`` with ``state == error``
        for ``instance_id``, in the project of ``token`` (the VNFM's own by
        default); its webhook is ``<url>/failure<path>``.  Returns the alarm id."""
        body = {
            "name": f"vnf-failure-{instance_id[:8]}-{uuidlib.uuid4().hex[:4]}",
            "type": "event",
            "severity": "critical",
            "repeat_actions": False,
            "alarm_actions": [f"{self.url}/failure{path}"],
            "event_rule": {
                "event_type": "compute.instance.update",
                "query": [
                    {
                        "field": "traits.instance_id",
                        "type": "string",
                        "op": "eq",
                        "value": instance_id,
                    },
                    {"field": "traits.state", "type": "string", "op": "eq", "value": "error"},
                ],
            },
        }
        status, payload = self.telemetry.aodh(
            "POST", "/v2/alarms", body, token=token or self.token()
        )
        if status != 201:
            raise CloudStartError(f"Aodh alarm for {instance_id}: HTTP {status} {payload}")
        self.alarms[str(payload["alarm_id"])] = instance_id
        return str(payload["alarm_id"])

    def alarm_state(self, alarm_id: str) -> str:
        status, payload = self.telemetry.aodh(
            "GET", f"/v2/alarms/{alarm_id}/state", token=self.token()
        )
        if status != 200:
            raise CloudStartError(f"Aodh state of {alarm_id}: HTTP {status} {payload}")
        return str(payload)

    def rearm(self, alarm_id: str) -> None:
        """Back to ``ok``, so the next matching event fires the alarm again."""
        status, payload = self.telemetry.aodh(
            "PUT", f"/v2/alarms/{alarm_id}/state", "ok", token=self.token()
        )
        if status != 200:
            raise CloudStartError(f"Aodh re-arm of {alarm_id}: HTTP {status} {payload}")

    def mark(self) -> int:
        with self._cond:
            return len(self.webhooks)

    def received(self, alarm_id: str, after: int = 0) -> List[Webhook]:
        with self._cond:
            return [w for w in self.webhooks[after:] if w.alarm_id == alarm_id]

    def wait_webhook(self, alarm_id: str, after: int = 0, timeout: float = 30) -> Webhook:
        """The first webhook of ``alarm_id`` received after index ``after``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [w for w in self.webhooks[after:] if w.alarm_id == alarm_id]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no webhook for alarm {alarm_id} within {timeout} s "
                        f"({len(self.webhooks) - after} others)"
                    )
                self._cond.wait(left)
