"""The controller role's opt-in ``vitrage`` entry point against a Vitrage
config of the test cloud's shape, checked by Vitrage's own code.

The play runs on this machine (connection local) with a private root; Vitrage
is the test cloud's cached Vitrage 15 venv, whose site-packages is left alone:
the ``.pth`` file goes into a private folder that the check adds as a site
folder.  What is shown:

- the first run changes the config, the second changes nothing, and a check
  run with diff changes nothing either;
- Vitrage's ``parse_config`` on the changed vitrage.conf loads our
  datasource's options from ``[datasources] path`` (``guest_ha`` among the
  types, ``controller_url`` read), the nova notifier is enabled, and the
  driver and transformer classes import through the ``.pth`` file;
- the operator's other types and notifiers stay.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from guest_ha_dev.testing.ansible_play import REPO, run_role
from guest_ha_dev.testing.venv_cache import ensure_venv

pytestmark = [pytest.mark.integration, pytest.mark.openstack]


VITRAGE_CONF = """[DEFAULT]
transport_url = rabbit://guest:guest@127.0.0.1:1/
notifiers = snmp
[datasources]
types = nova.instance,nova.host
path = vitrage.datasources
[entity_graph]
datasources_values_dir = {values}
"""

CHECK = """
import json, site, sys
site.addsitedir(sys.argv[1])
from oslo_config import cfg
from oslo_utils import importutils
from vitrage.common import config
config.parse_config(["vitrage-graph", "--config-file", sys.argv[2]])
conf = cfg.CONF
importutils.import_class(conf.guest_ha.driver)
importutils.import_class(conf.guest_ha.transformer)
print(json.dumps({"types": conf.datasources.types, "notifiers": conf.notifiers,
                  "controller_url": conf.guest_ha.controller_url,
                  "update_method": conf.guest_ha.update_method,
                  "values_dir": conf.entity_graph.datasources_values_dir}))
"""


def test_vitrage_entry_point_installs_the_datasource(tmp_path: Path) -> None:
    vitrage = ensure_venv("vitrage")
    root = tmp_path / "root"
    conf = root / "etc" / "vitrage" / "vitrage.conf"
    values = root / "etc" / "vitrage" / "datasources_values"
    values.mkdir(parents=True)
    conf.write_text(VITRAGE_CONF.format(values=values))
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    extra = {
        "guest_ha_controller_root": str(root),
        "guest_ha_controller_source_dir": str(REPO),
        "guest_ha_controller_vitrage_python": str(vitrage / "bin" / "python"),
        "guest_ha_controller_vitrage_site_packages": str(site_dir),
        "guest_ha_controller_vitrage_types": ["nova.instance", "nova.host"],
        "guest_ha_controller_vitrage_notifiers": ["snmp"],
        "guest_ha_controller_vitrage_controller_url": "http://127.0.0.1:9797",
    }

    def play(*flags: str) -> Dict[str, int]:
        return run_role("controller", "vitrage", extra, tmp_path, *flags)

    assert play()["changed"] > 0
    assert play()["changed"] == 0
    assert play("--check", "--diff")["changed"] == 0

    text = conf.read_text()
    assert "types = nova.instance,nova.host,guest_ha" in text
    assert "path = vitrage.datasources,guest_ha.vitrage_datasource" in text
    assert (values / "guest_ha.yaml").is_file()
    assert (root / "etc" / "vitrage" / "templates" / "guest_ha_instance_fault.yaml").is_file()

    check = subprocess.run(
        [str(vitrage / "bin" / "python"), "-c", CHECK, str(site_dir), str(conf)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert check.returncode == 0, check.stderr[-3000:]
    loaded = json.loads(check.stdout.strip().splitlines()[-1])
    assert loaded["types"] == ["nova.instance", "nova.host", "guest_ha"]
    assert loaded["notifiers"] == ["snmp", "nova"]
    assert loaded["controller_url"] == "http://127.0.0.1:9797"
    assert loaded["update_method"] == "push"
    assert loaded["values_dir"] == str(values)
