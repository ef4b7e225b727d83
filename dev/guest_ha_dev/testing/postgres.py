"""A private PostgreSQL server for tests: Debian's ``postgresql`` binaries, its
own data folder, socket folder and TCP port on 127.0.0.1, started and stopped
by the test itself (never the system cluster).

Example::

    with PostgresServer() as pg:
        pg.create_database("guest_ha")
        url = pg.url("guest_ha")   # postgresql://guest_ha@127.0.0.1:PORT/guest_ha

PostgreSQL refuses to run as root: as root, ``initdb`` and the server run as
the ``postgres`` user (``subprocess`` ``user=``), which owns the private
folder.  Authentication is ``trust`` on loopback (tests only).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from . import free_port

APT_PACKAGE = "postgresql"
PG_USER = "postgres"


class PostgresError(RuntimeError):
    """The private server could not be set up, started or stopped."""


def pg_bin_dir() -> Path:
    """``/usr/lib/postgresql/<newest>/bin``; installs the package with apt when missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", APT_PACKAGE],
            env=env,
            capture_output=True,
            check=False,
        )
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise PostgresError(f"{APT_PACKAGE} is not installed: apt-get install -y {APT_PACKAGE}")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self, base_dir: Optional[str] = None, listen: Sequence[str] = ()) -> None:
        #: Extra addresses to listen on and trust (e.g. a test's veth addresses).
        self.listen = list(listen)
        self.port = free_port()
        self._own_dir = base_dir is None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix="gha-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.log = self.dir / "postgres.log"
        self.bin = pg_bin_dir()
        self._started = False

    def _kwargs(self) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {"capture_output": True, "text": True, "cwd": str(self.dir)}
        if os.geteuid() == 0:
            kwargs.update(user=PG_USER, group=PG_USER, extra_groups=[])
        return kwargs

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]], timeout=timeout, **self._kwargs()
        )
        if res.returncode != 0:
            raise PostgresError(f"{argv[0]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def start(self) -> "PostgresServer":
        self.sock.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            for path in (self.dir, self.sock):
                shutil.chown(path, PG_USER, PG_USER)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", PG_USER, "-A", "trust", "-E", "UTF8")
            with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as fh:
                for addr in self.listen:  # the peers on those links (tests only)
                    fh.write(f"host all all {addr.rsplit('.', 1)[0]}.0/24 trust\n")
        addrs = ",".join(["127.0.0.1", *self.listen])
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses={addrs} -c fsync=on"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")
        self._started = True
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            "psql", "-h", str(self.sock), "-p", str(self.port), "-U", PG_USER,
            "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql,
        ).stdout  # fmt: skip

    def create_database(self, name: str, owner: Optional[str] = None) -> None:
        owner = owner or name
        self.psql(f'CREATE ROLE "{owner}" LOGIN')
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')

    def url(
        self,
        database: str,
        user: Optional[str] = None,
        driver: str = "postgresql",
        address: str = "127.0.0.1",
    ) -> str:
        return f"{driver}://{user or database}@{address}:{self.port}/{database}"

    def stop(self) -> None:
        if self._started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self._started = False

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
