"""The real-OpenStack fixture: Keystone 30 and nova-api 34 on loopback.

One cloud per module (install is cached under .cache/openstack; start takes
tens of seconds).  Every call below goes through the real Keystone and the real
nova-api with a real Keystone token; only Neutron is a stand-in (see
docs/testing-openstack.md).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Dict

import pytest

from guest_ha_dev.testing.openstack import OpenStackCloud, openstack_fixture

pytestmark = pytest.mark.integration

ks_session = pytest.importorskip(
    "keystoneauth1.session", reason="keystoneauth1 is needed in the project venv"
)

cloud = openstack_fixture(scope="module")

COMPUTE = {"service_type": "compute", "interface": "public", "region_name": "RegionOne"}
MV_271 = {"OpenStack-API-Version": "compute 2.71"}


@pytest.fixture(scope="module")
def sess(cloud: OpenStackCloud) -> Any:
    return cloud.session()


@pytest.fixture(scope="module")
def seeded(cloud: OpenStackCloud) -> Dict[str, Any]:
    flavor = cloud.create_flavor(
        "gha.small", {"guest_ha:heartbeat": "true", "guest_ha:server_group_messaging": "true"}
    )
    group = cloud.create_server_group("gha-group", "anti-affinity")
    servers = [str(uuid.uuid4()), str(uuid.uuid4())]
    cloud.create_server(servers[0], "vm-a", "gha.small", "compute-1", server_group=group["uuid"])
    cloud.create_server(servers[1], "vm-b", "gha.small", "compute-2", server_group="gha-group")
    return {"flavor": flavor, "group": group, "servers": servers}


def test_keystone_token_and_catalog(cloud: OpenStackCloud, sess: Any) -> None:
    token = sess.get_token()
    assert token
    access = sess.auth.get_access(sess)
    assert access.project_name == "admin"
    assert "admin" in access.role_names
    types = {entry["type"]: entry for entry in access.service_catalog.catalog}
    assert {"identity", "compute"} <= set(types)
    compute_urls = {e["interface"]: e["url"] for e in types["compute"]["endpoints"]}
    assert compute_urls["public"] == cloud.nova_url
    assert sess.get_endpoint(**COMPUTE) == cloud.nova_url
    # The token is a real Keystone token: Keystone itself validates it.
    resp = sess.get(
        cloud.auth_url + "/auth/tokens", headers={"X-Subject-Token": token}, authenticated=True
    )
    assert resp.status_code == 200


def test_server_shows_extra_specs_and_groups(sess: Any, seeded: Dict[str, Any]) -> None:
    """Seeded rows (``seeded``): this is the seeding helpers' own test."""
    server_id = seeded["servers"][0]
    resp = sess.get(f"/servers/{server_id}", endpoint_filter=COMPUTE, headers=MV_271)
    assert resp.status_code == 200, resp.text
    assert resp.headers["OpenStack-API-Version"] == "compute 2.71"
    server = resp.json()["server"]
    assert server["id"] == server_id
    assert server["status"] == "ACTIVE"
    assert server["OS-EXT-SRV-ATTR:host"] == "compute-1"
    assert server["flavor"]["original_name"] == "gha.small"
    assert server["flavor"]["extra_specs"] == {
        "guest_ha:heartbeat": "true",
        "guest_ha:server_group_messaging": "true",
    }
    assert server["server_groups"] == [seeded["group"]["uuid"]]


def test_neutron_stand_in_was_asked(cloud: OpenStackCloud, seeded: Dict[str, Any]) -> None:
    """Seeded rows (``seeded``): this is the seeding helpers' own test."""
    assert cloud.neutron is not None
    asked = [path for _, path in cloud.neutron.requests]
    assert any(p.startswith("/v2.0/ports") for p in asked), asked


def test_server_groups_all_projects_lists_members(sess: Any, seeded: Dict[str, Any]) -> None:
    """Seeded rows (``seeded``): this is the seeding helpers' own test."""
    resp = sess.get("/os-server-groups?all_projects=True", endpoint_filter=COMPUTE, headers=MV_271)
    assert resp.status_code == 200, resp.text
    groups = {g["id"]: g for g in resp.json()["server_groups"]}
    group = groups[seeded["group"]["uuid"]]
    assert group["name"] == "gha-group"
    assert group["policy"] == "anti-affinity"
    assert sorted(group["members"]) == sorted(seeded["servers"])


def test_reset_state_to_error(sess: Any, seeded: Dict[str, Any]) -> None:
    """Seeded rows (``seeded``): this is the seeding helpers' own test."""
    server_id = seeded["servers"][1]
    resp = sess.post(
        f"/servers/{server_id}/action",
        endpoint_filter=COMPUTE,
        json={"os-resetState": {"state": "error"}},
    )
    assert resp.status_code == 202, resp.text
    server = sess.get(f"/servers/{server_id}", endpoint_filter=COMPUTE, headers=MV_271).json()[
        "server"
    ]
    assert server["status"] == "ERROR"
    assert server["OS-EXT-STS:vm_state"] == "error"


def test_unauthenticated_request_is_rejected(cloud: OpenStackCloud, seeded: Dict[str, Any]) -> None:
    """Seeded rows (``seeded``): this is the seeding helpers' own test."""
    server_id = seeded["servers"][0]
    plain = ks_session.Session()  # no auth plugin: no token is sent
    resp = plain.get(f"{cloud.nova_url}/servers/{server_id}", raise_exc=False)
    assert resp.status_code == 401
    # A forged token is rejected by keystonemiddleware too.
    resp = plain.get(
        f"{cloud.nova_url}/servers/{server_id}",
        raise_exc=False,
        headers={"X-Auth-Token": "gAAAAAforged"},
    )
    assert resp.status_code == 401


def test_clouds_yaml_is_usable(cloud: OpenStackCloud, tmp_path: Any) -> None:
    path = cloud.clouds_yaml(tmp_path / "clouds.yaml", cloud_name="gha")
    doc = json.loads(path.read_text())
    auth = doc["clouds"]["gha"]["auth"]
    assert auth["auth_url"] == cloud.auth_url
    from keystoneauth1.identity import v3

    sess = ks_session.Session(auth=v3.Password(**auth))
    assert sess.get_endpoint(**COMPUTE) == cloud.nova_url


def test_processes_run_under_their_pids(cloud: OpenStackCloud) -> None:
    pids = cloud.pids()
    assert set(pids) == {"keystone", "nova-api"}
    for pid in pids.values():
        os.kill(pid, 0)  # alive, ours


def test_stop_ends_processes_and_removes_state() -> None:
    """A second, separate cloud: stop() kills what it started and cleans up."""
    own = OpenStackCloud(nova_auth="headers").start()
    try:
        pids = list(own.pids().values())
        state = own.state_dir
        assert state is not None and state.is_dir()
        # Header-trust mode: no token at all, identity from X-* headers.
        own.create_flavor("hdr.small", {"guest_ha:heartbeat": "true"})
        server_id = str(uuid.uuid4())
        own.create_server(server_id, "vm-h", "hdr.small", "compute-9")
        plain = ks_session.Session()
        resp = plain.get(
            f"{own.nova_url}/servers/{server_id}",
            raise_exc=False,
            headers={
                "X-User-Id": own.admin_user_id,
                "X-Project-Id": own.admin_project_id,
                "X-Roles": "admin,member,reader",
                **MV_271,
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["server"]["flavor"]["extra_specs"] == {"guest_ha:heartbeat": "true"}
    finally:
        own.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not state.exists()
