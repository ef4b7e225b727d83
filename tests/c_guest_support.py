"""Build the C guest (agents/guest-c) once per test session, from a clean tree.

``make`` runs with the project's warning flags (-Wall -Wextra -Werror), into a
private build directory, so parallel worktrees and runs never share objects.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from typing import Dict, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(REPO, "agents", "guest-c")
_built: Dict[str, str] = {}


def build_c_guest(target: str = "all", build_dir: Optional[str] = None) -> str:
    """Run ``make <target>`` in agents/guest-c; return the build directory."""
    key = f"{target}:{build_dir}"
    if key in _built:
        return _built[key]
    out = build_dir
    if out is None:
        out = tempfile.mkdtemp(prefix="gha-cbuild-")
        atexit.register(shutil.rmtree, out, True)
    proc = subprocess.run(
        ["make", "-C", C_DIR, f"BUILD={out}", target],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make {target} failed:\n{proc.stdout}\n{proc.stderr}")
    _built[key] = out
    return out


def c_guestd() -> str:
    """Path of the freshly built C ``guest-ha-guestd`` (``GHA_C_GUESTD`` overrides it,
    e.g. with a sanitizer build: ``make sanitize`` puts one in build/san/)."""
    if os.environ.get("GHA_C_GUESTD"):
        return os.environ["GHA_C_GUESTD"]
    return os.path.join(build_c_guest("guestd"), "guest-ha-guestd")
