"""DB templates and post-install steps of the OpenStack services: schema-synced,
empty SQLite DBs built once per venv (each start copies them), and files a
wheel lacks, taken from the sdist."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .procs import CloudStartError, _clean_env, _run_logged, _write_ini


def _keystone_template(venv: Path, tpl: Path, log: Any) -> None:
    conf = tpl / "keystone.conf"
    _write_ini(conf, {"database": {"connection": f"sqlite:///{tpl / 'keystone.db'}"}})
    _run_logged(
        [str(venv / "bin" / "keystone-manage"), "--config-file", str(conf), "db_sync"],
        log,
        "keystone-manage db_sync (template)",
        env=_clean_env(),
    )
    conf.unlink()


def _nova_template(venv: Path, tpl: Path, log: Any) -> None:
    conf = tpl / "nova.conf"
    (tpl / "locks").mkdir(exist_ok=True)
    _write_ini(
        conf,
        {
            "DEFAULT": {"transport_url": "fake:/", "state_path": tpl},
            "api_database": {"connection": f"sqlite:///{tpl / 'nova_api.db'}"},
            "database": {"connection": f"sqlite:///{tpl / 'cell.db'}"},
            "oslo_concurrency": {"lock_path": tpl / "locks"},
        },
    )
    manage = [str(venv / "bin" / "nova-manage"), "--config-file", str(conf)]
    _run_logged(
        [*manage, "api_db", "sync"], log, "nova-manage api_db sync (template)", env=_clean_env()
    )
    # cell0 and cell1 share one schema: sync it once, copy it twice at start.
    _run_logged([*manage, "db", "sync"], log, "nova-manage db sync (template)", env=_clean_env())
    conf.unlink()
    shutil.rmtree(tpl / "locks", ignore_errors=True)


def _installed_version(venv: Path, dist: str) -> str:
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            f"import importlib.metadata as m; print(m.version({dist!r}))",
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        env=_clean_env(),
    )
    return out.stdout.strip()


def _files_from_sdist(
    venv: Path, cache: Path, dist: str, members: Sequence[str], dest: Path, log: Any
) -> None:
    """Copy ``members`` (paths inside the sdist below ``<dist>-<version>/``;
    a folder copies everything under it) of the installed release's sdist into
    ``dest``.  The wheels of Vitrage and Masakari lack ``etc/``."""
    import tarfile

    version = _installed_version(venv, dist)
    with tempfile.TemporaryDirectory(prefix=f"gha-sdist-{dist}-") as tmp:
        with open(venv.with_name(venv.name + ".install.log"), "a") as logf:
            _run_logged(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "download",
                    "--disable-pip-version-check",
                    "--cache-dir",
                    str(cache / "pip"),
                    "--no-binary",
                    ":all:",
                    "--no-deps",
                    "-d",
                    tmp,
                    f"{dist}=={version}",
                ],
                logf,
                f"pip download {dist} sdist",
                env=_clean_env(),
            )
        archives = [f for f in os.listdir(tmp) if f.endswith(".tar.gz")]
        if not archives:
            raise CloudStartError(f"no sdist of {dist}=={version} downloaded")
        prefix = f"{dist}-{version}/"
        with tarfile.open(os.path.join(tmp, archives[0])) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix) :]
                for wanted in members:
                    if rel == wanted or rel.startswith(wanted.rstrip("/") + "/"):
                        target = dest / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source = tar.extractfile(member)
                        assert source is not None
                        target.write_bytes(source.read())
    log(f"copied {', '.join(members)} from the {dist} {version} sdist")


def _vitrage_post_install(venv: Path, cache: Path, log: Any) -> None:
    _files_from_sdist(
        venv,
        cache,
        "vitrage",
        ["etc/vitrage/api-paste.ini", "etc/vitrage/datasources_values"],
        venv,
        log,
    )


def _masakari_post_install(venv: Path, cache: Path, log: Any) -> None:
    _files_from_sdist(venv, cache, "masakari", ["etc/masakari/api-paste.ini"], venv, log)


def _fix_vitrage_events_table(db: Path) -> None:
    """Vitrage declares ``events.id`` as BigInteger autoincrement, which SQLite
    does not auto-number (inserts then fail with NOT NULL on ``id``); recreate
    the table with ``INTEGER PRIMARY KEY AUTOINCREMENT``, same columns."""
    import sqlite3

    con = sqlite3.connect(str(db))
    try:
        info = list(con.execute("PRAGMA table_info(events)"))
        if not info:
            raise CloudStartError(f"vitrage DB {db} has no events table")
        columns = []
        for _cid, name, ctype, notnull, _default, _pk in info:
            if name == "id":
                columns.append("id INTEGER PRIMARY KEY AUTOINCREMENT")
            else:
                columns.append(f"{name} {ctype}{' NOT NULL' if notnull else ''}")
        names = ", ".join(row[1] for row in info)
        con.executescript(
            f"""
            ALTER TABLE events RENAME TO events_old;
            CREATE TABLE events ({", ".join(columns)});
            INSERT INTO events ({names}) SELECT {names} FROM events_old;
            DROP TABLE events_old;
            """
        )
        con.commit()
    finally:
        con.close()


def _vitrage_template(venv: Path, tpl: Path, log: Any) -> None:
    conf = tpl / "vitrage.conf"
    _write_ini(
        conf,
        {
            "DEFAULT": {"transport_url": "fake:/"},
            "database": {"connection": f"sqlite:///{tpl / 'vitrage.db'}"},
        },
    )
    _run_logged(
        [str(venv / "bin" / "vitrage-dbsync"), "--config-file", str(conf)],
        log,
        "vitrage-dbsync (template)",
        env=_clean_env(),
    )
    _fix_vitrage_events_table(tpl / "vitrage.db")
    conf.unlink()


def _masakari_template(venv: Path, tpl: Path, log: Any) -> None:
    conf = tpl / "masakari.conf"
    _write_ini(
        conf,
        {
            "DEFAULT": {"transport_url": "fake:/"},
            "database": {"connection": f"sqlite:///{tpl / 'masakari.db'}"},
            # `masakari-manage db sync` also builds the taskflow tables and
            # fails without this, even though only the engine uses them.
            "taskflow": {"connection": f"sqlite:///{tpl / 'masakari.db'}"},
        },
    )
    _run_logged(
        [str(venv / "bin" / "masakari-manage"), "--config-file", str(conf), "db", "sync"],
        log,
        "masakari-manage db sync (template)",
        env=_clean_env(),
    )
    conf.unlink()


def _placement_template(venv: Path, tpl: Path, log: Any) -> None:
    conf = tpl / "placement.conf"
    _write_ini(conf, {"placement_database": {"connection": f"sqlite:///{tpl / 'placement.db'}"}})
    _run_logged(
        [str(venv / "bin" / "placement-manage"), "--config-file", str(conf), "db", "sync"],
        log,
        "placement-manage db sync (template)",
        env=_clean_env(),
    )
    conf.unlink()


def _glance_template(venv: Path, tpl: Path, log: Any) -> None:
    conf = tpl / "glance-api.conf"
    _write_ini(conf, {"database": {"connection": f"sqlite:///{tpl / 'glance.db'}"}})
    _run_logged(
        [str(venv / "bin" / "glance-manage"), "--config-file", str(conf), "db_sync"],
        log,
        "glance-manage db_sync (template)",
        env=_clean_env(),
    )
    conf.unlink()


def _aodh_template(venv: Path, tpl: Path, log: Any) -> None:
    conf = tpl / "aodh.conf"
    _write_ini(
        conf,
        {
            "DEFAULT": {"transport_url": "fake:/"},
            "database": {"connection": f"sqlite:///{tpl / 'aodh.db'}"},
        },
    )
    _run_logged(
        [str(venv / "bin" / "aodh-dbsync"), "--config-file", str(conf)],
        log,
        "aodh-dbsync (template)",
        env=_clean_env(),
    )
    conf.unlink()
