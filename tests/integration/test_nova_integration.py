"""Against the real Keystone and nova-api started by guest_ha_dev.testing.openstack
(servers are seeded with Nova's own objects; Neutron's two read calls are
answered by a named local stand-in, see that module):

- the compute agent's Nova opt-in reads the flavor extra spec through the real
  Nova API and caches it per flavor;
- the controller's ``nova`` reporter puts a faulty server in ERROR with
  ``os-resetState`` and, optionally, back to ACTIVE on recovery.
"""

from __future__ import annotations

import uuid as uuidlib

import pytest

pytest.importorskip("keystoneauth1")

from guest_ha.cloud_session import session_from_clouds_yaml
from guest_ha.compute.nova import NovaFlavorOptIn, NovaLookupError
from guest_ha.controller.reporters import ReporterError
from guest_ha.controller.reporters.nova import NovaReporter
from guest_ha_dev.testing.openstack import openstack_fixture

pytestmark = pytest.mark.integration

cloud = openstack_fixture(scope="module")

HOST = "compute-1"


def nova_domain(uuid: str, flavor: str) -> str:
    """A domain as Nova (before 2025.1) writes it: flavor name, no extra specs."""
    return f"""<domain type='kvm'><name>instance-00000001</name><uuid>{uuid}</uuid>
<metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>vnf</nova:name><nova:flavor name="{flavor}"><nova:memory>512</nova:memory>
</nova:flavor></nova:instance></metadata><devices/></domain>"""


@pytest.fixture(scope="module")
def seeded(cloud):
    cloud.create_host(HOST)
    cloud.create_flavor("ha.small", {"guest_ha:heartbeat": "true"})
    cloud.create_flavor("plain.small", {})
    servers = {
        "ha1": str(uuidlib.uuid4()),
        "ha2": str(uuidlib.uuid4()),
        "plain": str(uuidlib.uuid4()),
    }
    cloud.create_server(servers["ha1"], "ha1", "ha.small", HOST)
    cloud.create_server(servers["ha2"], "ha2", "ha.small", HOST)
    cloud.create_server(servers["plain"], "plain", "plain.small", HOST)
    return servers


def test_flavor_extra_spec_opt_in_through_the_nova_api(cloud, seeded, tmp_path) -> None:
    """Seeded rows: flavors and servers written with ``nova.objects``, for domain
    XML in the format of Nova before 2025.1 (flavor name, no ``<nova:extraSpecs>``),
    which the real Nova 34 here no longer writes."""
    clouds = cloud.clouds_yaml(tmp_path / "clouds.yaml")
    session = session_from_clouds_yaml(str(clouds), "guest-ha")
    optin = NovaFlavorOptIn(session, interface="public")
    assert optin.heartbeat_enabled(nova_domain(seeded["ha1"], "ha.small")) == (
        True,
        "flavor ha.small (Nova API)",
    )
    # Another server of the same flavor: answered from the per-flavor cache.
    assert optin.heartbeat_enabled(nova_domain(seeded["ha2"], "ha.small"))[0] is True
    assert optin.api_calls == 1
    assert optin.heartbeat_enabled(nova_domain(seeded["plain"], "plain.small"))[0] is False
    with pytest.raises(NovaLookupError, match="404"):
        optin.heartbeat_enabled(nova_domain(str(uuidlib.uuid4()), "gone.flavor"))


def test_bad_credentials_are_a_clear_error(cloud, seeded, tmp_path) -> None:
    """Seeded rows: server ``ha1`` (as above: the pre-2025.1 domain XML path)."""
    clouds = cloud.clouds_yaml(tmp_path / "clouds.yaml")
    text = clouds.read_text().replace(cloud.admin_password, "wrong-password")
    clouds.write_text(text)
    optin = NovaFlavorOptIn(session_from_clouds_yaml(str(clouds), "guest-ha"), interface="public")
    with pytest.raises(NovaLookupError):
        optin.heartbeat_enabled(nova_domain(seeded["ha1"], "ha.small"))


def server_status(cloud, uuid: str) -> str:
    response = cloud.session().get(
        f"/servers/{uuid}",
        endpoint_filter={"service_type": "compute", "interface": "public"},
    )
    return response.json()["server"]["status"]


def test_nova_reporter_sets_error_and_back_to_active(cloud, seeded) -> None:
    """Seeded rows: server ``ha2``.  The real flow (frozen booted guest -> ERROR ->
    ACTIVE) is ``tests/e2e/nova/test_nova_agent.py::test_sigstop_sets_server_error_then_active``;
    this one covers what that flow cannot provoke: a repeated delivery, and
    recovery without ``reset_on_recovery``."""
    reporter = NovaReporter(cloud.session(), reset_on_recovery=True)
    uuid = seeded["ha2"]
    event = {"instance_uuid": uuid, "kind": "heartbeat_lost", "fault": True}
    reporter.report(event)
    assert server_status(cloud, uuid) == "ERROR"
    reporter.report(event)  # a repeated delivery is harmless
    assert server_status(cloud, uuid) == "ERROR"
    reporter.report({"instance_uuid": uuid, "kind": "recovered", "fault": False})
    assert server_status(cloud, uuid) == "ACTIVE"
    # Without reset_on_recovery, recovery leaves the state to the VNF manager.
    NovaReporter(cloud.session()).report(event)
    NovaReporter(cloud.session()).report({"instance_uuid": uuid, "kind": "recovered"})
    assert server_status(cloud, uuid) == "ERROR"


def test_nova_reporter_unknown_server_is_permanent(cloud, seeded) -> None:
    """Seeded rows: the module's host and servers (the server asked for is not one)."""
    reporter = NovaReporter(cloud.session())
    with pytest.raises(ReporterError) as info:
        reporter.report(
            {"instance_uuid": str(uuidlib.uuid4()), "kind": "heartbeat_lost", "fault": True}
        )
    assert info.value.retryable is False
