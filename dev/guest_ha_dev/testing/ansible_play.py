"""Run one of the project's roles on this machine (connection local) from a
throw-away playbook, with the repository's ansible.cfg and a private
``ANSIBLE_HOME``; return the play recap's counters."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Mapping

__all__ = ["REPO", "run_role"]

REPO = Path(__file__).resolve().parents[3]

PLAYBOOK = """- name: guest-ha role {role}, entry point {entry}
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Include the role
      ansible.builtin.include_role:
        name: {role}
        tasks_from: {entry}
"""


def run_role(
    role: str, entry: str, extra: Mapping[str, Any], workdir: Path, *flags: str
) -> Dict[str, int]:
    """``ansible-playbook`` of ``role``'s ``entry`` tasks with ``extra`` vars;
    fails (AssertionError with the output's tail) unless it succeeds."""
    bindir = os.path.dirname(sys.executable)
    play = workdir / f"play-{role}-{entry}.yml"
    play.write_text(PLAYBOOK.format(role=role, entry=entry))
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
    }
    variables = {"ansible_python_interpreter": sys.executable, **extra}
    proc = subprocess.run(
        [
            os.path.join(bindir, "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            json.dumps(variables),
            *flags,
            str(play),
        ],
        cwd=str(REPO),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    match = re.search(r"^localhost\s*:\s*(.*)$", out, re.MULTILINE)
    assert match, out[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
