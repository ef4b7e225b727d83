"""Nova flavor opt-in logic. The session is a recording double of the narrow
keystoneauth1 interface used (``get``); the real Nova API is exercised in the
integration tier."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from guest_ha.compute.nova import NovaFlavorOptIn, NovaLookupError

pytestmark = pytest.mark.unit

UUID = "6f1c2b8e-3a43-4d5e-9a55-0c1f4a9b7d21"


def nova_domain(flavor: str, extra_specs: Dict[str, str] | None = None) -> str:
    specs = ""
    if extra_specs:
        specs = (
            "<nova:extraSpecs>"
            + "".join(
                f'<nova:extraSpec name="{k}">{v}</nova:extraSpec>' for k, v in extra_specs.items()
            )
            + "</nova:extraSpecs>"
        )
    return f"""<domain type='kvm'><name>instance-0001</name><uuid>{UUID}</uuid>
<metadata><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
<nova:name>vnf-a</nova:name><nova:flavor name="{flavor}"><nova:memory>512</nova:memory>
{specs}</nova:flavor></nova:instance></metadata><devices/></domain>"""


class Response:
    def __init__(self, status: int, body: Dict[str, Any]) -> None:
        self.status_code = status
        self._body = body

    def json(self) -> Dict[str, Any]:
        return self._body


class Session:
    def __init__(self, responses: List[Response]) -> None:
        self.responses = responses
        self.calls: List[Dict[str, Any]] = []

    def get(self, url: str, **kwargs: Any) -> Response:
        self.calls.append({"url": url, **kwargs})
        return self.responses.pop(0)


def server(extra_specs: Dict[str, str]) -> Response:
    return Response(200, {"server": {"id": UUID, "flavor": {"extra_specs": extra_specs}}})


def test_extra_specs_in_domain_metadata_need_no_api_call() -> None:
    session = Session([])
    optin = NovaFlavorOptIn(session)
    xml = nova_domain("m1.ha", {"guest_ha:heartbeat": "true"})
    assert optin.heartbeat_enabled(xml) == (True, "domain metadata")
    assert session.calls == []


def test_api_lookup_is_cached_per_flavor() -> None:
    now = [0.0]
    session = Session([server({"guest_ha:heartbeat": "True"}), server({})])
    optin = NovaFlavorOptIn(session, cache_ttl_s=60, clock=lambda: now[0])
    assert optin.heartbeat_enabled(nova_domain("m1.ha"))[0] is True
    assert optin.heartbeat_enabled(nova_domain("m1.ha")) == (True, "flavor m1.ha (cached)")
    assert len(session.calls) == 1
    call = session.calls[0]
    assert call["url"] == f"/servers/{UUID}"
    assert call["headers"]["OpenStack-API-Version"] == "compute 2.47"
    assert call["endpoint_filter"]["service_type"] == "compute"
    now[0] = 61.0
    assert optin.heartbeat_enabled(nova_domain("m1.ha"))[0] is False  # expired: asked again


def test_lookup_errors_are_typed() -> None:
    optin = NovaFlavorOptIn(Session([Response(404, {"itemNotFound": {}})]))
    with pytest.raises(NovaLookupError, match="404"):
        optin.heartbeat_enabled(nova_domain("m1.small"))
    old = NovaFlavorOptIn(Session([Response(200, {"server": {"flavor": {"id": "1"}}})]))
    with pytest.raises(NovaLookupError, match="microversion"):
        old.heartbeat_enabled(nova_domain("m1.small"))


def test_non_nova_domain_is_not_opted_in() -> None:
    xml = f"<domain><name>plain</name><uuid>{UUID}</uuid><devices/></domain>"
    assert NovaFlavorOptIn(Session([])).heartbeat_enabled(xml) == (False, "not a Nova instance")
