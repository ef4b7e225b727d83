"""The conformance vectors of tests/conformance/ against the Python core.

The same files run through the C library's driver in
tests/integration/test_c_conformance.py; both implementations must pass all."""

from __future__ import annotations

import pytest

from conformance_runner import KINDS, SPLITS, load, run_all

pytestmark = [pytest.mark.unit, pytest.mark.c_guest]


def test_python_core_passes_every_vector_under_every_split() -> None:
    runs, failures = run_all()
    assert failures == []
    expected = sum(len(load(k)) * (1 if k == "validation" else len(SPLITS)) for k in KINDS)
    assert runs == expected > 400


def test_vectors_cover_every_guest_side_error_code() -> None:
    codes = {v["expect"].get("error") for v in load("validation")}
    assert {
        "malformed_json",
        "invalid_envelope",
        "unsupported_version",
        "unknown_address",
        "unknown_msg_type",
        "invalid_field",
    } <= codes
    assert any(e.get("error") == "frame_too_large" for v in load("framing") for e in v["expect"])


def test_a_wrong_expectation_is_reported() -> None:
    """The runner can fail: a vector whose expected nonce is altered does not pass."""
    from conformance_runner import run_guest

    vec = load("guest")[0]
    vec["steps"][1]["expect"]["sent"][0]["fields"]["nonce"] = "00000000"
    assert run_guest(vec, 0) is not None
