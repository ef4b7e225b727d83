#!/usr/bin/env python3
"""Build the Ansible collection ``guest_ha.guest_ha`` from this repository.

Usage::

    python3 scripts/build_collection.py [--out DIR] [--tree-only]

The repository keeps its own layout (``roles/``, ``playbooks/``, ``library/``,
``module_utils/``); what a collection needs is generated here, in
``DIR/ansible_collections/guest_ha/guest_ha/`` (default ``DIR`` is
``build/collection``):

- ``galaxy.yml`` (version from ``pyproject.toml``, dependencies from
  ``requirements.yml``), ``meta/runtime.yml`` and a short ``README.md``;
- ``plugins/modules/`` and ``plugins/module_utils/`` from ``library/`` and
  ``module_utils/`` (the module imports its module_utils by the collection
  path, falling back to the plain ``module_utils`` path when run from here);
- ``roles/`` without their Molecule scenarios, and ``playbooks/``;
- ``tests/sanity/ignore-X.Y.txt``: the one accepted ``ansible-test sanity``
  finding (guest-ha is Apache-2.0, not GPLv3 like ansible-core).

Then ``ansible-galaxy collection build`` writes the tarball into ``DIR``;
its path is the last line printed. ``--tree-only`` stops after the tree
(``scripts/ansible_quality.sh`` runs ``ansible-test sanity`` on it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "guest_ha"
NAME = "guest_ha"
DEFAULT_OUT = os.path.join(REPO, "build", "collection")


def project_version() -> str:
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as fh:
        match = re.search(r'^version\s*=\s*"([^"]+)"', fh.read(), re.MULTILINE)
    if not match:
        raise SystemExit("pyproject.toml has no version")
    return match.group(1)


def collection_dependencies() -> dict:
    with open(os.path.join(REPO, "requirements.yml"), encoding="utf-8") as fh:
        wanted = yaml.safe_load(fh) or {}
    return {c["name"]: str(c.get("version", "*")) for c in wanted.get("collections", [])}


def ansible_core_minor() -> str:
    from ansible.release import __version__

    return ".".join(__version__.split(".")[:2])


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def build_tree(out: str) -> str:
    """Generate the collection tree under ``out``; return its root."""
    root = os.path.join(out, "ansible_collections", NAMESPACE, NAME)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    galaxy = {
        "namespace": NAMESPACE,
        "name": NAME,
        "version": project_version(),
        "readme": "README.md",
        "authors": ["guest-ha contributors"],
        "description": (
            "Deploy guest-ha (OPNFV HA Guest APIs over virtio-serial): the guest_ha_channel "
            "module and the guest, compute, controller, rabbitmq and aio roles."
        ),
        "license": ["Apache-2.0"],
        "tags": ["nfv", "ha", "libvirt", "openstack"],
        "dependencies": collection_dependencies(),
        "build_ignore": ["tests/output"],
    }
    _write(os.path.join(root, "galaxy.yml"), yaml.safe_dump(galaxy, sort_keys=False))
    _write(os.path.join(root, "meta", "runtime.yml"), '---\nrequires_ansible: ">=2.15.0"\n')
    _write(
        os.path.join(root, "README.md"),
        "# guest_ha.guest_ha\n\n"
        "The Ansible content of guest-ha, built from its repository by\n"
        "`scripts/build_collection.py`: module `guest_ha.guest_ha.guest_ha_channel`,\n"
        "roles `guest_ha.guest_ha.{guest,compute,controller,rabbitmq,aio}` (which share\n"
        "`agent`) and the playbooks. The roles install the agents from a guest-ha source checkout\n"
        "(`guest_ha_<role>_source_dir`) or from a package index (`pip`).\n"
        "Documentation: the repository's `docs/`.\n",
    )
    for src, kind in (
        ("library/guest_ha_channel.py", "modules"),
        ("module_utils/guest_ha_domain_xml.py", "module_utils"),
    ):
        os.makedirs(os.path.join(root, "plugins", kind), exist_ok=True)
        shutil.copy2(os.path.join(REPO, src), os.path.join(root, "plugins", kind))
    shutil.copytree(
        os.path.join(REPO, "roles"),
        os.path.join(root, "roles"),
        ignore=shutil.ignore_patterns("molecule", "__pycache__", "*.pyc"),
    )
    shutil.copytree(os.path.join(REPO, "playbooks"), os.path.join(root, "playbooks"))
    _write(
        os.path.join(root, "tests", "sanity", f"ignore-{ansible_core_minor()}.txt"),
        "plugins/modules/guest_ha_channel.py validate-modules:missing-gplv3-license\n",
    )
    return root


def build_tarball(root: str, out: str) -> str:
    proc = subprocess.run(
        ["ansible-galaxy", "collection", "build", "--force", "--output-path", out, root],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ansible-galaxy collection build failed:\n{proc.stdout}{proc.stderr}")
    tarball = os.path.join(out, f"{NAMESPACE}-{NAME}-{project_version()}.tar.gz")
    if not os.path.isfile(tarball):
        raise SystemExit(f"ansible-galaxy did not write {tarball}:\n{proc.stdout}")
    return tarball


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--tree-only", action="store_true", help="generate the tree, no tarball")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    root = build_tree(out)
    print(f"[collection] tree: {root}", file=sys.stderr)
    print(root if args.tree_only else build_tarball(root, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
