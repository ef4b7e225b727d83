"""A durable on-disk spool of events waiting for a controller's acknowledgement.

One file per event, written to a temporary name, fsynced, renamed into place
and the directory fsynced: once :meth:`Spool.append` returns, the event
survives a crash of the agent or the host. Entries are removed only when a
controller has acknowledged them; order is the append order.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

LOG = logging.getLogger("guest_ha.compute.spool")

_NAME = re.compile(r"^(\d{20})-([0-9a-f]{32})\.json$")


class SpoolFull(RuntimeError):
    """The spool holds ``max_entries`` events; the event was not stored."""


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    key: str
    """Idempotency key: controllers report an event with a given key once."""
    event: Dict[str, Any]
    path: str


class Spool:
    def __init__(self, directory: str, max_entries: int = 100_000) -> None:
        self.directory = directory
        self.max_entries = max_entries
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: Dict[int, SpoolEntry] = {}
        self._next_seq = 1
        self._load()

    def _load(self) -> None:
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp"):
                os.unlink(path)  # never renamed into place: the append did not return
                continue
            match = _NAME.match(name)
            if not match:
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    event = json.load(fh)
            except (OSError, ValueError) as exc:
                LOG.error("unreadable spool entry %s kept aside: %s", path, exc)
                os.replace(path, path + ".corrupt")
                continue
            seq = int(match.group(1))
            self._entries[seq] = SpoolEntry(seq, match.group(2), event, path)
            self._next_seq = max(self._next_seq, seq + 1)
        if self._entries:
            LOG.info("spool %s: %d event(s) to replay", self.directory, len(self._entries))

    def append(self, event: Dict[str, Any], key: Optional[str] = None) -> SpoolEntry:
        """Store ``event`` durably and return its entry (with its idempotency key)."""
        key = key or uuidlib.uuid4().hex
        data = json.dumps({**event, "idempotency_key": key}, separators=(",", ":"))
        with self._lock:
            if len(self._entries) >= self.max_entries:
                raise SpoolFull(f"spool {self.directory} holds {self.max_entries} events")
            seq = self._next_seq
            self._next_seq += 1
            path = os.path.join(self.directory, f"{seq:020d}-{key}.json")
            tmp = path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            self._fsync_dir()
            entry = SpoolEntry(seq, key, json.loads(data), path)
            self._entries[seq] = entry
            return entry

    def pending(self) -> List[SpoolEntry]:
        with self._lock:
            return [self._entries[s] for s in sorted(self._entries)]

    def oldest(self) -> Optional[SpoolEntry]:
        with self._lock:
            return self._entries[min(self._entries)] if self._entries else None

    def ack(self, entry: SpoolEntry) -> None:
        """A controller acknowledged ``entry``: forget it."""
        with self._lock:
            if self._entries.pop(entry.seq, None) is None:
                return
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            self._fsync_dir()

    @property
    def depth(self) -> int:
        with self._lock:
            return len(self._entries)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
