"""The C library (agents/guest-c) against the conformance vectors, through its
own driver, built with -Wall -Wextra -Werror, and once more under
AddressSanitizer + UBSan; plus a short sanitizer fuzz run of its decoder and
validator (the long run is bench/guest_c_fuzz.py)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from c_guest_support import build_c_guest
from conformance_runner import VECTOR_DIR, run_all

pytestmark = [pytest.mark.integration, pytest.mark.c_guest]


def _run(binary: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)


def test_c_library_passes_every_vector_like_the_python_core() -> None:
    build = build_c_guest("all")
    proc = _run(os.path.join(build, "gh-conformance"), VECTOR_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    python_runs, python_failures = run_all()
    assert python_failures == []
    assert summary == {"runs": python_runs, "failed": 0}


def test_c_library_passes_the_vectors_under_asan_and_ubsan() -> None:
    build = build_c_guest("sanitize")
    proc = _run(os.path.join(build, "san", "gh-conformance"), VECTOR_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"failed":0' in proc.stdout


def test_sanitizer_fuzz_smoke_run_has_no_findings() -> None:
    build = build_c_guest("sanitize")
    proc = _run(os.path.join(build, "san", "gh-fuzz"), "--iterations", "60000", "--seed", "12")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 60000
    assert summary["findings"] == 0
    # The mutations reach every outcome, not only the JSON parser's rejections.
    assert summary["accepted"] > 0 and summary["invalid_field"] > 0
    assert summary["malformed_json"] > 0 and summary["frame_too_large"] > 0
