"""Running a long command from a test (playbooks, Molecule, the all-in-one) with
its outcome and duration on stderr, so a CI log shows where the time went."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence


def run_logged(
    argv: Sequence[str],
    cwd: str,
    timeout: float,
    env: Optional[Mapping[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` (stdout and stderr together in ``.stdout``); never raises on failure."""
    t0 = time.monotonic()
    proc = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    took = time.monotonic() - t0
    sys.stderr.write(f"{' '.join(argv)} in {cwd}: rc={proc.returncode}, {took:.0f} s\n")
    return proc
