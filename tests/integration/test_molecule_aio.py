"""Molecule scenario of the ``aio`` role (roles/aio/molecule/default).

The role builds (or reuses, from .cache/guest-image) the test guest image and
defines and starts one real TCG guest on qemu:///system; verify waits until the
guest daemon runs in it, and cleanup removes it with the role's own teardown
(``guest_ha_aio_state: absent``). The domain name prefix and the scenario folder
are private to this run: the machine's libvirtd may be shared.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest
from test_molecule import _molecule, _require_libvirtd, _require_root

pytestmark = pytest.mark.integration

URI = "qemu:///system"


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _domains(prefix: str) -> list:
    mine = re.compile(rf"^{re.escape(prefix)}-[0-9]+$")
    listing = _virsh("list", "--all", "--name")
    return [name for name in listing.stdout.split() if mine.match(name)]


def test_molecule_aio(tmp_path) -> None:
    _require_root()
    _require_libvirtd()
    # QEMU opens the image folder's files: a traversable folder under /var/tmp
    # (not tmpfs, not pytest's 0700 tmp_path).
    scratch = tempfile.mkdtemp(prefix="gha-molecule-aio-", dir="/var/tmp")
    os.chmod(scratch, 0o755)
    prefix = f"gha-molecule-aio-{os.path.basename(scratch).rsplit('-', 1)[-1]}"
    try:
        out = _molecule(
            "aio",
            "default",
            tmp_path,
            timeout=1500,
            env={"GHA_MOLECULE_AIO_PREFIX": prefix, "GHA_MOLECULE_TMP": scratch},
        )
        # The role's teardown ran before (nothing to remove) and after the test.
        assert "default > cleanup: Executed: Successful" in out, out[-3000:]
        assert _domains(prefix) == [], "the role's teardown left the guest defined"
        assert not os.path.exists(os.path.join(scratch, "gha-molecule-aio")), out[-3000:]
    finally:
        # molecule's cleanup did this unless it failed or timed out.
        for name in _domains(prefix):
            _virsh("destroy", name)
            _virsh("undefine", name)
        shutil.rmtree(scratch, ignore_errors=True)
