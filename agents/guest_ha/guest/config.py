"""Guest daemon configuration: an INI file (section ``[guestd]``) merged with CLI flags.

Every key is described once in :data:`OPTIONS`; the file parser, the command
line and the documentation all follow that table. Values from the command line
override values from the file, which override the defaults. Anything invalid
raises :class:`ConfigError` with a one-line message (the daemon exits 2).
"""

from __future__ import annotations

import argparse
import configparser
import os
import socket
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..protocol.messages import CORRECTIVE_ACTIONS, MAX_NAME_CHARS
from . import DEFAULT_APP_SOCKET, DEFAULT_CHECKS_DIR, DEFAULT_CONFIG_PATH, DEFAULT_PORT

SECTION = "guestd"
TRANSPORTS = ("virtio", "serial")
LOG_TARGETS = ("stderr", "syslog")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """Invalid configuration; the message is one line, fit for the user."""


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise ValueError(f"must be an integer between {low} and {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _choice(*allowed: str, empty_ok: bool = False) -> Callable[[str], Optional[str]]:
    def parse(text: str) -> Optional[str]:
        value = text.strip().lower()
        if not value and empty_ok:
            return None
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _path(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    if "\0" in value:
        raise ValueError("must not contain NUL")
    return value


def _name(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"longer than {MAX_NAME_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters")
    return value


def default_name() -> str:
    """The host name, cut to what the ``init`` PDU allows."""
    name = socket.gethostname().strip() or "guest"
    return "".join(c for c in name if ord(c) >= 0x20)[:MAX_NAME_CHARS] or "guest"


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = ""


OPTIONS: List[Option] = [
    Option("port", _path, DEFAULT_PORT, "character device of the channel", "PATH"),
    Option("transport", _choice(*TRANSPORTS), "virtio", "virtio (chardev) or serial (pyserial)"),
    Option("serial_baudrate", _int_range(50, 4000000), 115200, "baud rate for transport=serial"),
    Option("name", _name, None, "name sent in init (default: host name)", "NAME"),
    Option("interval_ms", _int_range(100, 60000), 1000, "requested heartbeat interval"),
    Option(
        "corrective_action",
        _choice(*CORRECTIVE_ACTIONS, empty_ok=True),
        None,
        "suggested corrective action: log, reboot or stop (default: none)",
    ),
    Option("checks_dir", _path, DEFAULT_CHECKS_DIR, "directory of check scripts", "DIR"),
    Option("check_interval_ms", _int_range(100, 3600000), 1000, "how often checks run"),
    Option("check_timeout_ms", _int_range(100, 3600000), 2000, "per-check time limit"),
    Option("app_socket", _path, DEFAULT_APP_SOCKET, "UNIX socket of the app health API", "PATH"),
    Option(
        "sg_status_timeout_ms",
        _int_range(100, 60000),
        5000,
        "default time limit of a server group status query",
    ),
    Option(
        "sg_rate_per_s",
        _int_range(1, 10000),
        50,
        "server group PDUs per second the daemon sends (match the host's limit)",
    ),
    Option("sg_burst", _int_range(1, 10000), 100, "burst of the server group rate limit"),
    Option("log", _choice(*LOG_TARGETS), "stderr", "stderr or syslog"),
    Option("log_level", _choice(*LOG_LEVELS), "info", "debug, info, warning or error"),
]
OPTIONS_BY_KEY: Dict[str, Option] = {o.key: o for o in OPTIONS}


@dataclass(frozen=True)
class GuestdConfig:
    """The daemon's effective, validated configuration."""

    port: str = DEFAULT_PORT
    transport: str = "virtio"
    serial_baudrate: int = 115200
    name: str = ""
    interval_ms: int = 1000
    corrective_action: Optional[str] = None
    checks_dir: str = DEFAULT_CHECKS_DIR
    check_interval_ms: int = 1000
    check_timeout_ms: int = 2000
    app_socket: str = DEFAULT_APP_SOCKET
    sg_status_timeout_ms: int = 5000
    sg_rate_per_s: int = 50
    sg_burst: int = 100
    log: str = "stderr"
    log_level: str = "info"
    config_path: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _parse_value(key: str, text: str, where: str) -> Any:
    try:
        return OPTIONS_BY_KEY[key].parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {exc} (got {text.strip()!r})") from None


def read_config_file(path: str, required: bool) -> Dict[str, Any]:
    """Parse the ``[guestd]`` section of ``path`` into typed values.

    A missing file is an error only when ``required`` (given explicitly).
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="__none__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} not found") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except configparser.Error as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"config file {path}: {first}") from None
    other = [s for s in parser.sections() if s != SECTION]
    if other:
        raise ConfigError(
            f"config file {path}: unknown section [{other[0]}] (expected [{SECTION}])"
        )
    values: Dict[str, Any] = {}
    if not parser.has_section(SECTION):
        return values
    for key, text in parser.items(SECTION):
        if key not in OPTIONS_BY_KEY:
            known = ", ".join(OPTIONS_BY_KEY)
            raise ConfigError(
                f"config file {path}: unknown key {key!r} in [{SECTION}] (known: {known})"
            )
        values[key] = _parse_value(key, text, f"config file {path} [{SECTION}]")
    return values


def build_arg_parser(prog: str = "guest-ha-guestd") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="guest-ha guest daemon: heartbeat and health checks over virtio-serial.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default {DEFAULT_CONFIG_PATH}; a missing default file is fine)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration, print it and exit",
    )
    for opt in OPTIONS:
        default = "none" if opt.default is None else opt.default
        parser.add_argument(
            "--" + opt.key.replace("_", "-"),
            dest=opt.key,
            metavar=opt.metavar or opt.key.upper(),
            default=None,
            help=f"{opt.help} [config key {opt.key}; default {default}]",
        )
    return parser


def load_config(args: argparse.Namespace) -> GuestdConfig:
    """Merge defaults, the config file and CLI flags; raise :class:`ConfigError`."""
    path = args.config or DEFAULT_CONFIG_PATH
    values: Dict[str, Any] = {o.key: o.default for o in OPTIONS}
    values.update(read_config_file(path, required=args.config is not None))
    for opt in OPTIONS:
        text = getattr(args, opt.key, None)
        if text is not None:
            values[opt.key] = _parse_value(opt.key, text, "command line")
    if not values["name"]:
        values["name"] = default_name()
    return GuestdConfig(config_path=os.path.abspath(path), **values)


def parse_command_line(argv: Optional[Sequence[str]] = None) -> Tuple[GuestdConfig, bool]:
    """Parse ``argv``; return the configuration and whether ``--check-config`` was given."""
    args = build_arg_parser().parse_args(argv)
    return load_config(args), bool(args.check_config)
