"""Where membership comes from: Nova's API (``nova``) or a YAML file (``file``)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Set, Tuple

from ...cloud_session import ComputeApiError, compute_get
from .membership import (
    NOVA_MICROVERSION,
    canonical_uuid,
    status_from_server,
)

LOG = logging.getLogger("guest_ha.controller.sg")


class MembershipError(RuntimeError):
    """The membership source could not be read."""


class NovaSource:
    """Groups and server states from the Nova API (admin, all projects)."""

    kind = "nova"

    def __init__(
        self,
        session: Any,
        *,
        region: Optional[str] = None,
        interface: str = "public",
        page_size: int = 1000,
    ) -> None:
        self.session = session
        self.region = region
        self.interface = interface
        self.page_size = page_size
        self.api_calls = 0

    def _get(self, path: str) -> Dict[str, Any]:
        self.api_calls += 1
        try:
            return compute_get(
                self.session,
                path,
                interface=self.interface,
                region=self.region,
                microversion=NOVA_MICROVERSION,
            )
        except ComputeApiError as exc:
            raise MembershipError(str(exc)) from None

    def groups(self) -> Tuple[Dict[str, Set[str]], Dict[str, str]]:
        groups: Dict[str, Set[str]] = {}
        names: Dict[str, str] = {}
        offset = 0
        while True:
            page = self._get(
                f"/os-server-groups?all_projects=True&limit={self.page_size}&offset={offset}"
            ).get("server_groups", [])
            for group in page:
                key = str(group["id"])
                groups[key] = {u for u in map(canonical_uuid, group.get("members") or []) if u}
                names[key] = str(group.get("name") or key)
            if len(page) < self.page_size:
                return groups, names
            offset += len(page)

    def servers(self, only: Optional[Set[str]] = None) -> Dict[str, Dict[str, Any]]:
        statuses: Dict[str, Dict[str, Any]] = {}
        marker = ""
        while True:
            path = f"/servers/detail?all_tenants=1&limit={self.page_size}"
            page = self._get(path + (f"&marker={marker}" if marker else "")).get("servers", [])
            for server in page:
                uuid = canonical_uuid(server.get("id"))
                if uuid and (only is None or uuid in only):
                    statuses[uuid] = status_from_server(server)
            if len(page) < self.page_size:
                return statuses
            marker = str(page[-1]["id"])

    def server(self, uuid: str) -> Optional[Dict[str, Any]]:
        try:
            body = self._get(f"/servers/{uuid}")
        except MembershipError as exc:
            if "answered 404" in str(exc):
                return None
            raise
        return status_from_server(body.get("server", {}))

    def load(self) -> Tuple[Dict[str, Set[str]], Dict[str, str], Optional[Dict[str, Any]]]:
        groups, names = self.groups()
        wanted = set().union(*groups.values()) if groups else set()
        statuses = self.servers(wanted) if wanted else {}
        return groups, names, statuses


class FileSource:
    """Standalone groups from a YAML file ``groups: {name: [instance uuid, ...]}``."""

    kind = "file"

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def load(self) -> Tuple[Dict[str, Set[str]], Dict[str, str], Optional[Dict[str, Any]]]:
        if not self.path:
            return {}, {}, None
        import yaml

        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            return {}, {}, None
        except (OSError, yaml.YAMLError) as exc:
            raise MembershipError(f"cannot read {self.path}: {exc}") from None
        raw = doc.get("groups") if isinstance(doc, dict) else None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise MembershipError(f"{self.path}: 'groups' must map a name to a list of uuids")
        groups: Dict[str, Set[str]] = {}
        for name, members in raw.items():
            if not isinstance(members, list):
                raise MembershipError(f"{self.path}: group {name!r} is not a list")
            uuids = set()
            for m in members:
                u = canonical_uuid(m)
                if u is None:
                    raise MembershipError(f"{self.path}: group {name!r}: {m!r} is not a UUID")
                uuids.add(u)
            groups[str(name)] = uuids
        return groups, {k: k for k in groups}, None
