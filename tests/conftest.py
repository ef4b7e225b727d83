"""Shared fixtures. UNIX socket paths are limited to 107 bytes, so sockets live in
short private folders under /tmp rather than in pytest's long tmp_path."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterator

import pytest

#: ``scripts/test.sh`` (the README test command, and CI) sets this. There a
#: skipped test means a prerequisite that bootstrap should have installed is
#: missing, so the skip is reported as a failure instead of hiding it.
NO_SKIP = os.environ.get("GUEST_HA_NO_SKIP") == "1"


def _fail_skip(report: Any) -> None:
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under scripts/test.sh (a missing prerequisite?): {report.longrepr}"
        )


#: Every test carries one of these; a test without one is silently left out
#: of every ``-m`` run, so collecting one is an error.
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: Any, items: Any) -> None:
    untiered = sorted(
        {i.nodeid.split("::")[0] for i in items if not any(i.get_closest_marker(t) for t in TIERS)}
    )
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker {TIERS}: {', '.join(untiered)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: Any) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.fixture
def short_tmp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="gha-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
