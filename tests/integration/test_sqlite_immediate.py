"""The booting test cloud's SQLite fix (``openstack_assets/sqlite_immediate``),
run with the real oslo.db and SQLAlchemy of the cached nova venv.

oslo.db begins transactions with a deferred ``BEGIN``: a transaction that read
and then writes, after another connection committed, gets "database is locked"
at once (WAL: ``SQLITE_BUSY_SNAPSHOT``), busy timeout or not.  With the hook on
``PYTHONPATH`` the transaction holds the write lock from its ``BEGIN`` and the
other writer waits instead.  Both halves are checked, so the test fails if the
hook stops working or the failure mode it fixes stops being real."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from guest_ha_dev.testing.nova_cloud import NovaCloud
from guest_ha_dev.testing.venv_cache import ensure_venv

pytestmark = pytest.mark.integration

# A reads, B (another thread, its own connection) adds 10 and commits, A adds 1.
SCRIPT = r"""
import json, sqlite3, sys, threading, time
import sqlalchemy as sa
from oslo_db.sqlalchemy import engines

path = sys.argv[1]
db = sqlite3.connect(path)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
db.execute("INSERT INTO t VALUES (1, 0)")
db.commit()
db.close()
engine = engines.create_engine(f"sqlite:///{path}?timeout=30")
begins = []
sa.event.listen(engine, "after_cursor_execute",
                lambda c, cur, stmt, *a: begins.append(stmt) if stmt.startswith("BEGIN") else None)
out = {}

def b_adds_ten():
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE t SET n = n + 10"))
    out["b_done_at"] = time.monotonic()

with engine.connect() as a:
    tx = a.begin()
    n = a.execute(sa.text("SELECT n FROM t")).scalar()
    b = threading.Thread(target=b_adds_ten)
    b.start()
    b.join(1.0)
    out["b_committed_while_a_open"] = not b.is_alive()
    started = time.monotonic()
    try:
        a.execute(sa.text("UPDATE t SET n = :n"), {"n": n + 1})
        tx.commit()
        out["a_error"] = None
    except Exception as exc:
        tx.rollback()
        out["a_error"] = str(exc).splitlines()[0]
    out["a_error_after_s"] = round(time.monotonic() - started, 3)
    b.join(30)
with engine.connect() as conn:
    out["n"] = conn.execute(sa.text("SELECT n FROM t")).scalar()
out["begins"] = sorted(set(begins))
print(json.dumps(out))
"""


def _run(venv: str, db: str, hook: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    if hook:
        env.update(NovaCloud.SQLITE_ENV)
    proc = subprocess.run(
        [os.path.join(venv, "bin", "python"), "-c", SCRIPT, db],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_deferred_begin_fails_at_once_and_begin_immediate_waits(tmp_path) -> None:
    venv = str(ensure_venv("nova"))
    plain = _run(venv, str(tmp_path / "plain.db"), hook=False)
    assert plain["begins"] == ["BEGIN"]
    assert plain["b_committed_while_a_open"] is True
    assert "database is locked" in plain["a_error"]
    assert plain["a_error_after_s"] < 5  # not the 30 s busy timeout: no waiting at all
    assert plain["n"] == 10

    fixed = _run(venv, str(tmp_path / "fixed.db"), hook=True)
    assert fixed["begins"] == ["BEGIN IMMEDIATE"]
    assert fixed["b_committed_while_a_open"] is False  # B waited for A's lock
    assert fixed["a_error"] is None
    assert fixed["n"] == 11  # A's 1, then B's 10: nothing lost, nothing failed
