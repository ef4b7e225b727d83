from __future__ import annotations

import pytest

from guest_ha.compute.cli import format_status, main
from guest_ha.compute.config import ConfigError, load_config, parse_config

pytestmark = pytest.mark.unit

UUID = "6f1c2b8e-3a43-4d5e-9a55-0c1f4a9b7d21"


def test_defaults() -> None:
    config = parse_config(None)
    assert config.vms == []
    assert config.heartbeat.min_interval_ms == 100
    assert config.heartbeat.max_interval_ms == 60000
    assert config.heartbeat.missed_threshold == 1
    assert config.limits.max_frame == 4096


def test_full_config(tmp_path) -> None:
    path = tmp_path / "compute.yaml"
    path.write_text(
        f"""
vms:
  - {{uuid: {UUID}, name: vnf-a, socket: /run/x.sock}}
heartbeat: {{missed_threshold: 2, restart_timeout_s: 30}}
limits: {{heartbeat_rate: 40}}
events: {{log: false, jsonl: /tmp/e.jsonl}}
status_socket: null
"""
    )
    config = load_config(str(path))
    assert config.vms[0].name == "vnf-a" and config.vms[0].socket_path == "/run/x.sock"
    assert config.heartbeat.missed_threshold == 2
    assert config.heartbeat.restart_timeout_s == 30.0
    assert config.limits.heartbeat_rate == 40.0
    assert config.events.jsonl == "/tmp/e.jsonl" and not config.events.log
    assert config.status_socket is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"bogus": 1}, "unknown top-level key"),
        ({"heartbeat": {"missed_threshold": 0}}, "missed_threshold must be at least 1"),
        ({"heartbeat": {"min_interval_ms": 500, "max_interval_ms": 100}}, "min_interval_ms"),
        ({"heartbeat": {"interval": 5}}, "heartbeat.interval: unknown key"),
        ({"heartbeat": {"missed_threshold": "2"}}, "must be of type int"),
        ({"heartbeat": {"missed_threshold": True}}, "must be of type int"),
        ({"limits": {"heartbeat_rate": -1}}, "heartbeat_rate must be positive"),
        ({"vms": [{"uuid": "not-a-uuid", "socket": "/x"}]}, "vms[0].uuid"),
        ({"vms": [{"uuid": UUID, "socket": "relative"}]}, "vms[0].socket"),
        ({"vms": [{"uuid": UUID, "socket": "/a"}, {"uuid": UUID, "socket": "/b"}]}, "duplicate"),
        ({"vms": {"uuid": UUID}}, "vms: must be a list"),
        ({"socket_dir": "rel"}, "socket_dir"),
        ({"log_level": "loud"}, "log_level"),
        ({"reconnect": {"initial_s": 10, "max_s": 1}}, "initial_s <= max_s"),
        ({"events": {"log": "yes"}}, "true or false"),
        ({"libvirt": {"domain_names": " "}}, "domain_names must be a non-empty pattern"),
        ([1, 2], "top level"),
    ],
)
def test_invalid_config_names_the_key(raw, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(raw)


def test_unreadable_and_invalid_yaml(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("vms: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_cli_reports_configuration_errors(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("heartbeat: {missed_threshold: 0}\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "missed_threshold" in capsys.readouterr().err


def test_status_without_agent(tmp_path, capsys) -> None:
    assert main(["status", "--socket", str(tmp_path / "none.sock")]) == 1
    assert "is the agent running" in capsys.readouterr().err


def test_format_status_table() -> None:
    text = format_status(
        {
            "uptime_s": 12,
            "vms": [
                {
                    "domain": "vnf-a",
                    "instance_uuid": UUID,
                    "channel": "connected",
                    "registered": True,
                    "interval_ms": 100,
                    "last_rtt_ms": 0.42,
                    "misses": 0,
                    "health": "healthy",
                    "heartbeat_state": "monitoring",
                }
            ],
        }
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "DOMAIN",
        "INSTANCE",
        "CHANNEL",
        "REGISTERED",
        "INTERVAL",
        "RTT",
        "MISSES",
        "STATE",
    ]
    assert lines[1].split() == [
        "vnf-a",
        UUID,
        "connected",
        "yes",
        "100",
        "ms",
        "0.4",
        "ms",
        "0",
        "healthy",
    ]
    assert lines[-1] == "1 VM(s), agent up 12 s"
