"""guestd.pyz carries compiled modules next to their sources: a guest whose
Python has the same bytecode version starts the daemon without compiling it, and
any other Python falls back to the sources."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "scripts", "build_guestd_pyz.py")

# co_filename of the daemon's main(): relative when it came from the .pyc,
# inside the archive's path when zipimport compiled the .py.
PROBE = (
    "import sys; sys.path.insert(0, sys.argv[1]); import guest_ha.guest.daemon as d; "
    "print(d.main.__code__.co_filename)"
)


def _build(path: str) -> str:
    subprocess.run([sys.executable, BUILD, path], check=True, capture_output=True)
    return path


def _loaded_from(pyz: str) -> str:
    out = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, pyz], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def test_every_module_has_checked_bytecode_and_builds_are_reproducible(tmp_path) -> None:
    a = _build(str(tmp_path / "a.pyz"))
    b = _build(str(tmp_path / "b.pyz"))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    with zipfile.ZipFile(a) as zf:
        names = set(zf.namelist())
        sources = {n for n in names if n.endswith(".py")}
        assert "guest_ha/guest/daemon.py" in sources
        for src in sources:
            pyc = zf.read(src + "c")
            assert pyc[:4] == importlib.util.MAGIC_NUMBER, src
            assert int.from_bytes(pyc[4:8], "little") == 0b11, src  # hash-based, checked


def test_daemon_modules_load_from_bytecode_and_fall_back_to_source(tmp_path) -> None:
    pyz = _build(str(tmp_path / "guestd.pyz"))
    assert _loaded_from(pyz) == os.path.join("guest_ha", "guest", "daemon.py")
    # Another Python's bytecode (a different magic number): ignored, source compiled.
    other = str(tmp_path / "other.pyz")
    with zipfile.ZipFile(pyz) as src, zipfile.ZipFile(other, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".pyc"):
                data = b"\x00\x00" + data[2:]
            dst.writestr(info, data)
    assert _loaded_from(other) == os.path.join(other, "guest_ha", "guest", "daemon.py")
