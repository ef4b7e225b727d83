"""Durable event store of the controller: de-duplication, delivery bookkeeping.

An event is acknowledged to the compute agent only after it is committed here
(SQLite, WAL, ``synchronous=FULL``), together with one delivery row per enabled
reporter. Dispatchers claim deliveries with a lease inside ``BEGIN IMMEDIATE``
transactions, so several controller processes sharing the database file work
active-active: each delivery is claimed by one of them at a time, and a
controller that dies mid-report loses only its lease. Deliveries of one
instance to one reporter go out in the order the events were received.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    instance_uuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    fault INTEGER NOT NULL,
    compute_host TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT NOT NULL REFERENCES events(key),
    reporter TEXT NOT NULL,
    state TEXT NOT NULL,          -- pending, done, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    done_at REAL,
    PRIMARY KEY (key, reporter)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(state, next_attempt);
"""


#: Instances whose latest fault-or-recovery event is a fault: their active
#: fault, for ``GET /v1/active-faults`` (the Vitrage datasource's ``get_all``).
ACTIVE_FAULTS_SQL = (
    "SELECT e.body FROM events e JOIN (SELECT instance_uuid, MAX(seq) AS seq FROM events"
    " WHERE fault = 1 OR kind = 'recovered' GROUP BY instance_uuid) last ON e.seq = last.seq"
    " WHERE e.fault = 1 ORDER BY e.seq"
)


@dataclass(frozen=True)
class Delivery:
    key: str
    reporter: str
    attempts: int
    event: Dict[str, Any]
    received_at: float


class EventStore:
    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._local = threading.local()
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # Delivery bookkeeping survives process crashes in WAL mode with NORMAL;
            # accepting events switches to FULL (see accept_many).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db())

    def accept(self, event: Dict[str, Any], reporters: Iterable[str], host: str) -> bool:
        """Persist ``event`` (idempotent on its key); return False for a duplicate."""
        return self.accept_many([event], reporters, host)[0]

    def accept_many(
        self, events: List[Dict[str, Any]], reporters: Iterable[str], host: str
    ) -> List[bool]:
        """Persist ``events`` in one durable transaction; per event, False for a duplicate.

        This commit is what the compute agent's acknowledgement stands on, so
        it is fsynced (``synchronous=FULL``) even where bookkeeping is not.
        """
        names = list(reporters)
        now = self.clock()
        fresh: List[bool] = []
        db = self._db()
        db.execute("PRAGMA synchronous=FULL")
        try:
            with self._tx() as db:
                for event in events:
                    fresh.append(self._insert(db, event, names, host, now))
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return fresh

    @staticmethod
    def _insert(
        db: sqlite3.Connection, event: Dict[str, Any], names: List[str], host: str, now: float
    ) -> bool:
        key = str(event["idempotency_key"])
        cur = db.execute(
            "INSERT OR IGNORE INTO events (key, instance_uuid, kind, fault, compute_host,"
            " body, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                str(event["instance_uuid"]),
                str(event["kind"]),
                1 if event.get("fault") else 0,
                host,
                json.dumps(event, separators=(",", ":")),
                now,
            ),
        )
        if cur.rowcount == 0:
            return False
        db.executemany(
            "INSERT INTO deliveries (key, reporter, state, next_attempt)"
            " VALUES (?, ?, 'pending', ?)",
            [(key, name, now) for name in names],
        )
        return True

    def claim(
        self, owner: str, lease_s: float, limit: int = 16, reporter: Optional[str] = None
    ) -> List[Delivery]:
        """Lease due deliveries whose earlier siblings (same instance and reporter)
        are all delivered."""
        now = self.clock()
        with self._tx() as db:
            rows = db.execute(
                """
                SELECT d.key, d.reporter, d.attempts, e.body, e.received_at
                FROM deliveries d JOIN events e ON e.key = d.key
                WHERE d.state = 'pending' AND d.next_attempt <= ? AND (? IS NULL OR d.reporter = ?)
                  AND (d.lease_until IS NULL OR d.lease_until < ?)
                  AND NOT EXISTS (
                    SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.key = d2.key
                    WHERE d2.reporter = d.reporter AND d2.state = 'pending'
                      AND e2.instance_uuid = e.instance_uuid AND e2.seq < e.seq)
                ORDER BY e.seq LIMIT ?
                """,
                (now, reporter, reporter, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE deliveries SET lease_owner = ?, lease_until = ? "
                "WHERE key = ? AND reporter = ?",
                [(owner, now + lease_s, r[0], r[1]) for r in rows],
            )
        return [Delivery(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def complete(self, delivery: Delivery) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'done', done_at = ?, attempts = attempts + 1,"
                " lease_owner = NULL, lease_until = NULL WHERE key = ? AND reporter = ?",
                (self.clock(), delivery.key, delivery.reporter),
            )

    def retry(self, delivery: Delivery, error: str, delay_s: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt = ?,"
                " last_error = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE key = ? AND reporter = ?",
                (self.clock() + delay_s, error[:1000], delivery.key, delivery.reporter),
            )

    def give_up(self, delivery: Delivery, error: str) -> None:
        """A permanent failure (the reporter says retrying cannot help)."""
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'failed', attempts = attempts + 1,"
                " last_error = ?, done_at = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE key = ? AND reporter = ?",
                (error[:1000], self.clock(), delivery.key, delivery.reporter),
            )

    def next_due(self) -> Optional[float]:
        row = (
            self._db()
            .execute("SELECT MIN(next_attempt) FROM deliveries WHERE state = 'pending'")
            .fetchone()
        )
        return row[0] if row else None

    def stats(self) -> Dict[str, Any]:
        db = self._db()
        by_state = dict(
            db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        )
        by_kind = dict(
            db.execute("SELECT kind, COUNT(*) FROM events WHERE fault = 1 GROUP BY kind").fetchall()
        )
        recent = [
            {"instance_uuid": r[0], "kind": r[1], "compute_host": r[2], "received_at": r[3]}
            for r in db.execute(
                "SELECT instance_uuid, kind, compute_host, received_at FROM events"
                " WHERE fault = 1 ORDER BY seq DESC LIMIT 20"
            ).fetchall()
        ]
        return {"deliveries": by_state, "faults_by_kind": by_kind, "recent_faults": recent}

    def active_faults(self) -> List[Dict[str, Any]]:
        """The latest fault of each instance whose last fault-or-recovery
        event is a fault (oldest first)."""
        db = self._db()
        return [json.loads(r[0]) for r in db.execute(ACTIVE_FAULTS_SQL).fetchall()]


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
