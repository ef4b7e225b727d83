"""Guest daemon configuration: file parsing, CLI merge and error messages."""

from __future__ import annotations

import pytest

from guest_ha.guest import DEFAULT_PORT
from guest_ha.guest.config import OPTIONS, ConfigError, GuestdConfig, parse_command_line
from guest_ha.guest.daemon import main

pytestmark = pytest.mark.unit


def _write(tmp_path, text):
    path = tmp_path / "guestd.conf"
    path.write_text(text)
    return str(path)


def test_defaults_when_file_missing(tmp_path):
    config, check = parse_command_line(["--config", "/dev/null"])
    assert not check
    assert config.port == DEFAULT_PORT
    assert config.transport == "virtio"
    assert config.interval_ms == 1000
    assert config.check_interval_ms == 1000
    assert config.check_timeout_ms == 2000
    assert config.corrective_action is None
    assert config.name  # host name


def test_every_option_is_a_config_field():
    fields = set(GuestdConfig().as_dict())
    assert {o.key for o in OPTIONS} <= fields


def test_file_values_and_cli_override(tmp_path):
    path = _write(
        tmp_path,
        "[guestd]\nport = /dev/ttyS1\ntransport = serial\ninterval_ms = 500\n"
        "corrective_action = Reboot\nname = web-1\nlog_level = DEBUG\n",
    )
    config, _ = parse_command_line(["--config", path, "--interval-ms", "2000", "--name", "x"])
    assert config.port == "/dev/ttyS1"
    assert config.transport == "serial"
    assert config.interval_ms == 2000
    assert config.corrective_action == "reboot"
    assert config.name == "x"
    assert config.log_level == "debug"


def test_empty_corrective_action_means_none(tmp_path):
    path = _write(tmp_path, "[guestd]\ncorrective_action =\n")
    config, _ = parse_command_line(["--config", path])
    assert config.corrective_action is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[guestd]\nintervall_ms = 5\n", "unknown key 'intervall_ms'"),
        ("[guestd]\ninterval_ms = fast\n", "interval_ms: must be an integer"),
        ("[guestd]\ninterval_ms = 50\n", "interval_ms: must be between 100 and 60000"),
        ("[guestd]\ntransport = usb\n", "transport: must be one of virtio, serial"),
        ("[guestd]\ncorrective_action = panic\n", "corrective_action: must be one of"),
        ("[guestd]\nlog = file\n", "log: must be one of stderr, syslog"),
        ("[other]\nport = x\n", "unknown section [other]"),
        ("port = x\n", "config file"),
        ("[guestd]\nname = " + "n" * 65 + "\n", "name: longer than 64"),
    ],
)
def test_bad_config_file(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        parse_command_line(["--config", path])
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_command_line(["--config", str(tmp_path / "nope.conf")])


def test_bad_cli_value():
    with pytest.raises(ConfigError, match="command line: check_timeout_ms"):
        parse_command_line(["--config", "/dev/null", "--check-timeout-ms", "-1"])


def test_main_exits_2_with_one_line(tmp_path, capsys):
    path = _write(tmp_path, "[guestd]\nbogus = 1\n")
    assert main(["--config", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("guest-ha-guestd: error: ")


def test_check_config_prints_and_exits_0(capsys):
    assert main(["--config", "/dev/null", "--check-config", "--interval-ms", "300"]) == 0
    assert "interval_ms = 300" in capsys.readouterr().out
