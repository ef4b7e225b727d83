"""The event store on a shared SQL server (PostgreSQL) through oslo.db, for
controllers on separate hosts.  Same contract as ``store.EventStore`` (SQLite):

- an event is committed (de-duplicated on its key, one delivery per reporter)
  before the compute agent gets its acknowledgement;
- deliveries are leased in transactions that lock the rows they take
  (``FOR UPDATE SKIP LOCKED``), so two controllers never hold one delivery,
  and a delivery waits while an earlier one of the same instance and reporter
  is pending (in order per instance);
- a controller that dies loses only its leases.

``[controller] database`` selects it with a URL:
``postgresql+psycopg2://USER:PASSWORD@HOST:5432/guest_ha``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

from .store import ACTIVE_FAULTS_SQL, Delivery

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        seq BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        instance_uuid TEXT NOT NULL,
        kind TEXT NOT NULL,
        fault INTEGER NOT NULL,
        compute_host TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        key TEXT NOT NULL REFERENCES events(key),
        reporter TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION,
        last_error TEXT,
        done_at DOUBLE PRECISION,
        PRIMARY KEY (key, reporter))""",
    "CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(state, next_attempt)",
    "CREATE INDEX IF NOT EXISTS events_instance ON events(instance_uuid, seq)",
]

_CLAIM = """
SELECT d.key, d.reporter, d.attempts, e.body, e.received_at
FROM deliveries d JOIN events e ON e.key = d.key
WHERE d.state = 'pending' AND d.next_attempt <= :now
  AND (CAST(:reporter AS TEXT) IS NULL OR d.reporter = :reporter)
  AND (d.lease_until IS NULL OR d.lease_until < :now)
  AND NOT EXISTS (
    SELECT 1 FROM deliveries d2 JOIN events e2 ON e2.key = d2.key
    WHERE d2.reporter = d.reporter AND d2.state = 'pending'
      AND e2.instance_uuid = e.instance_uuid AND e2.seq < e.seq)
ORDER BY e.seq LIMIT :limit
FOR UPDATE OF d SKIP LOCKED
"""


def is_url(database: str) -> bool:
    return "://" in database


class SqlEventStore:
    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        from oslo_db.sqlalchemy import engines
        from sqlalchemy import text

        if not url.startswith("postgresql"):
            raise ValueError(f"[controller] database: only PostgreSQL URLs are supported: {url}")
        self._text = text
        self.clock = clock
        # oslo.db: connection pool, reconnect on a dropped connection, retries at start.
        self.engine = engines.create_engine(url, max_retries=30, retry_interval=1)
        with self.engine.begin() as conn:
            # One controller at a time creates the schema.
            conn.execute(text("SELECT pg_advisory_xact_lock(7152015)"))
            for statement in SCHEMA:
                conn.execute(text(statement))

    def accept(self, event: Dict[str, Any], reporters: Iterable[str], host: str) -> bool:
        return self.accept_many([event], reporters, host)[0]

    def accept_many(
        self, events: List[Dict[str, Any]], reporters: Iterable[str], host: str
    ) -> List[bool]:
        """Commit ``events`` in one transaction; per event, False for a duplicate."""
        text = self._text
        names = list(reporters)
        now = self.clock()
        fresh: List[bool] = []
        with self.engine.begin() as conn:
            for event in events:
                key = str(event["idempotency_key"])
                row = conn.execute(
                    text(
                        "INSERT INTO events (key, instance_uuid, kind, fault, compute_host,"
                        " body, received_at) VALUES (:key, :uuid, :kind, :fault, :host,"
                        " :body, :now) ON CONFLICT (key) DO NOTHING RETURNING seq"
                    ),
                    {
                        "key": key,
                        "uuid": str(event["instance_uuid"]),
                        "kind": str(event["kind"]),
                        "fault": 1 if event.get("fault") else 0,
                        "host": host,
                        "body": json.dumps(event, separators=(",", ":")),
                        "now": now,
                    },
                ).first()
                fresh.append(row is not None)
                if row is not None and names:
                    conn.execute(
                        text(
                            "INSERT INTO deliveries (key, reporter, state, next_attempt)"
                            " VALUES (:key, :reporter, 'pending', :now)"
                        ),
                        [{"key": key, "reporter": n, "now": now} for n in names],
                    )
        return fresh

    def claim(
        self, owner: str, lease_s: float, limit: int = 16, reporter: Optional[str] = None
    ) -> List[Delivery]:
        text = self._text
        now = self.clock()
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(_CLAIM), {"now": now, "reporter": reporter, "limit": limit}
            ).fetchall()
            if rows:
                conn.execute(
                    text(
                        "UPDATE deliveries SET lease_owner = :owner, lease_until = :until"
                        " WHERE key = :key AND reporter = :reporter"
                    ),
                    [
                        {"owner": owner, "until": now + lease_s, "key": r[0], "reporter": r[1]}
                        for r in rows
                    ],
                )
        return [Delivery(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

    def _update(self, sql: str, delivery: Delivery, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                self._text(sql + " WHERE key = :key AND reporter = :reporter"),
                {"key": delivery.key, "reporter": delivery.reporter, **params},
            )

    def complete(self, delivery: Delivery) -> None:
        self._update(
            "UPDATE deliveries SET state = 'done', done_at = :now, attempts = attempts + 1,"
            " lease_owner = NULL, lease_until = NULL",
            delivery,
            now=self.clock(),
        )

    def retry(self, delivery: Delivery, error: str, delay_s: float) -> None:
        self._update(
            "UPDATE deliveries SET attempts = attempts + 1, next_attempt = :next,"
            " last_error = :error, lease_owner = NULL, lease_until = NULL",
            delivery,
            next=self.clock() + delay_s,
            error=error[:1000],
        )

    def give_up(self, delivery: Delivery, error: str) -> None:
        self._update(
            "UPDATE deliveries SET state = 'failed', attempts = attempts + 1,"
            " last_error = :error, done_at = :now, lease_owner = NULL, lease_until = NULL",
            delivery,
            error=error[:1000],
            now=self.clock(),
        )

    def next_due(self) -> Optional[float]:
        with self.engine.connect() as conn:
            row = conn.execute(
                self._text("SELECT MIN(next_attempt) FROM deliveries WHERE state = 'pending'")
            ).first()
        return row[0] if row else None

    def stats(self) -> Dict[str, Any]:
        text = self._text
        with self.engine.connect() as conn:
            by_state = {
                r[0]: r[1]
                for r in conn.execute(
                    text("SELECT state, COUNT(*) FROM deliveries GROUP BY state")
                ).fetchall()
            }
            by_kind = {
                r[0]: r[1]
                for r in conn.execute(
                    text("SELECT kind, COUNT(*) FROM events WHERE fault = 1 GROUP BY kind")
                ).fetchall()
            }
            recent = [
                {"instance_uuid": r[0], "kind": r[1], "compute_host": r[2], "received_at": r[3]}
                for r in conn.execute(
                    text(
                        "SELECT instance_uuid, kind, compute_host, received_at FROM events"
                        " WHERE fault = 1 ORDER BY seq DESC LIMIT 20"
                    )
                ).fetchall()
            ]
        return {"deliveries": by_state, "faults_by_kind": by_kind, "recent_faults": recent}

    def active_faults(self) -> List[Dict[str, Any]]:
        """As ``EventStore.active_faults``."""
        with self.engine.connect() as conn:
            rows = conn.execute(self._text(ACTIVE_FAULTS_SQL)).fetchall()
        return [json.loads(r[0]) for r in rows]
