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
