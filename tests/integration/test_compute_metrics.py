"""The compute agent's Prometheus endpoint, scraped from the real engine process
while one simulated guest floods next to a good one."""

from __future__ import annotations

import os
import time
import urllib.request
from typing import Dict

import pytest

from guest_ha.compute.metrics import parse_listen
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess
from guest_ha_dev.testing import free_port

pytestmark = pytest.mark.integration


def scrape(port: int) -> Dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_show_states_nacks_and_the_throttled_guest(
    sim: VmSimulator, short_tmp: str
) -> None:
    good = sim.add_vm(interval_ms=100)
    bad = sim.add_vm(interval_ms=100)
    port = free_port()
    extra = {"metrics_listen": f":{port}"}  # no host given: loopback
    with EngineProcess(os.path.join(short_tmp, "engine"), [good, bad], extra=extra) as engine:
        engine.wait_event("registered", good.uuid)
        engine.wait_event("registered", bad.uuid)
        sim.set_hostile(bad.uuid, "garbage")
        time.sleep(2.0)
        m = scrape(port)
        assert m['guest_ha_compute_vms{state="monitoring"}'] == 2
        # The garbage guest's own answers drown in its garbage: it may be lost.
        health = {k: v for k, v in m.items() if k.startswith("guest_ha_compute_vms_health")}
        assert sum(health.values()) == 2 and health['guest_ha_compute_vms_health{health="healthy"}']
        assert m["guest_ha_compute_challenges_sent_total"] >= 20
        assert m["guest_ha_compute_responses_ok_total"] >= 10
        assert m['guest_ha_compute_nacks_sent_total{code="malformed_json"}'] >= 1
        assert m["guest_ha_compute_nacks_suppressed_total"] >= 1
        assert m["guest_ha_compute_throttled_guests"] == 1
        assert m[f'guest_ha_compute_guest_throttled{{instance_uuid="{bad.uuid}"}}'] == 1
        assert m["guest_ha_compute_reconnects_total"] == 0
        assert "guest_ha_compute_spool_depth" not in m  # no controller link
        status = {v["instance_uuid"]: v for v in engine.status()["vms"]}  # scraped after m
        assert (
            0 < m["guest_ha_compute_bad_frames_total"] <= status[bad.uuid]["counters"]["bad_frames"]
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)


def test_listen_defaults_to_loopback() -> None:
    assert parse_listen(":9798") == ("127.0.0.1", 9798)
    assert parse_listen("9798") == ("127.0.0.1", 9798)
    assert parse_listen("[::1]:9798") == ("::1", 9798)
    assert parse_listen("10.0.0.5:9798") == ("10.0.0.5", 9798)
    with pytest.raises(ValueError):
        parse_listen("host:http")
