"""Real OpenStack services on loopback, started by the test suite itself.

``OpenStackCloud`` installs (once, cached), configures and runs real OpenStack
services on 127.0.0.1 for the integration tier:

- **Keystone 30** under gunicorn: fernet tokens, SQLite, bootstrapped with an
  ``admin`` user and project in domain ``Default``, region ``RegionOne``, the
  identity endpoint, a ``nova`` service user and the ``compute`` service and
  endpoints in the catalog.
- **Nova 34 nova-api** (``nova.wsgi.osapi_compute``) under gunicorn: SQLite API
  DB + cell0 + cell1, real Keystone auth through keystonemiddleware
  ``authtoken`` with the ``nova`` service user (``nova_auth="keystone"``, the
  default).  ``nova_auth="headers"`` drops ``authtoken`` from the paste
  pipeline instead, so nova-api trusts ``X-User-Id``/``X-Project-Id``/
  ``X-Roles`` headers; use it only where Keystone is not wanted.

- **Vitrage 15.0.1** (``vitrage=True``): vitrage-api under gunicorn,
  vitrage-graph and vitrage-persistor on RabbitMQ, with Vitrage's
  ``nova.instance`` datasource and this project's ``guest_ha`` datasource
  (``guest_ha.vitrage_datasource``); catalog type ``rca``.
- **masakari-api 22** (``masakari=True``): its own eventlet server, Keystone
  auth, Nova checked through our nova-api; catalog type ``instance-ha``.

What is *not* real, and why:

- **Neutron** is a stand-in (``NeutronStandIn``): a thread in the test process
  that answers ``GET /v2.0/ports`` and ``GET /v2.0/security-groups`` with empty
  lists, because ``GET /servers/{id}`` always asks Neutron for them.  Nova is
  pointed at it with ``[neutron] auth_type = none`` and ``endpoint_override``.
- **Servers are seeded, not booted.** Booting needs placement, conductor,
  scheduler, glance, neutron and a compute service.  ``create_flavor``,
  ``create_server`` and ``create_server_group`` write Nova's own objects
  (``nova.objects``) through ``openstack_assets/nova_seed.py`` running in the
  nova venv, exactly what nova-compute/conductor would have written.
- There is no message bus: ``transport_url = fake:/`` unless the caller
  passes ``nova_conf`` overrides (e.g. a RabbitMQ URL for notifications).

Each service lives in its own virtualenv under ``<repo>/.cache/openstack/``
(``<service>-venv``), built on first use with ``pip install --cache-dir
<repo>/.cache/pip`` under a file lock, and reused while its marker file
matches the pinned requirements.  Set ``GUEST_HA_CACHE_DIR`` to move the
cache.  Progress goes to stderr.

Adding a service (as was done for Vitrage and Masakari): add a ``ServiceSpec`` to ``SERVICES``
(requirements, plus a ``post_install`` hook for files the wheel lacks, e.g.
``api-paste.ini`` from the sdist), a ``_setup_<name>`` step that writes its
config and syncs its DB, a ``GunicornService`` for its API (same
``gha_wsgi_shim``), and register its catalog entry in ``_register_catalog``.

Example::

    from guest_ha_dev.testing.openstack import OpenStackCloud

    with OpenStackCloud() as cloud:
        cloud.create_flavor("ha", {"guest_ha:heartbeat": "true"})
        cloud.create_server(uuid, "vm1", "ha", "compute-1")
        sess = cloud.session()
        sess.get(cloud.nova_url + "/servers/" + uuid)

Nothing here imports OpenStack libraries at module import time;
``session()`` needs ``keystoneauth1`` in the calling environment.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid as uuidlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from guest_ha_dev.testing.openstack_assets import ASSETS_DIR

from . import free_port
from .procs import (
    CloudStartError,
    GunicornService,
    ProcessService,
    _clean_env,
    _http,
    _log,
    _merge,
    _run_logged,
    _tail,
    _write_ini,
)
from .venv_cache import (
    _TEMPLATES,
    SERVICES,
    ServiceSpec,
    cache_dir,
    db_template_dir,
    ensure_venv,
    ensure_venvs,
)

__all__ = [
    "SERVICES",
    "CloudStartError",
    "GunicornService",
    "NeutronStandIn",
    "OpenStackCloud",
    "ProcessService",
    "ServiceSpec",
    "cache_dir",
    "db_template_dir",
    "ensure_venv",
    "ensure_venvs",
    "openstack_cloud",
    "openstack_fixture",
]

# The venv cache, DB templates and process supervision live in venv_cache.py,
# db_templates.py and procs.py; the cloud that boots servers in nova_cloud.py.


class NeutronStandIn:
    """STAND-IN for Neutron, not the real service.

    A thread in the test process serving the two calls nova-api makes when it
    shows a server: ``GET /v2.0/ports`` and ``GET /v2.0/security-groups``,
    both answered with empty lists, plus version discovery at ``/``.  Real
    Neutron would need ML2, an agent and a message bus and adds nothing the
    project tests.  Every request is recorded in ``requests`` as
    ``(method, path)``; anything else gets 404.
    """

    def __init__(self) -> None:
        self.requests: List[Tuple[str, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path.rstrip("/")
                if path.endswith(".json"):
                    path = path[: -len(".json")]
                stand_in.requests.append(("GET", self.path))
                base = f"http://127.0.0.1:{stand_in.port}"
                if path in ("", "/v2.0"):
                    self._send(
                        200,
                        {
                            "versions": [
                                {
                                    "id": "v2.0",
                                    "status": "CURRENT",
                                    "links": [{"rel": "self", "href": base + "/v2.0/"}],
                                }
                            ]
                        },
                    )
                elif path == "/v2.0/ports":
                    self._send(200, {"ports": []})
                elif path == "/v2.0/security-groups":
                    self._send(200, {"security_groups": []})
                elif path == "/v2.0/networks":
                    self._send(200, {"networks": []})
                elif path == "/v2.0/floatingips":
                    self._send(200, {"floatingips": []})
                elif path == "/v2.0/extensions":
                    # Nova's resize asks which extensions exist (port binding).
                    self._send(200, {"extensions": []})
                else:
                    self._send(
                        404,
                        {
                            "NeutronError": {
                                "type": "HTTPNotFound",
                                "message": f"guest-ha Neutron stand-in does not serve {path}",
                            }
                        },
                    )

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="neutron-stand-in", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "NeutronStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --------------------------------------------------------------------------- the cloud


@dataclass
class _Timings:
    values: Dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, key: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.values[key] = round(time.monotonic() - started, 2)


class OpenStackCloud:
    """Keystone + nova-api (real) and a Neutron stand-in, private to one test run.

    Use as a context manager, or call ``start()``/``stop()``.  Everything lives
    under a private temporary ``state_dir`` (SQLite DBs, keys, configs, logs),
    removed by ``stop()`` unless ``keep_state`` (or ``GUEST_HA_OPENSTACK_KEEP=1``).
    Ports are picked free at start.

    Parameters:
        nova_auth: ``"keystone"`` (keystonemiddleware authtoken against our
            Keystone, the default) or ``"headers"`` (authtoken dropped from the
            paste pipeline: nova-api trusts ``X-User-Id``, ``X-Project-Id`` and
            ``X-Roles`` as given; no Keystone token is checked).
        nova_conf: extra ``{section: {key: value}}`` merged into nova.conf
            (e.g. ``{"DEFAULT": {"transport_url": "rabbit://..."},
            "notifications": {"notify_on_state_change": "vm_state"}}``).
        keystone_conf: the same for keystone.conf.
        startup_timeout: seconds allowed for set-up and start, installs excluded.
        vitrage: also run Vitrage 15.0.1 (``vitrage-api`` under gunicorn,
            ``vitrage-graph``, ``vitrage-persistor``) with guest-ha's
            datasource (``guest_ha.vitrage_datasource``) loaded next to the
            ``nova.instance`` datasource, which pulls servers from our
            nova-api.  Catalog: service type ``rca``.
        vitrage_auth: ``"keystone"`` (default; keystonemiddleware against our
            Keystone, user ``vitrage``) or ``"noauth"`` (queries then need
            ``X-Roles: admin`` and ``X-Project-Id`` headers).
        vitrage_snapshots_interval: seconds between Vitrage datasource
            snapshots (Vitrage's minimum, 10, by default: servers seeded after
            start show up as real ``nova.instance`` vertices within that).
        masakari: also run masakari-api 22 under gunicorn.  Catalog: service
            type ``instance-ha``.
        masakari_auth: ``"keystone"`` (default, user ``masakari``) or
            ``"noauth2"``.
        rabbit_url: RabbitMQ for Vitrage (``rabbit://...``).  When Vitrage is
            wanted and none is given, the cloud starts its own private
            ``RabbitMQNode`` and stops it again.
        vitrage_conf / masakari_conf: extra sections merged into their configs.
    """

    ADMIN_USER = "admin"
    ADMIN_PROJECT = "admin"
    DOMAIN = "Default"
    REGION = "RegionOne"
    NOVA_SERVICE_USER = "nova"
    VITRAGE_SERVICE_USER = "vitrage"
    MASAKARI_SERVICE_USER = "masakari"
    SERVICE_PROJECT = "service"
    #: Appended to Nova's SQLite URLs (the booting cloud waits longer on locks).
    SQLITE_QUERY = ""
    SQLITE_WAL = False
    """Put Nova's SQLite DBs in write-ahead-log mode (several writing services)."""
    #: Extra environment of the ``*-manage`` and seed commands (``_manage``).
    MANAGE_ENV: Mapping[str, str] = {}

    def __init__(
        self,
        *,
        nova_auth: str = "keystone",
        nova_conf: Optional[Mapping[str, Mapping[str, Any]]] = None,
        keystone_conf: Optional[Mapping[str, Mapping[str, Any]]] = None,
        keep_state: Optional[bool] = None,
        startup_timeout: float = 180,
        cache: Optional[Path] = None,
        vitrage: bool = False,
        vitrage_auth: str = "keystone",
        vitrage_conf: Optional[Mapping[str, Mapping[str, Any]]] = None,
        vitrage_snapshots_interval: int = 10,
        masakari: bool = False,
        masakari_auth: str = "keystone",
        masakari_conf: Optional[Mapping[str, Mapping[str, Any]]] = None,
        rabbit_url: Optional[str] = None,
    ):
        if nova_auth not in ("keystone", "headers"):
            raise ValueError("nova_auth must be 'keystone' or 'headers'")
        if vitrage_auth not in ("keystone", "noauth"):
            raise ValueError("vitrage_auth must be 'keystone' or 'noauth'")
        if masakari_auth not in ("keystone", "noauth2"):
            raise ValueError("masakari_auth must be 'keystone' or 'noauth2'")
        self.with_vitrage = vitrage
        self.vitrage_auth = vitrage_auth
        self._vitrage_conf_extra = vitrage_conf
        self.vitrage_snapshots_interval = vitrage_snapshots_interval
        self.with_masakari = masakari
        self.masakari_auth = masakari_auth
        self._masakari_conf_extra = masakari_conf
        self.rabbit_url = rabbit_url
        self.rabbit: Any = None  # a RabbitMQNode the cloud started itself
        self.vitrage_api: Optional[GunicornService] = None
        self.vitrage_graph: Optional[ProcessService] = None
        self.vitrage_persistor: Optional[ProcessService] = None
        self.masakari_api: Optional[ProcessService] = None
        self.vitrage_service_password = "gha-vitrage-" + uuidlib.uuid4().hex[:12]
        self.masakari_service_password = "gha-masakari-" + uuidlib.uuid4().hex[:12]
        self.nova_auth = nova_auth
        self._nova_conf_extra = nova_conf
        self._keystone_conf_extra = keystone_conf
        self.keep_state = (
            os.environ.get("GUEST_HA_OPENSTACK_KEEP") == "1" if keep_state is None else keep_state
        )
        self.startup_timeout = startup_timeout
        self._cache = cache
        self.admin_password = "gha-admin-" + uuidlib.uuid4().hex[:12]
        self.nova_service_password = "gha-nova-" + uuidlib.uuid4().hex[:12]
        self.state_dir: Optional[Path] = None
        self.venvs: Dict[str, Path] = {}
        self.keystone: Optional[GunicornService] = None
        self.nova: Optional[GunicornService] = None
        self.neutron: Optional[NeutronStandIn] = None
        self.admin_user_id = ""
        self.admin_project_id = ""
        self.timings: Dict[str, float] = {}
        self._token: Optional[Tuple[str, float]] = None
        self._started = False

    # ----------------------------------------------------------------- addresses
    @property
    def keystone_url(self) -> str:
        """Keystone root, e.g. ``http://127.0.0.1:PORT``."""
        assert self.keystone is not None, "cloud not started"
        return self.keystone.url

    @property
    def auth_url(self) -> str:
        """Identity v3 URL for keystoneauth1/openstacksdk (``.../v3``)."""
        return self.keystone_url + "/v3"

    @property
    def nova_url(self) -> str:
        """Compute API v2.1 URL, as in the catalog (``http://127.0.0.1:PORT/v2.1``)."""
        assert self.nova is not None, "cloud not started"
        return self.nova.url + "/v2.1"

    @property
    def neutron_url(self) -> str:
        assert self.neutron is not None, "cloud not started"
        return self.neutron.url

    @property
    def vitrage_url(self) -> str:
        """Vitrage API root, as in the catalog (``rca``): ``http://127.0.0.1:PORT``."""
        assert self.vitrage_api is not None, "cloud started without vitrage"
        return self.vitrage_api.url

    @property
    def masakari_url(self) -> str:
        """Masakari API v1, as in the catalog (``instance-ha``): ``.../v1``."""
        assert self.masakari_api is not None, "cloud started without masakari"
        return self.masakari_api.url + "/v1"

    @property
    def admin_credentials(self) -> Dict[str, str]:
        """keystoneauth1 ``v3.Password`` keyword arguments for the admin user."""
        return {
            "auth_url": self.auth_url,
            "username": self.ADMIN_USER,
            "password": self.admin_password,
            "project_name": self.ADMIN_PROJECT,
            "user_domain_name": self.DOMAIN,
            "project_domain_name": self.DOMAIN,
        }

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> "OpenStackCloud":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "OpenStackCloud":
        if self._started:
            return self
        self._started = True
        t = _Timings(self.timings)
        try:
            names = ["keystone", "nova"]
            names += ["vitrage"] if self.with_vitrage else []
            names += ["masakari"] if self.with_masakari else []
            with t.measure("install"):
                self.venvs = ensure_venvs(names, cache=self._cache)
            started = time.monotonic()
            deadline = started + self.startup_timeout
            self.state_dir = Path(tempfile.mkdtemp(prefix="gha-openstack-"))
            _log(f"starting {' + '.join(names)} in {self.state_dir}")
            self.neutron = NeutronStandIn().start()
            self.keystone = GunicornService(
                "keystone",
                self.venvs["keystone"],
                "keystone.wsgi.api:application",
                free_port(),
                self.state_dir / "logs" / "keystone.log",
                env={"OS_KEYSTONE_CONFIG_DIR": str(self.state_dir / "keystone")},
            )
            self.nova = GunicornService(
                "nova-api",
                self.venvs["nova"],
                "nova.wsgi.osapi_compute:application",
                free_port(),
                self.state_dir / "logs" / "nova-api.log",
                env={
                    "OS_NOVA_CONFIG_DIR": str(self.state_dir / "nova"),
                    "OS_NOVA_CONFIG_FILES": "api-paste.ini;nova.conf",
                },
            )
            steps: List[Tuple[str, Callable[[], None]]] = [
                ("keystone", lambda: self._bring_up_keystone(deadline)),
                ("nova", lambda: self._bring_up_nova(deadline)),
            ]
            if self.with_masakari:
                # masakari-api's own eventlet server, not gunicorn: importing
                # masakari's WSGI module monkey-patches eventlet into gunicorn's
                # threads, and its first Keystone call then hangs.
                self.masakari_api = ProcessService(
                    "masakari-api",
                    self.venvs["masakari"],
                    [
                        "masakari-api",
                        "--config-file",
                        str(self.state_dir / "masakari" / "masakari.conf"),
                    ],
                    self.state_dir / "logs" / "masakari-api.log",
                    port=free_port(),
                )
                steps.append(("masakari", lambda: self._bring_up_masakari(deadline)))
            if self.with_vitrage:
                self.vitrage_api = GunicornService(
                    "vitrage-api",
                    self.venvs["vitrage"],
                    "gha_vitrage_wsgi:application",
                    free_port(),
                    self.state_dir / "logs" / "vitrage-api.log",
                    env=self._vitrage_env(),
                )
                steps.append(("rabbitmq", self._ensure_rabbit))
            # Keystone, nova-api and masakari-api are set up and started side by
            # side (each needs Keystone only once a request arrives); Vitrage's
            # RabbitMQ node starts meanwhile.
            self._parallel(steps, t)
            with t.measure("catalog"):
                self._register_catalog()
            if self.with_vitrage:
                # After the catalog: vitrage-graph's first snapshot asks
                # Keystone for the compute endpoint.
                with t.measure("vitrage"):
                    self._bring_up_vitrage(deadline)
            self.timings["start_total"] = round(time.monotonic() - started, 2)
            extra = ""
            if self.with_vitrage:
                extra += f", vitrage {self.vitrage_url}"
            if self.with_masakari:
                extra += f", masakari {self.masakari_url}"
            _log(
                f"cloud up in {self.timings['start_total']} s: keystone {self.auth_url}, "
                f"nova {self.nova_url}{extra}, neutron stand-in {self.neutron_url}"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this cloud started (by PID) and remove its state dir."""
        for service in self._services():
            service.stop()
        if self.rabbit is not None:
            self.rabbit.stop()
            self.rabbit = None
        if self.neutron is not None:
            self.neutron.stop()
            self.neutron = None
        if self.state_dir is not None and self.state_dir.exists():
            if self.keep_state:
                _log(f"keeping state in {self.state_dir}")
            else:
                shutil.rmtree(self.state_dir, ignore_errors=True)
        self._started = False

    def pids(self) -> Dict[str, int]:
        """PIDs of the running service processes (gunicorn masters)."""
        return {s.name: s.pid for s in self._services() if s.pid is not None}

    def _services(self) -> List[Any]:
        found = (
            self.vitrage_api,
            self.vitrage_persistor,
            self.vitrage_graph,
            self.masakari_api,
            self.nova,
            self.keystone,
        )
        return [s for s in found if s is not None]

    @staticmethod
    def _parallel(steps: Sequence[Tuple[str, Callable[[], None]]], t: _Timings) -> None:
        errors: List[BaseException] = []

        def run(key: str, func: Callable[[], None]) -> None:
            try:
                with t.measure(key):
                    func()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=s, daemon=True) for s in steps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def _bring_up_keystone(self, deadline: float) -> None:
        assert self.keystone is not None
        with _Timings(self.timings).measure("keystone_setup"):
            self._setup_keystone()
        self.keystone.start()
        self.keystone.wait_ready("/v3", deadline, lambda s: s == 200)

    def _bring_up_nova(self, deadline: float) -> None:
        assert self.nova is not None
        with _Timings(self.timings).measure("nova_setup"):
            self._setup_nova()
        self.nova.start()
        self.nova.wait_ready("/", deadline, lambda s: s in (200, 300))

    def _manage(
        self,
        venv: Path,
        argv: Sequence[str],
        what: str,
        log_name: str,
        input_text: Optional[str] = None,
    ) -> str:
        assert self.state_dir is not None
        env = _clean_env()
        env.update(self.MANAGE_ENV)
        with open(self.state_dir / "logs" / log_name, "a") as log:
            return _run_logged(
                [str(venv / "bin" / argv[0]), *argv[1:]], log, what, env=env, input_text=input_text
            )

    # ----------------------------------------------------------------- keystone
    def _setup_keystone(self) -> None:
        assert self.state_dir is not None and self.keystone is not None
        kdir = self.state_dir / "keystone"
        for sub in ("fernet-keys", "credential-keys"):
            (kdir / sub).mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        conf = kdir / "keystone.conf"
        _write_ini(
            conf,
            _merge(
                {
                    "DEFAULT": {"use_stderr": "true"},
                    "database": {"connection": f"sqlite:///{kdir / 'keystone.db'}"},
                    "token": {"provider": "fernet"},
                    "fernet_tokens": {"key_repository": kdir / "fernet-keys"},
                    "fernet_receipts": {"key_repository": kdir / "fernet-keys"},
                    "credential": {"key_repository": kdir / "credential-keys"},
                },
                self._keystone_conf_extra,
            ),
        )
        shutil.copyfile(self.venvs["keystone"] / _TEMPLATES / "keystone.db", kdir / "keystone.db")
        # What `keystone-manage fernet_setup` / `credential_setup` write: key 0
        # (staged) and key 1 (primary), each a Fernet key (urlsafe base64 of 32
        # random bytes).  Writing them here saves two Keystone start-ups.
        for sub in ("fernet-keys", "credential-keys"):
            for index in ("0", "1"):
                key_file = kdir / sub / index
                key_file.write_bytes(base64.urlsafe_b64encode(os.urandom(32)))
                key_file.chmod(0o600)
        public = self.keystone.url + "/v3/"
        self._manage(
            self.venvs["keystone"],
            [
                "keystone-manage",
                "--config-file",
                str(conf),
                "bootstrap",
                "--bootstrap-password",
                self.admin_password,
                "--bootstrap-username",
                self.ADMIN_USER,
                "--bootstrap-project-name",
                self.ADMIN_PROJECT,
                "--bootstrap-region-id",
                self.REGION,
                "--bootstrap-public-url",
                public,
                "--bootstrap-internal-url",
                public,
                "--bootstrap-admin-url",
                public,
            ],
            "keystone-manage bootstrap",
            "keystone-manage.log",
        )

    def _keystone_token(
        self, scope: Mapping[str, Any], user: str, password: str
    ) -> Tuple[str, Dict[str, Any]]:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": user,
                            "password": password,
                            "domain": {"name": self.DOMAIN},
                        }
                    },
                },
                "scope": scope,
            }
        }
        status, headers, payload = _http("POST", self.auth_url + "/auth/tokens", body)
        if status != 201:
            raise CloudStartError(f"Keystone token for {user}: HTTP {status} {payload}")
        return headers["X-Subject-Token"], payload["token"]

    def _register_catalog(self) -> None:
        """Service project + nova service user, compute service and endpoints."""
        assert self.nova is not None
        admin_scope = {"project": {"name": self.ADMIN_PROJECT, "domain": {"name": self.DOMAIN}}}
        _, info = self._keystone_token(admin_scope, self.ADMIN_USER, self.admin_password)
        self.admin_user_id = info["user"]["id"]
        self.admin_project_id = info["project"]["id"]
        # Catalog and user management need a system-scoped admin token under
        # Keystone's current default policies.
        system, _ = self._keystone_token(
            {"system": {"all": True}}, self.ADMIN_USER, self.admin_password
        )
        api = self.auth_url

        def call(
            method: str, path: str, body: Any = None, ok: Sequence[int] = (200, 201, 204)
        ) -> Any:
            status, _, payload = _http(method, api + path, body, headers={"X-Auth-Token": system})
            if status not in ok:
                raise CloudStartError(f"Keystone {method} {path}: HTTP {status} {payload}")
            return payload

        domain_id = call("GET", "/domains?name=" + self.DOMAIN)["domains"][0]["id"]
        project = call(
            "POST", "/projects", {"project": {"name": self.SERVICE_PROJECT, "domain_id": domain_id}}
        )["project"]
        roles = {r["name"]: r["id"] for r in call("GET", "/roles")["roles"]}
        if "service" not in roles:
            roles["service"] = call("POST", "/roles", {"role": {"name": "service"}})["role"]["id"]
        # (service user, password, catalog name, type, URL, description)
        entries: List[Tuple[str, str, str, str, str, str]] = [
            (
                self.NOVA_SERVICE_USER,
                self.nova_service_password,
                "nova",
                "compute",
                self.nova_url,
                "nova-api (guest-ha test fixture)",
            )
        ]
        if self.vitrage_api is not None:
            entries.append(
                (
                    self.VITRAGE_SERVICE_USER,
                    self.vitrage_service_password,
                    "vitrage",
                    "rca",
                    self.vitrage_url,
                    "vitrage-api (guest-ha test fixture)",
                )
            )
        if self.masakari_api is not None:
            entries.append(
                (
                    self.MASAKARI_SERVICE_USER,
                    self.masakari_service_password,
                    "masakari",
                    "instance-ha",
                    self.masakari_url,
                    "masakari-api (guest-ha test fixture)",
                )
            )
        entries += self._extra_catalog_entries()
        for username, password, name, service_type, url, description in entries:
            user = call(
                "POST",
                "/users",
                {
                    "user": {
                        "name": username,
                        "password": password,
                        "domain_id": domain_id,
                        "default_project_id": project["id"],
                    }
                },
            )["user"]
            for role in ("service", "admin"):
                call("PUT", f"/projects/{project['id']}/users/{user['id']}/roles/{roles[role]}")
            service = call(
                "POST",
                "/services",
                {
                    "service": {
                        "name": name,
                        "type": service_type,
                        "enabled": True,
                        "description": description,
                    }
                },
            )["service"]
            for interface in ("public", "internal", "admin"):
                call(
                    "POST",
                    "/endpoints",
                    {
                        "endpoint": {
                            "service_id": service["id"],
                            "interface": interface,
                            "region_id": self.REGION,
                            "url": url,
                            "enabled": True,
                        }
                    },
                )

    def _extra_catalog_entries(self) -> List[Tuple[str, str, str, str, str, str]]:
        """More (user, password, name, type, URL, description) catalog entries
        for subclasses (the booting cloud adds placement and glance)."""
        return []

    def _authtoken_section(self, username: str, password: str) -> Dict[str, Any]:
        """``[keystone_authtoken]`` for a service user of ours."""
        assert self.keystone is not None
        return {
            "www_authenticate_uri": self.keystone.url + "/v3",
            "auth_url": self.keystone.url + "/v3",
            "auth_type": "password",
            "username": username,
            "password": password,
            "project_name": self.SERVICE_PROJECT,
            "user_domain_name": self.DOMAIN,
            "project_domain_name": self.DOMAIN,
            "region_name": self.REGION,
            "interface": "public",
        }

    # ----------------------------------------------------------------- rabbitmq
    def _ensure_rabbit(self) -> None:
        if self.rabbit_url:
            return
        from guest_ha_dev.testing.rabbitmq import RabbitMQNode

        self.rabbit = RabbitMQNode()
        self.rabbit.start()
        self.rabbit_url = self.rabbit.url

    # ----------------------------------------------------------------- masakari
    def _setup_masakari(self) -> None:
        assert self.state_dir is not None and self.keystone is not None
        assert self.masakari_api is not None
        mdir = self.state_dir / "masakari"
        mdir.mkdir(parents=True, exist_ok=True)
        venv = self.venvs["masakari"]
        shutil.copyfile(venv / "etc" / "masakari" / "api-paste.ini", mdir / "api-paste.ini")
        shutil.copyfile(venv / _TEMPLATES / "masakari.db", mdir / "masakari.db")
        db = f"sqlite:///{mdir / 'masakari.db'}"
        sections: Dict[str, Dict[str, Any]] = {
            "DEFAULT": {
                "auth_strategy": self.masakari_auth,
                # The API casts notifications to masakari-engine over RPC; no
                # engine runs here, so an in-process fake bus swallows them.
                "transport_url": "fake:/",
                "use_stderr": "true",
                # Default: sleep up to 5 s before storing each notification.
                "notification_delay_max": 0,
                "os_privileged_user_name": self.MASAKARI_SERVICE_USER,
                "os_privileged_user_password": self.masakari_service_password,
                "os_privileged_user_tenant": self.SERVICE_PROJECT,
                "os_privileged_user_auth_url": self.keystone.url + "/v3",
                "os_user_domain_name": self.DOMAIN,
                "os_project_domain_name": self.DOMAIN,
                "os_region_name": self.REGION,
                "nova_catalog_admin_info": "compute:nova:publicURL",
                "masakari_api_listen": "127.0.0.1",
                "masakari_api_listen_port": self.masakari_api.port,
                "masakari_api_workers": 1,
            },
            "wsgi": {"api_paste_config": mdir / "api-paste.ini"},
            "database": {"connection": db},
            "taskflow": {"connection": db},
            "oslo_concurrency": {"lock_path": mdir},
            "keystone_authtoken": self._authtoken_section(
                self.MASAKARI_SERVICE_USER, self.masakari_service_password
            ),
        }
        _write_ini(mdir / "masakari.conf", _merge(sections, self._masakari_conf_extra))

    def _bring_up_masakari(self, deadline: float) -> None:
        assert self.masakari_api is not None
        with _Timings(self.timings).measure("masakari_setup"):
            self._setup_masakari()
        self.masakari_api.start()
        self.masakari_api.wait_ready("/", deadline, lambda s: s in (200, 300))

    # ----------------------------------------------------------------- vitrage
    def _vitrage_env(self) -> Dict[str, str]:
        """Environment of the Vitrage processes: their config file, and this
        project's package on ``sys.path`` so ``guest_ha.vitrage_datasource``
        imports (the datasource needs only Vitrage and the standard library)."""
        assert self.state_dir is not None
        import guest_ha

        package_root = str(Path(guest_ha.__file__).resolve().parent.parent)
        return {
            "PYTHONPATH": package_root,
            "GHA_VITRAGE_CONFIG": str(self.state_dir / "vitrage" / "vitrage.conf"),
        }

    def _setup_vitrage(self) -> None:
        assert self.state_dir is not None and self.keystone is not None
        from guest_ha.vitrage_datasource import values_file

        vdir = self.state_dir / "vitrage"
        values = vdir / "datasources_values"
        values.mkdir(parents=True, exist_ok=True)
        venv = self.venvs["vitrage"]
        for src in (venv / "etc" / "vitrage" / "datasources_values").glob("*.yaml"):
            shutil.copyfile(src, values / src.name)
        shutil.copyfile(values_file(), values / Path(values_file()).name)
        conf = vdir / "vitrage.conf"
        paste = (venv / "etc" / "vitrage" / "api-paste.ini").read_text()
        # keystonemiddleware inside Vitrage's auth filter reads its own
        # ConfigOpts: point it at our file instead of /etc/vitrage.
        paste = paste.replace(
            "[filter:basic_and_keystone_auth]\n",
            f"[filter:basic_and_keystone_auth]\noslo_config_file = {conf}\n",
        )
        (vdir / "api-paste.ini").write_text(paste)
        shutil.copyfile(venv / _TEMPLATES / "vitrage.db", vdir / "vitrage.db")
        creds = self._authtoken_section(self.VITRAGE_SERVICE_USER, self.vitrage_service_password)
        sections: Dict[str, Dict[str, Any]] = {
            "DEFAULT": {
                "transport_url": self.rabbit_url,
                "use_stderr": "true",
                "host": "gha-vitrage",
            },
            "api": {
                "auth_mode": self.vitrage_auth,
                "paste_config": vdir / "api-paste.ini",
                "host": "127.0.0.1",
            },
            "database": {"connection": f"sqlite:///{vdir / 'vitrage.db'}"},
            "datasources": {
                "path": "vitrage.datasources,guest_ha.vitrage_datasource",
                "types": "nova.instance,guest_ha",
                "snapshots_interval": self.vitrage_snapshots_interval,
            },
            "entity_graph": {"datasources_values_dir": values},
            "oslo_concurrency": {"lock_path": vdir},
            "keystone_authtoken": creds,
            "service_credentials": {k: v for k, v in creds.items() if k != "www_authenticate_uri"},
        }
        _write_ini(conf, _merge(sections, self._vitrage_conf_extra))

    def vitrage_headers(self) -> Dict[str, str]:
        """Headers for Vitrage queries: a token (keystone mode) or the admin
        identity (noauth mode)."""
        if self.vitrage_auth == "keystone":
            return {"X-Auth-Token": self.token()}
        return {"X-Roles": "admin", "X-Project-Id": self.admin_project_id}

    def _bring_up_vitrage(self, deadline: float) -> None:
        assert self.vitrage_api is not None and self.state_dir is not None
        with _Timings(self.timings).measure("vitrage_setup"):
            self._setup_vitrage()
        venv = self.venvs["vitrage"]
        conf = str(self.state_dir / "vitrage" / "vitrage.conf")
        logs = self.state_dir / "logs"
        self.vitrage_graph = ProcessService(
            "vitrage-graph",
            venv,
            ["vitrage-graph", "--config-file", conf],
            logs / "vitrage-graph.log",
            env=self._vitrage_env(),
        )
        self.vitrage_persistor = ProcessService(
            "vitrage-persistor",
            venv,
            ["vitrage-persistor", "--config-file", conf],
            logs / "vitrage-persistor.log",
            env=self._vitrage_env(),
        )
        self.vitrage_graph.start()
        self.vitrage_persistor.start()
        self.vitrage_api.start()
        self.vitrage_api.wait_ready("/", deadline, lambda s: s in (200, 300))
        # The graph answers the API over RPC once its first snapshot is in.
        started = time.monotonic()
        last = ""
        while True:
            for proc in (self.vitrage_graph, self.vitrage_persistor):
                proc.check_alive()
            try:
                status, _, payload = _http(
                    "GET",
                    self.vitrage_url + "/v1/resources/?all_tenants=true",
                    headers=self.vitrage_headers(),
                    timeout=10,
                )
                if status == 200:
                    break
                last = f"HTTP {status} {str(payload)[:200]}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise CloudStartError(
                    f"vitrage-graph not answering ({last}); log {logs / 'vitrage-graph.log'}:\n"
                    f"{_tail(logs / 'vitrage-graph.log')}"
                )
            time.sleep(0.5)
        self.timings["vitrage_graph_ready"] = round(time.monotonic() - started, 2)

    def vitrage_get(self, path: str, timeout: float = 30) -> Any:
        """``GET`` a Vitrage API path (e.g. ``/v1/alarm/?all_tenants=true``) as admin."""
        status, _, payload = _http(
            "GET", self.vitrage_url + path, headers=self.vitrage_headers(), timeout=timeout
        )
        if status != 200:
            raise CloudStartError(f"Vitrage GET {path}: HTTP {status} {payload}")
        return payload

    # ----------------------------------------------------------------- nova
    def _setup_nova(self) -> None:
        assert self.state_dir is not None and self.keystone is not None
        ndir = self.state_dir / "nova"
        (ndir / "locks").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        venv = self.venvs["nova"]
        paste = (venv / "etc" / "nova" / "api-paste.ini").read_text()
        if self.nova_auth == "headers":
            paste = paste.replace(" authtoken keystonecontext", " keystonecontext")
        (ndir / "api-paste.ini").write_text(paste)
        cell0 = f"sqlite:///{ndir / 'cell0.db'}{self.SQLITE_QUERY}"
        cell1 = f"sqlite:///{ndir / 'cell1.db'}{self.SQLITE_QUERY}"
        sections: Dict[str, Dict[str, Any]] = {
            "DEFAULT": {
                "host": "gha-nova-api",
                "state_path": ndir,
                "transport_url": "fake:/",
                "use_stderr": "true",
                "osapi_compute_workers": 1,
            },
            "api": {"auth_strategy": "keystone"},
            "api_database": {"connection": f"sqlite:///{ndir / 'nova_api.db'}{self.SQLITE_QUERY}"},
            "database": {"connection": cell1},
            "oslo_concurrency": {"lock_path": ndir / "locks"},
            "oslo_messaging_notifications": {"driver": "noop"},
            "neutron": {"auth_type": "none", "endpoint_override": self.neutron_url},
            "keystone_authtoken": {
                "www_authenticate_uri": self.keystone.url + "/v3",
                "auth_url": self.keystone.url + "/v3",
                "auth_type": "password",
                "username": self.NOVA_SERVICE_USER,
                "password": self.nova_service_password,
                "project_name": self.SERVICE_PROJECT,
                "user_domain_name": self.DOMAIN,
                "project_domain_name": self.DOMAIN,
                "region_name": self.REGION,
                "interface": "public",
                "service_token_roles_required": "true",
            },
            "wsgi": {"api_paste_config": ndir / "api-paste.ini"},
        }
        conf = ndir / "nova.conf"
        sections = _merge(sections, self._nova_conf_extra)
        _write_ini(conf, sections)
        tpl = venv / _TEMPLATES
        shutil.copyfile(tpl / "nova_api.db", ndir / "nova_api.db")
        shutil.copyfile(tpl / "cell.db", ndir / "cell0.db")
        shutil.copyfile(tpl / "cell.db", ndir / "cell1.db")
        if self.SQLITE_WAL:
            # Readers then never block a writer (nor a writer readers); with
            # conductor, scheduler, compute and nova-api all writing the cell DB,
            # the default rollback journal gave "database is locked" under load.
            import sqlite3

            for name in ("nova_api.db", "cell0.db", "cell1.db"):
                with contextlib.closing(sqlite3.connect(ndir / name)) as db:
                    db.execute("PRAGMA journal_mode=WAL")
        # `nova-manage cell_v2 map_cell0` + `create_cell`, through nova-manage's
        # own code, in one process.
        self.seed(
            [
                {
                    "op": "cells",
                    "cell0": cell0,
                    "cell1": cell1,
                    "transport_url": sections["DEFAULT"]["transport_url"],
                }
            ]
        )

    def seed(self, ops: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """Run Nova seed operations (see ``openstack_assets/nova_seed.py``) in one
        process of the nova venv; return one result per operation."""
        assert self.state_dir is not None, "cloud not started"
        script = os.path.join(ASSETS_DIR, "nova_seed.py")
        out = self._manage(
            self.venvs["nova"],
            ["python", script, "--config-file", str(self.state_dir / "nova" / "nova.conf")],
            "nova seed",
            "nova-seed.log",
            input_text=json.dumps(list(ops)),
        )
        return json.loads(out.strip().splitlines()[-1])

    def create_flavor(
        self,
        name: str,
        extra_specs: Optional[Mapping[str, str]] = None,
        *,
        vcpus: int = 1,
        ram: int = 512,
        disk: int = 1,
        flavorid: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Create a public flavor (with extra specs) through ``nova.objects.Flavor``."""
        return self.seed(
            [
                {
                    "op": "flavor",
                    "name": name,
                    "flavorid": flavorid,
                    "vcpus": vcpus,
                    "memory_mb": ram,
                    "root_gb": disk,
                    "extra_specs": dict(extra_specs or {}),
                }
            ]
        )[0]

    def create_host(self, host: str) -> Dict[str, Any]:
        """nova-compute Service + ComputeNode + HostMapping (cell1) for ``host``."""
        return self.seed([{"op": "host", "host": host}])[0]

    def create_server_group(
        self,
        name: str,
        policy: str = "anti-affinity",
        *,
        project_id: Optional[str] = None,
        user_id: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Create a server group (admin project unless given); returns ``uuid`` etc."""
        return self.seed(
            [
                {
                    "op": "server_group",
                    "name": name,
                    "policy": policy,
                    "project_id": project_id or self.admin_project_id,
                    "user_id": user_id or self.admin_user_id,
                }
            ]
        )[0]

    def create_server(
        self,
        uuid: str,
        name: str,
        flavor: str,
        host: str,
        server_group: Optional[str] = None,
        vm_state: str = "active",
        *,
        project_id: Optional[str] = None,
        user_id: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
    ) -> Dict[str, Any]:
        """Create a server as if it had been booted on ``host``.

        ``flavor`` is a flavor name or flavorid; ``server_group`` a group uuid or
        name; the host's Service/ComputeNode/HostMapping are created if missing.
        The server belongs to the admin project unless ``project_id`` is given.
        """
        return self.seed(
            [
                {
                    "op": "server",
                    "uuid": str(uuid),
                    "name": name,
                    "flavor": flavor,
                    "host": host,
                    "server_group": server_group,
                    "vm_state": vm_state,
                    "project_id": project_id or self.admin_project_id,
                    "user_id": user_id or self.admin_user_id,
                    "metadata": dict(metadata or {}),
                }
            ]
        )[0]

    # ----------------------------------------------------------------- clients
    def token(self) -> str:
        """A project-scoped admin token (cached for 30 minutes), via plain HTTP."""
        if self._token is None or self._token[1] < time.monotonic():
            scope = {"project": {"name": self.ADMIN_PROJECT, "domain": {"name": self.DOMAIN}}}
            tok, _ = self._keystone_token(scope, self.ADMIN_USER, self.admin_password)
            self._token = (tok, time.monotonic() + 1800)
        return self._token[0]

    def session(self, **session_kwargs: Any) -> Any:
        """A ``keystoneauth1.session.Session`` authenticated as the admin user."""
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v3

        return ks_session.Session(auth=v3.Password(**self.admin_credentials), **session_kwargs)

    def clouds_yaml(self, path: "str | os.PathLike[str]", cloud_name: str = "guest-ha") -> Path:
        """Write a ``clouds.yaml`` for keystoneauth1/openstacksdk consumers
        (JSON is valid YAML, so no YAML library is needed).  Returns the path."""
        creds = dict(self.admin_credentials)
        doc = {
            "clouds": {
                cloud_name: {
                    "auth": creds,
                    "auth_type": "password",
                    "region_name": self.REGION,
                    "interface": "public",
                    "identity_api_version": 3,
                }
            }
        }
        out = Path(path)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        return out


@contextlib.contextmanager
def openstack_cloud(**kwargs: Any) -> Iterator[OpenStackCloud]:
    """``with openstack_cloud(**kwargs) as cloud:`` - start, yield, always stop."""
    cloud = OpenStackCloud(**kwargs)
    with cloud:
        yield cloud


def openstack_fixture(scope: str = "session", name: Optional[str] = None, **kwargs: Any) -> Any:
    """Build a pytest fixture that yields a started ``OpenStackCloud``.

    In a test module or conftest::

        from guest_ha_dev.testing.openstack import openstack_fixture
        cloud = openstack_fixture(scope="module")            # fixture "cloud"
        hdr_cloud = openstack_fixture(nova_auth="headers")   # keyword args go to the cloud

    ``name`` sets the fixture name explicitly (otherwise the name it is bound
    to).  The cloud is stopped (processes killed, state removed) when the scope
    ends.
    """
    import pytest

    def _cloud() -> Iterator[OpenStackCloud]:
        with openstack_cloud(**kwargs) as cloud:
            yield cloud

    if name is not None:
        return pytest.fixture(scope=scope, name=name)(_cloud)  # type: ignore[call-overload]
    return pytest.fixture(scope=scope)(_cloud)  # type: ignore[call-overload]
