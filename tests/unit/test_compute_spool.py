from __future__ import annotations

import os

import pytest

from guest_ha.compute.spool import Spool, SpoolFull

pytestmark = pytest.mark.unit


def test_append_ack_and_order(tmp_path) -> None:
    spool = Spool(str(tmp_path))
    a = spool.append({"kind": "heartbeat_lost", "instance_uuid": "a"})
    b = spool.append({"kind": "recovered", "instance_uuid": "a"})
    assert [e.key for e in spool.pending()] == [a.key, b.key]
    assert a.event["idempotency_key"] == a.key
    assert spool.oldest() == a
    spool.ack(a)
    spool.ack(a)  # twice is harmless
    assert spool.pending() == [b] and spool.depth == 1
    assert not os.path.exists(a.path)


def test_survives_restart_and_keeps_keys_and_order(tmp_path) -> None:
    spool = Spool(str(tmp_path))
    entries = [spool.append({"n": i}, key=f"{i:032x}") for i in range(5)]
    spool.ack(entries[1])
    reopened = Spool(str(tmp_path))
    assert [(e.seq, e.key, e.event["n"]) for e in reopened.pending()] == [
        (e.seq, e.key, e.event["n"]) for e in entries if e is not entries[1]
    ]
    later = reopened.append({"n": 99})
    assert later.seq > entries[-1].seq


def test_half_written_and_corrupt_entries(tmp_path) -> None:
    spool = Spool(str(tmp_path))
    good = spool.append({"n": 1})
    (tmp_path / ("9" * 20 + "-" + "a" * 32 + ".json.tmp")).write_text("{partial")
    corrupt = tmp_path / ("0" * 19 + "7-" + "b" * 32 + ".json")
    corrupt.write_text("{not json")
    reopened = Spool(str(tmp_path))
    assert [e.key for e in reopened.pending()] == [good.key]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert (tmp_path / (corrupt.name + ".corrupt")).exists()


def test_bounded(tmp_path) -> None:
    spool = Spool(str(tmp_path), max_entries=2)
    spool.append({})
    spool.append({})
    with pytest.raises(SpoolFull):
        spool.append({})
