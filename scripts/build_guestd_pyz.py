#!/usr/bin/env python3
"""Build the guest daemon as one self-contained zipapp.

Usage: ``python3 scripts/build_guestd_pyz.py OUT.pyz``

The archive holds ``guest_ha/__init__.py``, ``guest_ha/protocol/`` and
``guest_ha/guest/`` (standard library only) and a ``__main__`` that runs the
daemon, so ``python3 OUT.pyz --config /etc/guest-ha/guestd.conf`` works on a
guest with nothing but Python 3. ``python3 OUT.pyz health status`` runs the
``guest-ha-health`` CLI from the same file.

Each module is also there compiled (``mod.pyc`` next to ``mod.py``, checked
against the source by hash, so the bytes stay reproducible). Python cannot
write a bytecode cache into a zip file, so without them a guest compiles every
module again on each daemon start: seconds on a slow or emulated CPU. A guest
whose Python has another bytecode version ignores them and compiles as before.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import shutil
import sys
import tempfile
import zipapp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "agents", "guest_ha")
SUBPACKAGES = ("protocol", "guest")

MAIN = '''"""Run guest-ha-guestd (first argument 'health': guest-ha-health; 'sg': guest-ha-sg)."""
import sys

if len(sys.argv) > 1 and sys.argv[1] == "health":
    from guest_ha.guest.cli import health_main as main

    del sys.argv[1]
elif len(sys.argv) > 1 and sys.argv[1] == "sg":
    from guest_ha.guest.cli import sg_main as main

    del sys.argv[1]
else:
    from guest_ha.guest.daemon import main

sys.exit(main())
'''


REPRODUCIBLE_MTIME = 315532800  # 1980-01-01, the earliest time a zip file can hold


def _copy_sources(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name.endswith(".py"):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def _compile_all(stage: str) -> None:
    """``mod.pyc`` next to every ``mod.py`` (where zipimport looks for it)."""
    for root, _dirs, files in os.walk(stage):
        for name in sorted(files):
            if name.endswith(".py"):
                src = os.path.join(root, name)
                py_compile.compile(
                    src,
                    cfile=src + "c",
                    dfile=os.path.relpath(src, stage),
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
                )


def build(out: str, interpreter: str = "/usr/bin/env python3") -> str:
    """Write the zipapp to ``out`` and return its path."""
    with tempfile.TemporaryDirectory(prefix="guestd-pyz-") as stage:
        pkg = os.path.join(stage, "guest_ha")
        os.makedirs(pkg)
        shutil.copy2(os.path.join(PACKAGE, "__init__.py"), os.path.join(pkg, "__init__.py"))
        for sub in SUBPACKAGES:
            _copy_sources(os.path.join(PACKAGE, sub), os.path.join(pkg, sub))
        with open(os.path.join(stage, "__main__.py"), "w", encoding="utf-8") as f:
            f.write(MAIN)
        _compile_all(stage)
        # Fixed timestamps: the same sources always give the same bytes, so
        # deployments stay idempotent and images reproducible.
        for root, dirs, files in os.walk(stage, topdown=False):
            for name in files + dirs:
                os.utime(os.path.join(root, name), (REPRODUCIBLE_MTIME, REPRODUCIBLE_MTIME))
        out_dir = os.path.dirname(os.path.abspath(out))
        os.makedirs(out_dir, exist_ok=True)
        tmp_out = out + ".tmp"
        zipapp.create_archive(stage, tmp_out, interpreter=interpreter, compressed=True)
        os.replace(tmp_out, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build guest-ha-guestd as a single .pyz file.")
    parser.add_argument("out", help="output file, e.g. guestd.pyz")
    parser.add_argument(
        "--python", default="/usr/bin/env python3", help="interpreter line for the archive"
    )
    args = parser.parse_args(argv)
    path = build(args.out, args.python)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
