"""roles/guest deployed to a running guest over ssh: Molecule scenario ``running``.

The scenario (roles/guest/molecule/running/) starts an sshd of its own on
127.0.0.4:2224 and a host-side heartbeat peer on a pty, then runs
playbooks/guest.yml against this machine as the "guest": service manager
``daemon``, everything under a temporary install root, ``transport = serial`` on
the peer's pty. Verify checks the configuration, the running daemon, its
registration with the peer at the configured interval and the restart handler;
cleanup stops the daemon, the peer and sshd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from test_molecule import REPO, _molecule, _require_root

pytestmark = pytest.mark.integration


def _require_sshd() -> None:
    if shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("openssh-server is not installed")
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (openssh-client)")


def test_molecule_guest_running(tmp_path) -> None:
    _require_root()
    _require_sshd()
    # The daemon runs with the controller's Python (this venv): transport serial
    # needs pyserial there.
    pytest.importorskip("serial")
    out = _molecule("guest", "running", tmp_path)
    # The daemon was started by converge, and verify's configuration change went
    # through the role's restart handler.
    assert "TASK [guest : Start guest-ha-guestd (daemon)]" in out
    assert "RUNNING HANDLER [guest : Restart guest-ha-guestd (daemon)]" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"guest_ha_guest_service_manager": "daemon"},
            "but bake mode (guest_ha_guest_bake=true) never starts anything",
        ),
        (
            {"guest_ha_guest_root": "/srv/elsewhere"},
            "is for tests on running systems",
        ),
    ],
)
def test_bake_mode_refuses_daemon_and_root(tmp_path, extra, message) -> None:
    """Refused before anything is written into the image root."""
    _require_root()  # the chroot connection
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import build_test_guest

    root = tmp_path / "root"
    build_test_guest.make_shell_root(str(root))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        build_test_guest.bake(
            str(root), {"guest_ha_guest_build_dir": str(tmp_path / "pyz"), **extra}, capture=True
        )
    assert message in failed.value.output
    assert sorted(p.name for p in root.iterdir()) == ["bin", "tmp"]
