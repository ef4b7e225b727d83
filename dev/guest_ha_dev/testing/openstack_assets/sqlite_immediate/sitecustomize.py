"""Make oslo.db open SQLite transactions with ``BEGIN IMMEDIATE``.

Put on ``PYTHONPATH`` of the booting test cloud's services (``NovaCloud``).
Python imports ``sitecustomize`` at start-up; this one only registers an
import hook, and once ``oslo_db.sqlalchemy.engines`` is loaded (which has
imported SQLAlchemy by then) it adds one SQLAlchemy listener that rewrites the
``BEGIN`` oslo.db emits on SQLite connections into ``BEGIN IMMEDIATE``.

Why: oslo.db starts every transaction with a plain (deferred) ``BEGIN``, so a
writer transaction that first reads (``service_update``: ``SELECT`` then
``UPDATE``) holds only a read snapshot.  When another process commits to the
same file in between, SQLite refuses the upgrade to a write lock at once
(``SQLITE_BUSY_SNAPSHOT`` in WAL mode, deadlock avoidance in rollback mode):
"database is locked" in milliseconds, whatever the busy timeout.  With
``BEGIN IMMEDIATE`` the write lock is taken first, and a second writer waits
in the busy handler (``?timeout=``) instead of failing.

Runs inside the services' venvs: standard library and the service only.
"""

import importlib.abc
import importlib.machinery
import sys

_TARGET = "oslo_db.sqlalchemy.engines"


def _begin_immediate(conn, cursor, statement, parameters, context, executemany):
    if statement == "BEGIN" and conn.dialect.name == "sqlite":
        return "BEGIN IMMEDIATE", parameters
    return statement, parameters


def _install():
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "before_cursor_execute", _begin_immediate, retval=True)
    sys.stderr.write("[gha-sqlite-immediate] oslo.db SQLite transactions begin IMMEDIATE\n")


class _Hook(importlib.abc.MetaPathFinder):
    """Finds ``oslo_db.sqlalchemy.engines`` as usual, then installs the listener."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_install(module):
            exec_module(module)
            _install()

        spec.loader.exec_module = exec_and_install
        return spec


sys.meta_path.insert(0, _Hook())
