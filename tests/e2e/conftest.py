"""Fixtures for tests on the real libvirtd (qemu:///system) with TCG domains.

Domains are named ``gha-e2e-*`` and removed afterwards; files live in a private
folder under /var/tmp (O_DIRECT works there, unlike tmpfs)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guest_ha_dev.sim.testguest import Domains, GuestImage
from libvirt_support import ensure_libvirtd


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    return ensure_libvirtd()


@pytest.fixture(scope="session")
def lv(libvirt_uri: str) -> Any:
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open(libvirt_uri)
    yield conn
    conn.close()


@pytest.fixture
def e2e_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="gha-e2e-", dir="/var/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def domains(lv: Any) -> Iterator[Domains]:
    registry = Domains(lv)
    yield registry
    registry.cleanup()


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The test guest baked with the project's own guest role (built once, cached)."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return GuestImage.build(repo)
