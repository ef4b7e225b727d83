"""HTTP endpoints listen on loopback unless the operator names another address."""

from __future__ import annotations

import pytest

from guest_ha.compute.config import ConfigError, parse_config
from guest_ha.compute.metrics import parse_listen
from guest_ha.controller.options import controller_opts

pytestmark = pytest.mark.unit


def test_controller_status_endpoint_defaults_to_loopback():
    [opt] = [o for o in controller_opts if o.name == "status_listen"]
    host, _, port = opt.default.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0


def test_compute_metrics_are_off_by_default_and_loopback_without_a_host():
    assert parse_config({}).metrics_listen is None
    assert parse_config({"metrics_listen": ":9798"}).metrics_listen == ":9798"
    assert parse_listen(":9798")[0] == "127.0.0.1"
    with pytest.raises(ConfigError, match="metrics_listen"):
        parse_config({"metrics_listen": "nohost:notaport"})
