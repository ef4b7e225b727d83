"""keystoneauth1 sessions built from a ``clouds.yaml`` entry.

Both agents call OpenStack APIs (the compute agent asks Nova for opt-in, the
controller's reporters and server-group membership call Nova, Vitrage and
Masakari); this leaf module is what they share, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

import yaml


class CloudConfigError(RuntimeError):
    """The ``clouds.yaml`` entry cannot be read or used."""


def session_from_clouds_yaml(path: str, cloud: str) -> Any:
    """A keystoneauth1 Session for ``cloud`` in the ``clouds.yaml`` at ``path``."""
    try:
        from keystoneauth1 import loading, session
    except ImportError as exc:
        raise CloudConfigError(
            "OpenStack calls need keystoneauth1 (pip install keystoneauth1)"
        ) from exc
    try:
        with open(path, encoding="utf-8") as fh:
            clouds = (yaml.safe_load(fh) or {}).get("clouds", {})
    except (OSError, yaml.YAMLError) as exc:
        raise CloudConfigError(f"cannot read {path}: {exc}") from None
    entry = clouds.get(cloud)
    if not isinstance(entry, dict) or "auth" not in entry:
        raise CloudConfigError(f"{path}: no cloud {cloud!r} with an 'auth' section")
    loader: Any = loading.get_plugin_loader(entry.get("auth_type", "password"))
    auth = loader.load_from_options(**entry["auth"])
    return session.Session(auth=auth, verify=entry.get("verify", True))


class ComputeApiError(RuntimeError):
    """Nova could not be asked, or did not answer 200."""


def compute_get(session: Any, path: str, *, interface: str, region: Any, microversion: str) -> Any:
    """GET ``path`` from the catalog's compute endpoint at ``microversion``; the
    decoded JSON body of a 200 answer, else ``ComputeApiError``."""
    try:
        response = session.get(
            path,
            endpoint_filter={
                "service_type": "compute",
                "interface": interface,
                "region_name": region,
            },
            headers={"OpenStack-API-Version": f"compute {microversion}"},
            raise_exc=False,
        )
    except Exception as exc:  # keystoneauth1 raises many kinds; all mean "cannot ask"
        raise ComputeApiError(f"Nova GET {path} failed: {exc}") from None
    if response.status_code != 200:
        raise ComputeApiError(f"Nova answered {response.status_code} for GET {path}")
    return response.json()
