"""guest_ha.messaging.options: registration on the global cfg.CONF, list functions,
and the oslo-config-generator sample they produce."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("oslo_messaging")

from oslo_config import cfg

from guest_ha.messaging import options

pytestmark = pytest.mark.unit

GUEST_HA_NAMES = {
    "host",
    "controller_topic",
    "compute_topic_prefix",
    "rpc_timeout_s",
    "rpc_connect_retries",
    "server_group_transport",
}


def test_register_opts_is_idempotent_on_global_conf() -> None:
    conf = options.register_opts()
    assert conf is cfg.CONF
    options.register_opts()
    options.register_opts(cfg.CONF)
    assert conf.guest_ha.controller_topic == "guest_ha_controller"
    assert conf.guest_ha.compute_topic_prefix == "guest_ha_compute"
    assert conf.guest_ha.rpc_timeout_s == 5.0
    assert conf.guest_ha.rpc_connect_retries == 1
    assert conf.guest_ha.host


def test_configure_parses_once_ignores_argv_and_keeps_overrides(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["pytest", "--no-such-flag", "positional"])
    conf = options.configure("rabbit://guest:guest@127.0.0.1:1/")
    try:
        assert conf is cfg.CONF
        assert conf.transport_url == "rabbit://guest:guest@127.0.0.1:1/"
        conf.set_override("rpc_timeout_s", 1.5, group="guest_ha")
        # A second configure must not re-parse (which would clear overrides).
        again = options.configure()
        assert again.guest_ha.rpc_timeout_s == 1.5
        assert again.transport_url == "rabbit://guest:guest@127.0.0.1:1/"
        # oslo.messaging's own groups are there before any transport exists.
        assert again.oslo_messaging_rabbit.rabbit_retry_interval >= 1
        assert again.oslo_messaging_notifications.topics == ["notifications"]
    finally:
        conf.clear_override("rpc_timeout_s", group="guest_ha")
        conf.clear_override("transport_url")


def _check_shape(listed) -> dict:
    assert isinstance(listed, list)
    groups = {}
    for item in listed:
        assert isinstance(item, tuple) and len(item) == 2
        group, opts = item
        assert group is None or isinstance(group, str)
        assert opts and all(isinstance(o, cfg.Opt) for o in opts)
        groups[group] = {o.dest for o in opts}
    return groups


def test_list_compute_opts_shape() -> None:
    groups = _check_shape(options.list_compute_opts())
    assert groups["guest_ha"] == GUEST_HA_NAMES
    assert "transport_url" in groups[None]
    assert "rpc_response_timeout" in groups[None]
    assert "rabbit_retry_interval" in groups["oslo_messaging_rabbit"]
    assert "topics" in groups["oslo_messaging_notifications"]
    assert "oslo_messaging_kafka" not in groups


def test_list_controller_opts_is_a_superset() -> None:
    compute = _check_shape(options.list_compute_opts())
    controller = _check_shape(options.list_controller_opts())
    assert controller["guest_ha"] == GUEST_HA_NAMES | {"notification_retries"}
    assert set(controller) == set(compute)


def test_listed_opts_are_copies() -> None:
    listed = dict(options.list_compute_opts())["guest_ha"]
    listed[0].default = "changed"
    assert dict(options.list_compute_opts())["guest_ha"][0].default != "changed"


def _entry_point_installed(name: str) -> bool:
    eps = importlib.metadata.entry_points()
    selected = (
        eps.select(group="oslo.config.opts")
        if hasattr(eps, "select")
        else eps.get("oslo.config.opts", [])
    )
    return any(ep.name == name for ep in selected)


@pytest.mark.parametrize(
    "namespace,extra", [("guest_ha.compute", None), ("guest_ha.controller", "notification_retries")]
)
def test_oslo_config_generator(namespace: str, extra, tmp_path: Path) -> None:
    """The real ``oslo-config-generator`` CLI. Where the project's entry points are
    not installed yet, an equivalent dist-info on PYTHONPATH declares them."""
    generator = Path(sys.executable).with_name("oslo-config-generator")
    if not generator.exists():
        pytest.skip("oslo-config-generator not installed next to this interpreter")
    env = {"PATH": "/usr/bin:/bin", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    if not _entry_point_installed(namespace):
        dist = tmp_path / "site" / "guest_ha_opts_probe-0.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: guest-ha-opts-probe\nVersion: 0.0\n"
        )
        (dist / "entry_points.txt").write_text(
            textwrap.dedent("""\
            [oslo.config.opts]
            guest_ha.compute = guest_ha.messaging.options:list_compute_opts
            guest_ha.controller = guest_ha.messaging.options:list_controller_opts
            """)
        )
        env["PYTHONPATH"] = str(dist.parent)
    out = tmp_path / "sample.conf"
    res = subprocess.run(
        [str(generator), "--namespace", namespace, "--output-file", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    for needle in (
        "[DEFAULT]",
        "[guest_ha]",
        "[oslo_messaging_rabbit]",
        "[oslo_messaging_notifications]",
        "#transport_url = rabbit://",
        "#controller_topic = guest_ha_controller",
        "#compute_topic_prefix = guest_ha_compute",
        "#host = <hostname of this machine>",
        "#rpc_timeout_s = 5.0",
    ):
        assert needle in text, needle
    assert "[oslo_messaging_kafka]" not in text
    assert ("#notification_retries = 1" in text) == (extra is not None)
