"""Shared fixtures. UNIX socket paths are limited to 107 bytes, so sockets live in
short private folders under /tmp rather than in pytest's long tmp_path."""

from __future__ import annotations

import shutil
import tempfile
from typing import Iterator

import pytest


@pytest.fixture
def short_tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="gha-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
