"""Body building and answer classification of the vitrage and masakari reporters
(a recording fake session; the real services are in
tests/integration/test_vitrage_masakari.py)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest

from guest_ha.controller.options import list_opts, register_opts
from guest_ha.controller.reporters import ReporterError
from guest_ha.controller.reporters.masakari import MasakariReporter, build_notification
from guest_ha.controller.reporters.vitrage import VitrageReporter, build_event, vitrage_time
from guest_ha.vitrage_datasource import (
    ALARM_NAME,
    DATASOURCE,
    FAULT_EVENT,
    RECOVERED_EVENT,
    values_file,
)

pytestmark = pytest.mark.unit

UUID = "6f1a3c0e-54a5-4a47-9d0e-3f1f0b6a1c11"


def ev(kind: str, fault: bool, **extra: Any) -> Dict[str, Any]:
    base = {
        "kind": kind,
        "instance_uuid": UUID,
        "domain": "instance-00000007",
        "fault": fault,
        "time": "2026-11-24T07:04:02.852066Z",
        "monotonic": 12.5,
        "detail": {"reason": "missed 1 challenge", "interval_ms": 100, "invocation_id": "x"},
        "compute_host": "compute-1",
        "idempotency_key": "k-1",
    }
    base.update(extra)
    return base


class Response:
    def __init__(self, status: int, text: str = "") -> None:
        self.status_code = status
        self.text = text


class Session:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: List[Dict[str, Any]] = []

    def post(self, path: str, **kwargs: Any) -> Response:
        self.calls.append({"path": path, **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


# --------------------------------------------------------------------------- vitrage


def test_vitrage_time_has_microseconds_and_no_zone() -> None:
    assert vitrage_time("2026-11-24T07:04:02.852066Z") == "2026-11-24T07:04:02.852066"
    assert vitrage_time("2026-11-24T08:04:02+01:00") == "2026-11-24T07:04:02.000000"
    assert len(vitrage_time(None)) == len("2026-11-24T07:04:02.852066")


def test_fault_event_body() -> None:
    body = build_event(ev("heartbeat_lost", True))
    assert body == {
        "time": "2026-11-24T07:04:02.852066",
        "type": FAULT_EVENT,
        "details": {
            "instance_id": UUID,
            "kind": "heartbeat_lost",
            "status": "fault",
            "severity": "critical",
            "source": "guest-ha",
            "reason": "missed 1 challenge",
            "compute_host": "compute-1",
            "domain": "instance-00000007",
            "idempotency_key": "k-1",
        },
    }
    # Never the stock doctor routing values.
    assert body["details"]["status"] not in ("up", "down")
    assert build_event(ev("unhealthy", True))["details"]["severity"] == "major"


def test_recovery_event_body_and_ignored_kinds() -> None:
    body = build_event(ev("recovered", False, detail={"previous_fault": "unhealthy"}))
    assert body is not None
    assert body["type"] == RECOVERED_EVENT
    assert body["details"]["status"] == "ok"
    assert body["details"]["previous_fault"] == "unhealthy"
    for kind in ("registered", "exit", "suspended"):
        assert build_event(ev(kind, False)) is None


def test_vitrage_reporter_posts_to_rca_and_ignores_non_faults() -> None:
    session = Session(Response(200))
    reporter = VitrageReporter(session, region="R1", interface="internal")
    reporter.report(ev("registered", False))
    assert session.calls == []
    reporter.report(ev("vm_crashed", True))
    (call,) = session.calls
    assert call["path"] == "/v1/event"
    assert call["endpoint_filter"] == {
        "service_type": "rca",
        "interface": "internal",
        "region_name": "R1",
    }
    assert call["json"]["type"] == FAULT_EVENT
    assert call["raise_exc"] is False
    assert call["endpoint_override"] is None  # the catalog's endpoint


def test_endpoint_override_replaces_the_catalog_endpoint() -> None:
    session = Session(Response(200))
    VitrageReporter(session, endpoint_override="http://lb.internal:8999").report(
        ev("vm_crashed", True)
    )
    (call,) = session.calls
    assert call["endpoint_override"] == "http://lb.internal:8999"
    assert call["path"] == "/v1/event"


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (Response(503), True),
        (Response(500), True),
        (Response(429), True),
        (Response(404, '{"error": "Failed to post event"}'), True),
        (Response(404, "not found"), False),
        (Response(400), False),
        (Response(403), False),
        (ConnectionError("refused"), True),
    ],
)
def test_vitrage_errors_are_classified(answer: Any, retryable: bool) -> None:
    with pytest.raises(ReporterError) as info:
        VitrageReporter(Session(answer)).report(ev("heartbeat_lost", True))
    assert info.value.retryable is retryable


# --------------------------------------------------------------------------- masakari


def test_masakari_notification_body() -> None:
    assert build_notification(ev("heartbeat_lost", True)) == {
        "notification": {
            "type": "VM",
            "hostname": "compute-1",
            "generated_time": "2026-11-24T07:04:02.852066",
            "payload": {
                "event": "QEMU_GUEST_AGENT_ERROR",
                "instance_uuid": UUID,
                "vir_domain_event": "STOPPED_FAILED",
            },
        }
    }
    assert build_notification(ev("recovered", False)) is None
    assert build_notification(ev("registered", False)) is None


def test_masakari_without_compute_host_is_permanent() -> None:
    with pytest.raises(ReporterError) as info:
        MasakariReporter(Session()).report(ev("unhealthy", True, compute_host=None))
    assert info.value.retryable is False


@pytest.mark.parametrize("status", [202, 409])
def test_masakari_accepted_and_duplicate_are_success(status: int) -> None:
    session = Session(Response(status))
    MasakariReporter(session).report(ev("heartbeat_lost", True))
    (call,) = session.calls
    assert call["path"] == "/notifications"
    assert call["endpoint_filter"]["service_type"] == "instance-ha"


def test_masakari_sends_nothing_on_recovery() -> None:
    session = Session()
    MasakariReporter(session).report(ev("recovered", False))
    assert session.calls == []


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (Response(400), False),
        (Response(403), False),
        (Response(500), True),
        (Response(503), True),
        (Response(408), True),
        (OSError("timed out"), True),
    ],
)
def test_masakari_errors_are_classified(answer: Any, retryable: bool) -> None:
    with pytest.raises(ReporterError) as info:
        MasakariReporter(Session(answer)).report(ev("heartbeat_lost", True))
    assert info.value.retryable is retryable


# --------------------------------------------------------------------------- config, datasource


def test_reporter_option_groups_are_registered_and_listed() -> None:
    from oslo_config import cfg

    conf = register_opts(cfg.ConfigOpts())
    conf([], default_config_files=[])
    for group in ("reporter_vitrage", "reporter_masakari"):
        opts = getattr(conf, group)
        assert opts.clouds_yaml == "/etc/guest-ha/clouds.yaml"
        assert opts.cloud == "guest-ha"
        assert opts.interface == "public"
        assert opts.region is None
    assert {g for g, _ in list_opts()} >= {"reporter_vitrage", "reporter_masakari"}


def test_datasource_constants_and_values_file() -> None:
    assert DATASOURCE == "guest_ha"
    assert ALARM_NAME == "guest_ha.heartbeat"
    with open(values_file(), encoding="utf-8") as fh:
        text = fh.read()
    assert "category: ALARM" in text
    for severity in ("critical", "major", "OK"):
        assert f"name: {severity}" in text


def test_build_reporters_knows_vitrage_and_masakari(tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from guest_ha.controller import service

    sessions: List[Optional[str]] = []

    def fake_session(path: str, cloud: str) -> str:
        sessions.append(cloud)
        return f"session:{cloud}"

    monkeypatch.setattr("guest_ha.cloud_session.session_from_clouds_yaml", fake_session)
    group = SimpleNamespace(
        clouds_yaml=str(tmp_path / "c.yaml"),
        cloud="c1",
        region="R",
        interface="admin",
        timeout_s=3.0,
        endpoint_override="http://masakari.lb:15868",
    )
    conf = SimpleNamespace(
        controller=SimpleNamespace(reporters=["vitrage", "masakari"]),
        reporter_vitrage=group,
        reporter_masakari=group,
    )
    reporters = service.build_reporters(conf, None)
    assert isinstance(reporters["vitrage"], VitrageReporter)
    assert isinstance(reporters["masakari"], MasakariReporter)
    assert reporters["masakari"].endpoint_filter["region_name"] == "R"
    assert reporters["vitrage"].timeout == 3.0
    assert reporters["masakari"].endpoint_override == "http://masakari.lb:15868"
    assert sessions == ["c1", "c1"]
