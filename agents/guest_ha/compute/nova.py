"""Opt-in from Nova: the flavor extra spec ``guest_ha:heartbeat``.

Recent Nova releases write the flavor's extra specs into the domain metadata,
which is read first (no API call). Otherwise the server is looked up in the
Nova API (microversion 2.47+ embeds the flavor with its extra specs) and the
answer is cached per flavor, since every server of a flavor answers the same.
Authentication uses a keystoneauth1 session (``guest_ha.cloud_session``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..cloud_session import ComputeApiError, compute_get
from . import domain_xml

LOG = logging.getLogger("guest_ha.compute.nova")

COMPUTE_MICROVERSION = "2.47"


class NovaLookupError(RuntimeError):
    """Nova could not be asked (auth, catalog, network or an unexpected answer)."""


@dataclass
class _Cached:
    value: domain_xml.OptIn
    expires: float


class NovaFlavorOptIn:
    """Answers "does this instance's flavor ask for heartbeating?"."""

    def __init__(
        self,
        session: Any,
        *,
        region: Optional[str] = None,
        interface: str = "internal",
        cache_ttl_s: float = 300.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.session = session
        self.region = region
        self.interface = interface
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._cache: Dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self.api_calls = 0

    def heartbeat_enabled(self, xml: str) -> Tuple[bool, str]:
        """Whether the domain opted in to heartbeating, and where the answer came from."""
        opt, source = self.opt_in(xml)
        return opt.heartbeat, source

    def opt_in(self, xml: str) -> Tuple[domain_xml.OptIn, str]:
        """What the domain's flavor asks for (heartbeat, server group messaging)."""
        meta = domain_xml.nova_metadata(xml)
        if meta is None or not meta.instance_uuid:
            return domain_xml.OptIn(), "not a Nova instance"
        if meta.extra_specs:
            return meta.opt_in(), "domain metadata"
        key = meta.flavor_name or meta.instance_uuid
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached.expires > self.clock():
                return cached.value, f"flavor {key} (cached)"
        extra_specs = self._server_extra_specs(meta.instance_uuid)
        value = domain_xml.opt_in_from_extra_specs(extra_specs)
        with self._lock:
            self._cache[key] = _Cached(value, self.clock() + self.cache_ttl_s)
        return value, f"flavor {key} (Nova API)"

    def _server_extra_specs(self, instance_uuid: str) -> Dict[str, str]:
        self.api_calls += 1
        try:
            body = compute_get(
                self.session,
                f"/servers/{instance_uuid}",
                interface=self.interface,
                region=self.region,
                microversion=COMPUTE_MICROVERSION,
            )
        except ComputeApiError as exc:
            raise NovaLookupError(f"Nova lookup of {instance_uuid}: {exc}") from None
        flavor = body.get("server", {}).get("flavor", {})
        specs = flavor.get("extra_specs")
        if not isinstance(specs, dict):
            raise NovaLookupError("Nova's answer has no flavor.extra_specs (microversion < 2.47?)")
        return {str(k): str(v) for k, v in specs.items()}
