"""The installed product is agents/guest_ha alone: dev-only code (test cloud,
simulator, demo drivers) lives in dev/guest_ha_dev and the product never imports it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRODUCT = os.path.join(REPO, "agents", "guest_ha")


def _imported_modules(path: str) -> set:
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_product_never_imports_dev_code() -> None:
    offenders = []
    for folder, _dirs, files in os.walk(PRODUCT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dev = [m for m in _imported_modules(path) if m.split(".")[0] == "guest_ha_dev"]
                if dev:
                    offenders.append((os.path.relpath(path, REPO), dev))
    assert offenders == []


def test_wheel_holds_the_product_alone(tmp_path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            REPO,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("guest_ha-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        packages = {
            "/".join(name.split("/")[:2]) for name in zf.namelist() if name.startswith("guest_ha/")
        }
    assert "guest_ha_dev" not in top
    assert {"guest_ha/protocol", "guest_ha/guest", "guest_ha/compute"} <= packages
    assert not packages & {"guest_ha/testing", "guest_ha/sim", "guest_ha/aio"}
