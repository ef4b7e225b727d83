"""A test cloud that boots servers: real Nova 34 with nova-compute on this
machine's libvirtd (TCG), next to the Keystone and nova-api of ``openstack.py``.

``NovaCloud`` adds to ``OpenStackCloud``:

- a private **RabbitMQ** node (``RabbitMQNode``) for Nova's RPC and its
  versioned notifications (exchange ``nova``, topic ``versioned_notifications``,
  ``notify_on_state_change = vm_and_task_state``);
- **placement 16** and **glance-api 33** (file store) under gunicorn, each in
  its own cached venv, registered in the catalog with their service users;
- **nova-conductor**, **nova-scheduler** and **nova-compute** (libvirt driver,
  ``virt_type = qemu``, ``qemu:///system``, ``cpu_mode = none``), nova-compute
  from its own venv (Nova plus libvirt-python); cells v2 (cell0 + cell1 on
  RabbitMQ) and the compute host discovered before ``start()`` returns.

Everything is on SQLite and private ports, started here and stopped by PID.
The recipe it follows, with timings, is ``shared/openstack/nova-boot.md``.

**SQLite with several writing services.**  nova-api, conductor, scheduler and
compute (all in Nova 34's native-threading mode, not eventlet) write one cell
DB and one API DB.  oslo.db opens every transaction with a plain, deferred
``BEGIN``, and many Nova writes read first (``service_update``: ``SELECT``, then
``UPDATE`` at commit).  Such a transaction holds only a read snapshot; when
another process commits in between, SQLite refuses the upgrade to a write lock
at once (``SQLITE_BUSY_SNAPSHOT`` in WAL mode, deadlock avoidance in rollback
mode): ``database is locked`` within milliseconds, whatever the busy timeout,
and a boot, resize or service report fails with it.  (oslo.db gives SQLite
files a ``NullPool``, so ``max_pool_size`` and friends change nothing.)  The
fix: every service of this cloud, and each ``nova-manage``/seed run, has
``openstack_assets/sqlite_immediate`` on ``PYTHONPATH``; its
``sitecustomize`` turns oslo.db's ``BEGIN`` into ``BEGIN IMMEDIATE``, so each
transaction takes the write lock first and a second writer waits for it
(``?timeout=60``, ``SQLITE_QUERY``) instead of failing.  WAL mode stays.

What is not real, and why:

- **Neutron** stays the in-process ``NeutronStandIn``. Servers boot with
  ``networks: none`` (microversion 2.37+), so nova-compute asks Neutron for
  nothing while building; it only reads, answered with empty lists: ports and
  networks of the server on hard reboot, delete and the 60 s
  ``heal_instance_info_cache`` periodic task, and nova-api's
  ``GET /v2.0/ports?device_id=...`` on each ``GET /servers/{id}``.
- **privsep/rootwrap**: the tests run as root with no sudo, so the privsep
  helpers run ``privsep-helper`` directly and rootwrap is disabled
  (``[workarounds] disable_rootwrap``).

- **The compute service row** is written before nova-compute first starts
  (``nova_seed.py`` op ``service``): the libvirtd here is shared with other
  tests, and a new nova-compute refuses to start beside existing domains.

Domains are Nova's own, XML written by nova-compute, named by Nova's
``instance_name_template`` with a per-cloud tag (``instance-<tag>-%08x``) so
that clouds sharing this libvirtd never clash.  ``stop()`` removes the domains
of servers a failed test left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid as uuidlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from . import free_port
from .openstack import OpenStackCloud
from .openstack_assets import ASSETS_DIR
from .procs import (
    CloudStartError,
    GunicornService,
    ProcessService,
    _http,
    _log,
    _merge,
    _tail,
    _write_ini,
)
from .venv_cache import _TEMPLATES, ensure_venvs

__all__ = ["NovaApiError", "NovaCloud", "nova_cloud_fixture"]

#: Microversion of the server calls: ``networks: none`` needs 2.37, server
#: groups with ``policy`` 2.64; 2.96 is what nova 34 offers and the recipe used.
MICROVERSION = "2.96"


class NovaApiError(RuntimeError):
    """An unexpected answer from the Nova, Glance or placement API."""


class NovaCloud(OpenStackCloud):
    """Keystone, nova-api, placement, glance, conductor, scheduler and
    nova-compute on libvirt, booting real TCG servers.  See the module docstring.

    ``compute_host`` is nova-compute's ``host``; ``servers()`` etc. talk to the
    APIs as the admin user.  Extra keyword arguments go to ``OpenStackCloud``.
    """

    #: nova-api, conductor and compute write one SQLite cell DB: wait up to
    #: 60 s for its lock (sqlite3's default is 5 s) instead of failing a request.
    SQLITE_QUERY = "?timeout=60"
    SQLITE_WAL = True
    #: oslo.db's transactions begin IMMEDIATE (module docstring, "SQLite").
    SQLITE_ENV = {"PYTHONPATH": os.path.join(ASSETS_DIR, "sqlite_immediate")}
    MANAGE_ENV = SQLITE_ENV
    PLACEMENT_SERVICE_USER = "placement"
    GLANCE_SERVICE_USER = "glance"

    def __init__(self, *, startup_timeout: float = 300, **kwargs: Any) -> None:
        super().__init__(startup_timeout=startup_timeout, **kwargs)
        self.compute_host = "gha-cmp-" + uuidlib.uuid4().hex[:6]
        self.placement_service_password = "gha-placement-" + uuidlib.uuid4().hex[:12]
        self.glance_service_password = "gha-glance-" + uuidlib.uuid4().hex[:12]
        self.placement: Optional[GunicornService] = None
        self.glance: Optional[GunicornService] = None
        self.conductor: Optional[ProcessService] = None
        self.scheduler: Optional[ProcessService] = None
        self.compute: Optional[ProcessService] = None
        self._boot_venvs: Dict[str, Path] = {}
        self.instances_path: Optional[Path] = None
        self.booted: List[str] = []
        """Servers booted through ``boot()``: their domains are removed by ``stop()``."""

    # ----------------------------------------------------------------- addresses
    @property
    def placement_url(self) -> str:
        assert self.placement is not None, "cloud not started"
        return self.placement.url

    @property
    def glance_url(self) -> str:
        assert self.glance is not None, "cloud not started"
        return self.glance.url

    @property
    def nova_conf_path(self) -> Path:
        assert self.state_dir is not None, "cloud not started"
        return self.state_dir / "nova" / "nova.conf"

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> "NovaCloud":
        if self._started:
            return self
        started = time.monotonic()
        try:
            with _timed(self.timings, "install_boot_venvs"):
                self._boot_venvs = ensure_venvs(
                    ["placement", "glance", "nova-compute"], cache=self._cache
                )
            from .rabbitmq import RabbitMQNode

            if not self.rabbit_url:
                self.rabbit = RabbitMQNode()
                self.rabbit_url = self.rabbit.url
            rabbit_errors: List[BaseException] = []
            rabbit_thread = threading.Thread(
                target=self._start_rabbit, args=(rabbit_errors,), daemon=True
            )
            rabbit_thread.start()
            self.placement = GunicornService(
                "placement",
                self._boot_venvs["placement"],
                "placement.wsgi.api:application",
                free_port(),
                Path("/nonexistent"),  # set once state_dir exists
                env=self.SQLITE_ENV,
            )
            self.glance = GunicornService(
                "glance-api",
                self._boot_venvs["glance"],
                "glance.wsgi.api:application",
                free_port(),
                Path("/nonexistent"),
                env=self.SQLITE_ENV,
            )
            # Keystone + nova-api + catalog (with placement and image entries).
            super().start()
            self._started = True
            assert self.state_dir is not None
            self.venvs.update(self._boot_venvs)
            deadline = time.monotonic() + self.startup_timeout
            with _timed(self.timings, "placement_glance"):
                self._bring_up_placement_glance(deadline)
            rabbit_thread.join()
            if rabbit_errors:
                raise rabbit_errors[0]
            with _timed(self.timings, "nova_services"):
                self._start_nova_services()
                self._wait_compute(deadline)
            with _timed(self.timings, "discover_hosts"):
                self._manage(
                    self.venvs["nova"],
                    [
                        "nova-manage",
                        "--config-file",
                        str(self.nova_conf_path),
                        "cell_v2",
                        "discover_hosts",
                        "--verbose",
                    ],
                    "nova-manage cell_v2 discover_hosts",
                    "nova-manage.log",
                )
            self.timings["boot_cloud_total"] = round(time.monotonic() - started, 2)
            _log(
                f"booting cloud up in {self.timings['boot_cloud_total']} s "
                f"(compute host {self.compute_host}, placement {self.placement_url}, "
                f"glance {self.glance_url}, rabbit {self.rabbit_url})"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _start_rabbit(self, errors: List[BaseException]) -> None:
        """RabbitMQ node and libvirtd (installed/started if needed), off the main path."""
        try:
            from guest_ha_dev.sim.testguest import ensure_libvirtd

            ensure_libvirtd()
            if self.rabbit is not None:
                self.rabbit.start()
        except BaseException as exc:  # re-raised by start()
            errors.append(exc)

    def _services(self) -> List[Any]:
        mine = (self.compute, self.scheduler, self.conductor, self.glance, self.placement)
        return [s for s in mine if s is not None] + super()._services()

    def _extra_catalog_entries(self) -> List[Tuple[str, str, str, str, str, str]]:
        return [
            (
                self.PLACEMENT_SERVICE_USER,
                self.placement_service_password,
                "placement",
                "placement",
                self.placement_url,
                "placement-api (guest-ha test fixture)",
            ),
            (
                self.GLANCE_SERVICE_USER,
                self.glance_service_password,
                "glance",
                "image",
                self.glance_url,
                "glance-api (guest-ha test fixture)",
            ),
        ]

    # ----------------------------------------------------------------- configs
    def _setup_nova(self) -> None:
        """nova-api's set-up (parent), with the compute, notification and
        RabbitMQ settings merged in first."""
        assert self.state_dir is not None and self.keystone is not None
        ndir = self.state_dir / "nova"
        helper = (
            f"{self._boot_venvs['nova-compute'] / 'bin' / 'privsep-helper'} "
            f"--config-file {ndir / 'nova.conf'}"
        )
        boot: Dict[str, Dict[str, Any]] = {
            "DEFAULT": {
                "host": self.compute_host,
                "my_ip": "127.0.0.1",
                "instances_path": self._instances_dir(),
                "transport_url": self.rabbit_url,
                "compute_driver": "libvirt.LibvirtDriver",
                "running_deleted_instance_action": "log",
                "heal_instance_info_cache_interval": 60,
                # Nova's instance-%08x plus this cloud's tag: every cloud counts
                # from 1, and the libvirtd here is shared (a leftover or a second
                # cloud's instance-00000001 would make builds fail).
                "instance_name_template": f"instance-{self.name_tag}-%08x",
                # One compute host: resize can only stay on it.
                "allow_resize_to_same_host": "true",
            },
            "conductor": {"workers": 1},
            "scheduler": {"workers": 1, "discover_hosts_in_cells_interval": -1},
            "oslo_messaging_notifications": {"driver": "messagingv2"},
            "notifications": {
                # Versioned for our controller, legacy compute.instance.update
                # for Ceilometer (telemetry.py).
                "notification_format": "both",
                "notify_on_state_change": "vm_and_task_state",
            },
            "libvirt": {
                "virt_type": "qemu",
                "connection_uri": "qemu:///system",
                "cpu_mode": "none",
                "inject_partition": -2,
            },
            "vnc": {"enabled": "false"},
            "spice": {"enabled": "false"},
            "serial_console": {"enabled": "false"},
            "glance": {"region_name": self.REGION, "valid_interfaces": "public"},
            "placement": {
                "auth_type": "password",
                "auth_url": self.keystone.url + "/v3",
                "username": self.NOVA_SERVICE_USER,
                "password": self.nova_service_password,
                "project_name": self.SERVICE_PROJECT,
                "user_domain_name": self.DOMAIN,
                "project_domain_name": self.DOMAIN,
                "region_name": self.REGION,
                "valid_interfaces": "public",
            },
            "workarounds": {"disable_rootwrap": "true"},
        }
        for section in (
            "nova_sys_admin",
            "privsep_osbrick",
            "vif_plug_linux_bridge_privileged",
            "vif_plug_ovs_privileged",
        ):
            boot[section] = {"helper_command": helper}
        self._nova_conf_extra = _merge(boot, self._nova_conf_extra)
        assert self.nova is not None
        self.nova.env.update(self.SQLITE_ENV)  # nova-api (started after this)
        super()._setup_nova()

    def _instances_dir(self) -> Path:
        """nova-compute's ``instances_path``: under /var/tmp, where O_DIRECT works
        (not tmpfs), removed by ``stop()``."""
        if self.instances_path is None:
            self.instances_path = Path(tempfile.mkdtemp(prefix="gha-nova-", dir="/var/tmp"))
        return self.instances_path

    def stop(self) -> None:
        super().stop()
        # Domains of servers a failed test did not delete: Nova is gone now, so
        # remove them from libvirtd by UUID (only ours).
        for uuid in self.booted:
            for argv in (["destroy", uuid], ["undefine", "--managed-save", uuid]):
                subprocess.run(
                    ["virsh", "-c", "qemu:///system", *argv],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
        self.booted = []
        if self.instances_path is not None and not self.keep_state:
            shutil.rmtree(self.instances_path, ignore_errors=True)
            self.instances_path = None

    def _bring_up_placement_glance(self, deadline: float) -> None:
        assert self.state_dir is not None and self.placement and self.glance
        logs = self.state_dir / "logs"
        pdir = self.state_dir / "placement"
        pdir.mkdir(parents=True, exist_ok=True)
        tpl = self.venvs["placement"] / _TEMPLATES
        (pdir / "placement.db").write_bytes((tpl / "placement.db").read_bytes())
        _write_ini(
            pdir / "placement.conf",
            {
                "DEFAULT": {"use_stderr": "true"},
                "placement_database": {
                    "connection": f"sqlite:///{pdir / 'placement.db'}{self.SQLITE_QUERY}"
                },
                "api": {"auth_strategy": "keystone"},
                "keystone_authtoken": self._authtoken_section(
                    self.PLACEMENT_SERVICE_USER, self.placement_service_password
                ),
            },
        )
        gdir = self.state_dir / "glance"
        for sub in ("images", "staging", "tasks"):
            (gdir / sub).mkdir(parents=True, exist_ok=True)
        gvenv = self.venvs["glance"]
        (gdir / "glance.db").write_bytes((gvenv / _TEMPLATES / "glance.db").read_bytes())
        (gdir / "glance-api-paste.ini").write_bytes(
            (gvenv / "etc" / "glance" / "glance-api-paste.ini").read_bytes()
        )
        _write_ini(
            gdir / "glance-api.conf",
            {
                "DEFAULT": {"use_stderr": "true", "enabled_backends": "fs:file"},
                "database": {"connection": f"sqlite:///{gdir / 'glance.db'}{self.SQLITE_QUERY}"},
                "glance_store": {"default_backend": "fs"},
                "fs": {"filesystem_store_datadir": gdir / "images"},
                "os_glance_staging_store": {"filesystem_store_datadir": gdir / "staging"},
                "os_glance_tasks_store": {"filesystem_store_datadir": gdir / "tasks"},
                "paste_deploy": {"flavor": "keystone"},
                "keystone_authtoken": self._authtoken_section(
                    self.GLANCE_SERVICE_USER, self.glance_service_password
                ),
                "oslo_concurrency": {"lock_path": gdir},
            },
        )
        self.placement.log_path = logs / "placement.log"
        self.placement.env["OS_PLACEMENT_CONFIG_DIR"] = str(pdir)
        self.glance.log_path = logs / "glance-api.log"
        self.glance.env["OS_GLANCE_CONFIG_DIR"] = str(gdir)
        self.placement.start()
        self.glance.start()
        self.placement.wait_ready("/", deadline, lambda s: s == 200)
        self.glance.wait_ready("/", deadline, lambda s: s in (200, 300))

    def _start_nova_services(self) -> None:
        assert self.state_dir is not None
        conf = str(self.nova_conf_path)
        logs = self.state_dir / "logs"
        self.conductor = ProcessService(
            "nova-conductor",
            self.venvs["nova"],
            ["nova-conductor", "--config-file", conf],
            logs / "nova-conductor.log",
            env=self.SQLITE_ENV,
        )
        self.scheduler = ProcessService(
            "nova-scheduler",
            self.venvs["nova"],
            ["nova-scheduler", "--config-file", conf],
            logs / "nova-scheduler.log",
            env=self.SQLITE_ENV,
        )
        self.compute = ProcessService(
            "nova-compute",
            self.venvs["nova-compute"],
            ["nova-compute", "--config-file", conf],
            logs / "nova-compute.log",
            env=self.SQLITE_ENV,
        )
        # Its Service row first: a new nova-compute refuses to start on a
        # hypervisor that already has domains, and this libvirtd is shared with
        # other tests (their domains are not Nova's; Nova ignores them).
        # With the row there, nova-compute also wants its node identity file
        # (what its first start would have written to state_path).
        self.seed([{"op": "service", "host": self.compute_host}])
        (self.state_dir / "nova" / "compute_id").write_text(str(uuidlib.uuid4()) + "\n")
        for service in (self.conductor, self.scheduler, self.compute):
            service.start()

    def _wait_compute(self, deadline: float) -> None:
        """Until nova-compute has its compute node and resource provider."""
        assert self.compute is not None
        while True:
            for service in (self.compute, self.conductor, self.scheduler):
                assert service is not None
                service.check_alive()
            log_text = self.compute.log_path.read_text(errors="replace")
            if " CRITICAL nova " in log_text:
                raise CloudStartError(
                    f"nova-compute failed to start; log {self.compute.log_path}:\n"
                    f"{_tail(self.compute.log_path)}"
                )
            status, payload = self.placement_api("GET", "/resource_providers")
            if status == 200 and payload.get("resource_providers"):
                return
            if time.monotonic() > deadline:
                log = self.compute.log_path
                raise CloudStartError(
                    f"nova-compute registered no resource provider; log {log}:\n{_tail(log)}"
                )
            time.sleep(0.5)

    # ----------------------------------------------------------------- API helpers
    def _call(
        self,
        base: str,
        method: str,
        path: str,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = 60,
    ) -> Tuple[int, Any]:
        hdrs = {"X-Auth-Token": self.token(), **(headers or {})}
        status, _, payload = _http(method, base + path, body, headers=hdrs, timeout=timeout)
        return status, payload

    def api(
        self, method: str, path: str, body: Any = None, microversion: str = MICROVERSION
    ) -> Tuple[int, Any]:
        """Call the compute API as admin; returns ``(status, json)``."""
        return self._call(
            self.nova_url,
            method,
            path,
            body,
            {"OpenStack-API-Version": f"compute {microversion}"},
        )

    def placement_api(self, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
        return self._call(
            self.placement_url, method, path, body, {"OpenStack-API-Version": "placement 1.6"}
        )

    def _ok(self, status: int, payload: Any, what: str, ok: Tuple[int, ...]) -> Any:
        if status not in ok:
            raise NovaApiError(f"{what}: HTTP {status} {str(payload)[:500]}")
        return payload

    def flavor(
        self,
        name: str,
        extra_specs: Optional[Mapping[str, str]] = None,
        *,
        ram: int = 512,
        disk: int = 1,
        vcpus: int = 1,
    ) -> str:
        """Create a public flavor through the API (with extra specs); its id."""
        status, payload = self.api(
            "POST",
            "/flavors",
            {"flavor": {"name": name, "ram": ram, "disk": disk, "vcpus": vcpus}},
        )
        flavor_id = self._ok(status, payload, f"create flavor {name}", (200,))["flavor"]["id"]
        if extra_specs:
            status, payload = self.api(
                "POST", f"/flavors/{flavor_id}/os-extra_specs", {"extra_specs": dict(extra_specs)}
            )
            self._ok(status, payload, f"extra specs of {name}", (200,))
        return str(flavor_id)

    def upload_image(
        self,
        name: str,
        path: "str | os.PathLike[str]",
        *,
        disk_format: str,
        container_format: str,
        properties: Optional[Mapping[str, str]] = None,
    ) -> str:
        """Create a public Glance v2 image and upload ``path`` into it; its id."""
        body: Dict[str, Any] = {
            "name": name,
            "disk_format": disk_format,
            "container_format": container_format,
            "visibility": "public",
            **dict(properties or {}),
        }
        status, payload = self._call(self.glance_url, "POST", "/v2/images", body)
        image_id = self._ok(status, payload, f"create image {name}", (201,))["id"]
        size = os.path.getsize(path)
        with open(path, "rb") as data:
            req = urllib.request.Request(
                f"{self.glance_url}/v2/images/{image_id}/file", data=data, method="PUT"
            )
            req.add_header("X-Auth-Token", self.token())
            req.add_header("Content-Type", "application/octet-stream")
            req.add_header("Content-Length", str(size))
            try:
                with urllib.request.urlopen(req, timeout=600) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300]
                raise NovaApiError(f"upload of {name}: HTTP {exc.code} {detail!r}") from None
        return str(image_id)

    def upload_test_guest(
        self,
        image_dir: "str | os.PathLike[str]",
        name: str = "gha-test-guest",
        *,
        cmdline_extra: str = "",
        qemu_guest_agent: bool = True,
    ) -> str:
        """Upload the baked test guest (kernel, initrd, root filesystem, as AMI
        style images) from ``image_dir`` (``.cache/guest-image/out``); return
        the root image's id.  ``qemu_guest_agent`` sets ``hw_qemu_guest_agent``,
        which makes Nova give the domain a virtio-serial controller."""
        import json

        out = Path(image_dir)
        manifest = json.loads((out / "manifest.json").read_text())
        aki = self.upload_image(
            name + "-kernel",
            out / manifest["kernel"],
            disk_format="aki",
            container_format="aki",
        )
        ari = self.upload_image(
            name + "-ramdisk",
            out / manifest["initrd"],
            disk_format="ari",
            container_format="ari",
        )
        props = {
            "kernel_id": aki,
            "ramdisk_id": ari,
            "os_command_line": f"{manifest['cmdline']} {cmdline_extra}".strip(),
        }
        if qemu_guest_agent:
            props["hw_qemu_guest_agent"] = "yes"
        root = out / manifest["rootfs"]
        return self.upload_image(
            name, root, disk_format="ami", container_format="ami", properties=props
        )

    def server_group(self, name: str, policy: str = "affinity") -> str:
        """Create a server group through the API (one host here: ``affinity`` or
        ``soft-anti-affinity``); its id."""
        status, payload = self.api(
            "POST", "/os-server-groups", {"server_group": {"name": name, "policy": policy}}
        )
        return str(self._ok(status, payload, f"server group {name}", (200,))["server_group"]["id"])

    def boot(self, name: str, flavor_id: str, image_id: str, *, group: Optional[str] = None) -> str:
        """``POST /servers`` with ``networks: none`` (and the ``group`` hint); its id."""
        body: Dict[str, Any] = {
            "server": {
                "name": name,
                "imageRef": image_id,
                "flavorRef": flavor_id,
                "networks": "none",
            }
        }
        if group:
            body["os:scheduler_hints"] = {"group": group}
        status, payload = self.api("POST", "/servers", body)
        uuid = str(self._ok(status, payload, f"boot {name}", (202,))["server"]["id"])
        self.booted.append(uuid)
        return uuid

    def server(self, uuid: str) -> Dict[str, Any]:
        status, payload = self.api("GET", f"/servers/{uuid}")
        return dict(self._ok(status, payload, f"GET server {uuid}", (200,))["server"])

    def wait_status(self, uuid: str, status: str, timeout: float = 120) -> Dict[str, Any]:
        """Poll until the server has ``status`` and no task state; raise on ERROR."""
        deadline = time.monotonic() + timeout
        while True:
            server = self.server(uuid)
            if server["status"] == status and not server.get("OS-EXT-STS:task_state"):
                return server
            if server["status"] == "ERROR" and status != "ERROR":
                raise NovaApiError(f"server {uuid} went to ERROR: {server.get('fault')}")
            if time.monotonic() > deadline:
                raise NovaApiError(
                    f"server {uuid} still {server['status']}/"
                    f"{server.get('OS-EXT-STS:task_state')} after {timeout} s, wanted {status}"
                )
            time.sleep(0.3)

    def action(self, uuid: str, body: Mapping[str, Any]) -> None:
        """``POST /servers/{uuid}/action``."""
        status, payload = self.api("POST", f"/servers/{uuid}/action", dict(body))
        self._ok(status, payload, f"action {list(body)} on {uuid}", (200, 202, 204))

    def delete(self, uuid: str, wait: float = 60) -> None:
        status, payload = self.api("DELETE", f"/servers/{uuid}")
        self._ok(status, payload, f"delete {uuid}", (204, 404))
        deadline = time.monotonic() + wait
        while self.api("GET", f"/servers/{uuid}")[0] != 404:
            if time.monotonic() > deadline:
                raise NovaApiError(f"server {uuid} not gone after {wait} s")
            time.sleep(0.3)

    @property
    def name_tag(self) -> str:
        """This cloud's part of its domains' names (``instance_name_template``)."""
        return self.compute_host[-6:]

    @property
    def domain_names(self) -> str:
        """The compute agent's ``libvirt.domain_names`` pattern for this cloud's
        domains: agents of other clouds on the shared libvirtd leave them alone."""
        return f"instance-{self.name_tag}-*"

    def agent_config(
        self, clouds_yaml: str, *, spool_dir: Optional[str] = None, nova_cloud: Optional[str] = None
    ) -> Dict[str, Any]:
        """The compute agent's settings (beyond ``heartbeat``) for nova mode on
        this cloud: its own domains only, Nova's names from ``clouds_yaml``, and,
        with ``spool_dir``, fault reports to this cloud's RabbitMQ."""
        libvirt: Dict[str, Any] = {
            "enabled": True,
            "mode": "nova",
            "domain_names": self.domain_names,
            "nova_clouds_yaml": clouds_yaml,
            "nova_interface": "public",
            # Nova destroys domains on hard reboot, stop and delete.
            "destroyed_is_fault": False,
        }
        if nova_cloud is not None:
            libvirt["nova_cloud"] = nova_cloud
        config: Dict[str, Any] = {"libvirt": libvirt}
        if spool_dir is not None:
            config["controller"] = {
                "enabled": True,
                "transport_url": self.rabbit_url,
                "messaging_config": None,
                "spool_dir": spool_dir,
                "host": self.compute_host,
            }
        return config

    def instance_name(self, uuid: str) -> str:
        """The libvirt domain name Nova gave the server (``instance-%08x``)."""
        return str(self.server(uuid)["OS-EXT-SRV-ATTR:instance_name"])

    def console_log(self, uuid: str, length: Optional[int] = 200) -> str:
        """The server's serial console log (``os-getConsoleOutput``): its last
        ``length`` lines, or all of it with ``length=None``."""
        args = {} if length is None else {"length": length}
        status, payload = self.api("POST", f"/servers/{uuid}/action", {"os-getConsoleOutput": args})
        if status != 200:
            return f"(console: HTTP {status})"
        return str(payload.get("output", ""))


@contextlib.contextmanager
def _timed(timings: Dict[str, float], key: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[key] = round(time.monotonic() - started, 2)


def nova_cloud_fixture(scope: str = "session", name: Optional[str] = None, **kwargs: Any) -> Any:
    """A pytest fixture yielding a started ``NovaCloud`` (stopped at scope end)."""
    import pytest

    def _cloud() -> Iterator[NovaCloud]:
        with NovaCloud(**kwargs) as cloud:
            yield cloud

    if name is not None:
        return pytest.fixture(scope=scope, name=name)(_cloud)  # type: ignore[call-overload]
    return pytest.fixture(scope=scope)(_cloud)  # type: ignore[call-overload]
