"""Molecule scenarios of the Ansible roles, and the Ansible quality gates.

Each scenario runs ``molecule test`` (converge, idempotence, verify, cleanup)
with the ``default`` driver on this machine; see ENVIRONMENT notes in the
scenario files. ``scripts/ansible_quality.sh`` runs ansible-lint (production
profile) and ansible-test sanity on the custom module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

import pytest

from libvirt_support import ensure_libvirtd
from process_support import run_logged

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _env(tmp_path) -> dict:
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    # Private Ansible state: the machine can be shared.
    env["ANSIBLE_HOME"] = str(tmp_path / "ansible-home")
    env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(tmp_path / "cp")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["NO_COLOR"] = "1"
    env["ANSIBLE_DEPRECATION_WARNINGS"] = "0"
    env.pop("MOLECULE_EPHEMERAL_DIRECTORY", None)
    return env


def _run(argv, cwd, env, timeout) -> subprocess.CompletedProcess:
    return run_logged(argv, cwd, timeout, env)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def _require_libvirtd() -> None:
    # Started here if it is not running yet (CI's clean machine has none):
    # the scenario must not be skipped for want of a daemon the suite can start.
    ensure_libvirtd()


def _require_rabbitmq() -> None:
    from guest_ha_dev.testing.rabbitmq import rabbitmq_installed

    if not rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed (scripts/bootstrap.sh)")


def _molecule(
    role: str, scenario: str, tmp_path, timeout: float = 600, env: Optional[dict] = None
) -> str:
    proc = _run(
        ["molecule", "test", "-s", scenario],
        os.path.join(REPO, "roles", role),
        {**_env(tmp_path), **(env or {})},
        timeout,
    )
    out = ANSI.sub("", proc.stdout)
    assert proc.returncode == 0, out[-6000:]
    # Molecule's own recap: the idempotence check and verify ran and succeeded.
    for action in ("converge", "idempotence", "verify"):
        assert f"{action}: Executed: Successful" in out, out[-3000:]
    return out


def test_molecule_compute(tmp_path) -> None:
    _require_root()
    _require_libvirtd()
    from guest_ha_dev.testing.rabbitmq import pick_free_ports

    (metrics_port,) = pick_free_ports(1)
    # The role's guest_ha_compute_metrics_listen on a private port (verify.yml scrapes it).
    _molecule("compute", "default", tmp_path, env={"GHA_MOLECULE_METRICS_PORT": str(metrics_port)})


def test_molecule_controller(tmp_path) -> None:
    _require_root()
    _require_rabbitmq()
    _molecule("controller", "default", tmp_path)


def test_molecule_rabbitmq(tmp_path) -> None:
    _require_root()
    _require_rabbitmq()
    from guest_ha_dev.testing.rabbitmq import pick_free_ports

    amqp_port, dist_port = pick_free_ports(2)
    # The node runs as the rabbitmq user: its data folder must not be under
    # tmp_path (/tmp/pytest-of-root is 0700), so a private traversable folder.
    scratch = tempfile.mkdtemp(prefix="gha-molecule-rmq-")
    os.chmod(scratch, 0o755)
    node = f"gha-molecule-rmq-{os.path.basename(scratch).rsplit('-', 1)[-1]}@localhost"
    try:
        _molecule(
            "rabbitmq",
            "default",
            tmp_path,
            env={
                "GHA_MOLECULE_RABBIT_PORT": str(amqp_port),
                "GHA_MOLECULE_RABBIT_DIST_PORT": str(dist_port),
                "GHA_MOLECULE_RABBIT_NODE": node,
                "GHA_MOLECULE_TMP": scratch,
            },
        )
    finally:
        # molecule's own cleanup did this unless it failed or timed out. With
        # the PID file, stop waits for the VM to exit before the folder goes.
        pid_file = os.path.join(scratch, "gha-molecule-rabbitmq", "node", "mnesia", f"{node}.pid")
        subprocess.run(
            ["/usr/sbin/rabbitmqctl", "-q", "-n", node, "stop"]
            + ([pid_file] if os.path.exists(pid_file) else []),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(scratch, ignore_errors=True)


def test_molecule_guest_chroot(tmp_path) -> None:
    _require_root()
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import build_test_guest

    if not os.path.exists(build_test_guest.ROOTFS_TARBALL) and not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (scripts/bootstrap.sh)")
    _molecule("guest", "default", tmp_path)


@pytest.mark.c_guest
def test_molecule_guest_c_implementation(tmp_path) -> None:
    """The guest role with guest_ha_guest_implementation: c, idempotence included."""
    _require_root()
    _molecule("guest", "c", tmp_path)


def test_molecule_two_node(tmp_path) -> None:
    _require_root()
    _require_rabbitmq()
    if shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("openssh-server is not installed")
    _molecule("compute", "two-node", tmp_path)


def test_ansible_quality_gates(tmp_path) -> None:
    proc = _run([os.path.join(REPO, "scripts", "ansible_quality.sh")], REPO, _env(tmp_path), 900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout
    assert "== ansible quality gates passed" in proc.stdout
