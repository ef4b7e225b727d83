"""The venv cache: each OpenStack service in its own virtualenv under
``<cache>/openstack/<name>-venv``, built once under a file lock and reused
while its marker matches the pinned requirements."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from .db_templates import (
    _aodh_template,
    _glance_template,
    _keystone_template,
    _masakari_post_install,
    _masakari_template,
    _nova_template,
    _placement_template,
    _vitrage_post_install,
    _vitrage_template,
)
from .procs import _log, _run_logged


@dataclass(frozen=True)
class ServiceSpec:
    """How to install (and prepare) one OpenStack service in its own venv.

    ``post_install(venv_dir, cache_dir, log)`` runs once after pip, for files the
    wheel does not ship (Vitrage and Masakari need ``api-paste.ini`` from their
    sdists: ``pip download --no-binary :all: --no-deps NAME==VERSION``).
    Bump ``revision`` when the post-install steps change, so cached venvs are
    rebuilt.
    """

    name: str
    requirements: Tuple[str, ...]
    post_install: Optional[Callable[[Path, Path, Callable[[str], None]], None]] = None
    #: ``db_template(venv_dir, template_dir, log)`` builds schema-synced, empty
    #: SQLite DBs once per venv (the service's own ``*-manage db sync``), so
    #: each start copies files instead of re-running every migration.
    db_template: Optional[Callable[[Path, Path, Any], None]] = None
    revision: int = 1

    def fingerprint(self) -> str:
        text = json.dumps(
            {
                "requirements": list(self.requirements),
                "revision": self.revision,
                "python": list(sys.version_info[:2]),
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_MARKER = ".guest-ha-installed"
_TEMPLATES = ".gha-db-templates"


def _repo_root() -> Optional[Path]:
    here = Path(__file__).resolve()
    for parent in here.parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and 'name = "guest-ha"' in pyproject.read_text(errors="replace"):
            return parent
    return None


def cache_dir() -> Path:
    """``$GUEST_HA_CACHE_DIR``, else ``<repo>/.cache``, else ``~/.cache/guest-ha``."""
    env = os.environ.get("GUEST_HA_CACHE_DIR")
    if env:
        return Path(env)
    root = _repo_root()
    if root is not None:
        return root / ".cache"
    return Path.home() / ".cache" / "guest-ha"


@contextlib.contextmanager
def _file_lock(path: Path, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            _log(f"waiting for another run that holds the lock on {what}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _venv_dir(name: str, cache: Optional[Path] = None) -> Path:
    return (cache or cache_dir()) / "openstack" / f"{name}-venv"


def ensure_venv(name: str, *, cache: Optional[Path] = None) -> Path:
    """Return the venv of service ``name``, building it first if needed.

    Safe to call from concurrent processes: a lock file serialises builders, and
    a marker file (requirements fingerprint) written last says the venv is whole.
    A venv whose marker is missing or stale is removed and rebuilt.
    """
    spec = SERVICES[name]
    cache = cache or cache_dir()
    venv = _venv_dir(name, cache)
    marker = venv / _MARKER
    wanted = spec.fingerprint()
    if marker.is_file() and marker.read_text().strip() == wanted:
        _repair_shebangs(venv)
        return venv
    with _file_lock(venv.with_name(venv.name + ".lock"), f"{name} venv"):
        if marker.is_file() and marker.read_text().strip() == wanted:
            _repair_shebangs(venv)
            return venv
        started = time.monotonic()
        _log(
            f"installing {name} into {venv} ({' '.join(spec.requirements)}); "
            "this takes 10-60 s on a first run"
        )
        if venv.exists():
            shutil.rmtree(venv)
        log_path = venv.with_name(venv.name + ".install.log")
        with open(log_path, "w") as log:
            _run_logged([sys.executable, "-m", "venv", str(venv)], log, f"venv for {name}")
            _run_logged(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--cache-dir",
                    str(cache / "pip"),
                    *spec.requirements,
                ],
                log,
                f"pip install for {name}",
                timeout=1800,
            )
            if spec.post_install is not None:
                spec.post_install(venv, cache, _log)
        marker.write_text(wanted + "\n")
        _log(f"installed {name} in {time.monotonic() - started:.1f} s")
    return venv


def _repair_shebangs(venv: Path) -> None:
    """Point the scripts of a venv that was built elsewhere and moved (a cache
    copied from another checkout) at this venv's python: pip writes the
    absolute interpreter path into each script, and a missing one makes the
    script fail with ``FileNotFoundError``.  Each script is replaced whole."""
    python = venv.resolve() / "bin" / "python"
    for script in (venv / "bin").iterdir():
        if not script.is_file() or script.is_symlink():
            continue
        with open(script, "rb") as handle:
            first = handle.readline(512)
        if not first.startswith(b"#!") or not first.rstrip().endswith(
            (b"/bin/python", b"/bin/python3")
        ):
            continue
        interpreter = Path(first[2:].strip().decode(errors="replace"))
        if interpreter.exists():
            continue
        rest = script.read_bytes()[len(first) :]
        tmp = script.with_name(f".{script.name}.{os.getpid()}.tmp")
        tmp.write_bytes(b"#!" + str(python).encode() + b"\n" + rest)
        tmp.chmod(script.stat().st_mode)
        os.replace(tmp, script)


def ensure_venvs(names: Sequence[str], *, cache: Optional[Path] = None) -> Dict[str, Path]:
    """``ensure_venv`` + ``db_template_dir`` for several services, in parallel."""
    results: Dict[str, Path] = {}
    errors: List[BaseException] = []

    def work(name: str) -> None:
        try:
            results[name] = ensure_venv(name, cache=cache)
            db_template_dir(name, cache=cache)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


#: Pinned per ENVIRONMENT.md: Keystone 30, Nova 34, Vitrage 15.0.1 and
#: Masakari 22 are what pip resolves on Debian 12's Python 3.11 and what was
#: tried on this machine.  Vitrage needs ``networkx<3.6`` (3.6 breaks its
#: topology API with ``KeyError: 'links'``) and ``python-novaclient`` for its
#: ``nova.*`` datasources.
SERVICES: Dict[str, ServiceSpec] = {
    "keystone": ServiceSpec(
        "keystone", ("keystone>=30,<31", "gunicorn>=22"), db_template=_keystone_template
    ),
    "nova": ServiceSpec("nova", ("nova>=34,<35", "gunicorn>=22"), db_template=_nova_template),
    "vitrage": ServiceSpec(
        "vitrage",
        ("vitrage==15.0.1", "networkx<3.6", "python-novaclient", "gunicorn>=22"),
        post_install=_vitrage_post_install,
        db_template=_vitrage_template,
    ),
    "masakari": ServiceSpec(
        "masakari",
        ("masakari>=22,<23", "gunicorn>=22"),
        post_install=_masakari_post_install,
        db_template=_masakari_template,
    ),
    # The booting cloud (guest_ha_dev.testing.nova_cloud): placement, glance, and
    # nova-compute's own venv (Nova plus the libvirt bindings, built from sdist
    # against libvirt-dev), so the shared "nova" venv stays as it is.
    "placement": ServiceSpec(
        "placement",
        ("openstack-placement>=16,<17", "gunicorn>=22"),
        db_template=_placement_template,
    ),
    "glance": ServiceSpec(
        "glance", ("glance>=33,<34", "gunicorn>=22"), db_template=_glance_template
    ),
    "nova-compute": ServiceSpec("nova-compute", ("nova>=34,<35", "libvirt-python")),
    # The telemetry path (guest_ha_dev.testing.telemetry): Nova 34's release
    # series is Aodh 23 and Ceilometer 27 (shared/openstack/doctor-chain.md).
    "aodh": ServiceSpec("aodh", ("aodh>=23,<24", "gunicorn>=22"), db_template=_aodh_template),
    "ceilometer": ServiceSpec("ceilometer", ("ceilometer>=27,<28",)),
    # Masakari's own introspective instance monitor (bench/vs_masakari.py).
    "masakari-monitors": ServiceSpec("masakari-monitors", ("masakari-monitors", "libvirt-python")),
}


def db_template_dir(name: str, *, cache: Optional[Path] = None) -> Path:
    """Schema-synced empty DBs of service ``name``, built on first use.

    They live inside the service venv, so rebuilding the venv drops them.
    """
    spec = SERVICES[name]
    venv = ensure_venv(name, cache=cache)
    tpl = venv / _TEMPLATES
    done = tpl / ".complete"
    if spec.db_template is None or done.is_file():
        return tpl
    with _file_lock(venv.with_name(venv.name + ".lock"), f"{name} DB template"):
        if done.is_file():
            return tpl
        started = time.monotonic()
        shutil.rmtree(tpl, ignore_errors=True)
        tpl.mkdir(parents=True)
        with open(venv.with_name(venv.name + ".template.log"), "w") as log:
            spec.db_template(venv, tpl, log)
        done.write_text("ok\n")
        _log(f"built {name} DB template in {time.monotonic() - started:.1f} s")
    return tpl
