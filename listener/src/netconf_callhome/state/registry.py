# SPDX-License-Identifier: GPL-3.0-or-later
"""State layer: the device registry and the pending-key list.

The listener keeps the authoritative state in memory (one dict lookup per event, no I/O on the
event loop's hot path) and writes it behind to a :class:`RegistryStore`. ``SQLiteStore`` is the
embedded default; ``state.postgres.PostgresStore`` is the same interface on a PostgreSQL database
shared by several listener nodes (``state.stores.open_store`` picks one from ``state_url``).
Nothing else in the listener touches SQL.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Deque, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple

from netconf_callhome.errors import CallHomeError

log = logging.getLogger("netconf_callhome.registry")

CONNECTED = "connected"
DISCONNECTED = "disconnected"
UNKNOWN_KEY = "unknown-key"
KEY_MISMATCH = "key-mismatch"
AUTH_FAILED = "auth-failed"
ERROR = "error"
STATUSES = (CONNECTED, DISCONNECTED, UNKNOWN_KEY, KEY_MISMATCH, AUTH_FAILED, ERROR)


@dataclass
class DeviceRecord:
    name: str
    status: str = DISCONNECTED
    transport: str = ""
    peer: str = ""
    fingerprint: str = ""
    capabilities: List[str] = field(default_factory=list)
    session_mode: str = ""  # "channel" (new NETCONF channel per lease) or "shared"
    first_connected: Optional[float] = None
    last_connected: Optional[float] = None
    last_disconnected: Optional[float] = None
    last_seen: Optional[float] = None
    last_error: str = ""
    connect_count: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class PendingKey:
    fingerprint: str
    key_type: str
    transport: str
    public_key: str = ""  # OpenSSH public key line, or the PEM certificate for TLS
    peer: str = ""
    reason: str = UNKNOWN_KEY
    claimed_device: str = ""  # which enrolled device this key probably belongs to
    claim_source: str = ""  # "identity" (certificate names it) or "address" (a hint only)
    identities: List[str] = field(default_factory=list)
    first_seen: float = 0.0
    last_seen: float = 0.0
    count: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class RegistryEvent:
    """One entry of the event history: a device's status changed (``event`` is the new status).

    ``seq`` orders the events of one registry (the history keeps them in that order; a flush
    removes from memory only what a successful write contained)."""

    at: float
    device: str
    event: str
    previous: str = ""
    peer: str = ""
    transport: str = ""
    error: str = ""
    node: str = ""  # filled in by the store that writes it (the node the listener runs as)
    seq: int = 0

    def detail(self) -> Dict[str, Any]:
        """What goes in the history row's document (the columns hold the rest)."""
        return {"previous": self.previous, "peer": self.peer, "transport": self.transport, "error": self.error}


# Events not yet written are kept in memory up to this many; older ones are dropped (and counted)
# while the database refuses writes, so an outage of hours cannot grow the process without bound.
MAX_UNSAVED_EVENTS = 100_000
# The history keeps this long (seconds); older rows are deleted by the writer at most hourly.
HISTORY_MAX_AGE = 30 * 86400.0


class RegistryWriteError(CallHomeError):
    """The registry's store refused a write (e.g. SQLite "database is locked"); nothing was lost:
    the changes stay in memory and are written by a later flush."""

    code = "registry-write"


class RegistryStore(Protocol):
    """Persistence behind the registry: what ``SQLiteStore`` and ``PostgresStore`` both are.

    Called from a writer thread (``run_in_executor``), never on the service's event loop; a
    store whose driver is asynchronous runs it on a loop of its own (see ``state.postgres``)."""

    def load(self) -> "Tuple[List[DeviceRecord], List[PendingKey]]":
        """Everything persisted, at start-up."""

    def save(
        self,
        devices: Iterable[DeviceRecord],
        pending: Iterable[PendingKey],
        dropped_pending: Iterable[str],
        events: Sequence[RegistryEvent] = (),
    ) -> None:
        """Upsert the given records, delete the dropped pending fingerprints and append the
        events to the history, atomically; :class:`RegistryWriteError` when refused."""

    def history(self, device: Optional[str] = None, limit: int = 100) -> List[RegistryEvent]:
        """The latest ``limit`` events (of one device, or all), oldest first."""

    def close(self) -> None:
        """Release the connection."""


class SQLiteStore:
    """Records are stored as JSON documents keyed by name / fingerprint: the schema of the
    dataclasses can grow without migrations, and a PostgreSQL twin is a JSONB copy of this."""

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        self.path = path
        # ``busy_timeout``: how long one write waits for another process's lock before it fails
        # with "database is locked" (the flush is then retried later, with backoff).
        self._db = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
        os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS devices (name TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (fingerprint TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
            "node TEXT NOT NULL, device TEXT NOT NULL, event TEXT NOT NULL, doc TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS events_device_at ON events(device, at)")
        self.node = ""
        self._pruned_at = 0.0

    def load(self) -> "tuple[List[DeviceRecord], List[PendingKey]]":
        devices = [_from_doc(DeviceRecord, doc) for (doc,) in self._db.execute("SELECT doc FROM devices")]
        pending = [_from_doc(PendingKey, doc) for (doc,) in self._db.execute("SELECT doc FROM pending")]
        return devices, pending

    def save(
        self,
        devices: Iterable[DeviceRecord],
        pending: Iterable[PendingKey],
        dropped_pending: Iterable[str],
        events: Sequence[RegistryEvent] = (),
    ) -> None:
        try:
            self._save(devices, pending, dropped_pending, events)
        except sqlite3.Error as exc:
            raise RegistryWriteError(
                "cannot write the registry %s: %s" % (self.path, exc), details={"path": self.path}
            ) from exc

    def history(self, device: Optional[str] = None, limit: int = 100) -> List[RegistryEvent]:
        where, args = ("WHERE device=?", [device]) if device is not None else ("", [])
        rows = self._db.execute(
            "SELECT at, node, device, event, doc FROM events %s ORDER BY id DESC LIMIT ?" % where, args + [limit]
        ).fetchall()
        return [_event(at, node, dev, event, json.loads(doc)) for at, node, dev, event, doc in reversed(rows)]

    def _save(
        self,
        devices: Iterable[DeviceRecord],
        pending: Iterable[PendingKey],
        dropped_pending: Iterable[str],
        events: Sequence[RegistryEvent],
    ) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO devices(name, doc) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET doc=excluded.doc",
                [(d.name, json.dumps(d.to_dict())) for d in devices],
            )
            self._db.executemany(
                "INSERT INTO pending(fingerprint, doc) VALUES(?, ?) "
                "ON CONFLICT(fingerprint) DO UPDATE SET doc=excluded.doc",
                [(p.fingerprint, json.dumps(p.to_dict())) for p in pending],
            )
            self._db.executemany("DELETE FROM pending WHERE fingerprint=?", [(fp,) for fp in dropped_pending])
            self._db.executemany(
                "INSERT INTO events(at, node, device, event, doc) VALUES(?, ?, ?, ?, ?)",
                [(e.at, self.node, e.device, e.event, json.dumps(e.detail())) for e in events],
            )
            now = time.time()
            if now - self._pruned_at > 3600:
                self._db.execute("DELETE FROM events WHERE at < ?", (now - HISTORY_MAX_AGE,))
                self._pruned_at = now

    def close(self) -> None:
        self._db.close()


def _event(at: float, node: str, device: str, event: str, detail: Dict[str, Any]) -> RegistryEvent:
    return RegistryEvent(
        at=at,
        node=node,
        device=device,
        event=event,
        previous=str(detail.get("previous", "")),
        peer=str(detail.get("peer", "")),
        transport=str(detail.get("transport", "")),
        error=str(detail.get("error", "")),
    )


def _from_doc(cls: Any, doc: str) -> Any:
    data = json.loads(doc)
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


class Registry:
    """In-memory registry with write-behind persistence.

    Writes are coalesced: a record changed ten times between flushes is written once. A flush
    runs at most every ``flush_interval`` seconds in a thread, and at shutdown.

    A record stays marked unsaved until a write that contains it succeeded: each mark carries a
    sequence number, and a successful flush unmarks only what it wrote and what did not change
    again meanwhile. A failed write (another process holding the database lock) loses nothing.
    """

    def __init__(self, store: RegistryStore, *, flush_interval: float = 0.5) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._devices: Dict[str, DeviceRecord] = {}
        self._pending: Dict[str, PendingKey] = {}
        # name / fingerprint -> sequence number of its latest change (see flush)
        self._dirty_devices: Dict[str, int] = {}
        self._dirty_pending: Dict[str, int] = {}
        self._dropped: Dict[str, int] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        # Devices per status, kept on every change: the control socket's ``status`` and the
        # metrics read it often, and walking 10,000 records per read showed up in benchmarks.
        self._counts: Dict[str, int] = {s: 0 for s in STATUSES}
        # Status changes not yet written to the history (oldest first), bounded; see flush.
        self._events: Deque[RegistryEvent] = collections.deque()
        self.events_dropped = 0  # status changes never written to the history (bound reached)
        self._dropping_events = False

    def load(self) -> None:
        devices, pending = self.store.load()
        now = time.time()
        for rec in devices:
            if rec.status == CONNECTED:
                # The sessions died with the previous process; say so instead of lying.
                rec.status = DISCONNECTED
                rec.last_disconnected = rec.last_disconnected or now
                self._dirty_devices[rec.name] = self._next_seq()
            self._devices[rec.name] = rec
            self._counts[rec.status] = self._counts.get(rec.status, 0) + 1
        self._pending = {p.fingerprint: p for p in pending}

    # -- devices -------------------------------------------------------------------------------

    def get(self, name: str) -> Optional[DeviceRecord]:
        return self._devices.get(name)

    def devices(self) -> List[DeviceRecord]:
        return sorted(self._devices.values(), key=lambda r: r.name)

    def update(self, name: str, **changes: Any) -> DeviceRecord:
        rec = self._devices.get(name)
        if rec is None:
            rec = self._devices[name] = DeviceRecord(name=name)
            self._counts[rec.status] += 1
        old_status = rec.status
        for key, value in changes.items():
            setattr(rec, key, value)
        with self._lock:
            seq = self._dirty_devices[name] = self._next_seq()
            if rec.status != old_status:
                self._counts[old_status] -= 1
                self._counts[rec.status] = self._counts.get(rec.status, 0) + 1
                if len(self._events) >= MAX_UNSAVED_EVENTS:
                    self._events.popleft()
                    if not self._dropping_events:  # once per outage, not per event
                        self._dropping_events = True
                        log.warning(
                            "event=registry.history_dropped max_unsaved=%d (the database has refused writes "
                            "for long: the oldest unwritten status changes leave the event history)",
                            MAX_UNSAVED_EVENTS,
                        )
                    self.events_dropped += 1
                self._events.append(
                    RegistryEvent(
                        at=time.time(),
                        device=name,
                        event=rec.status,
                        previous=old_status,
                        peer=rec.peer,
                        transport=rec.transport,
                        error=rec.last_error,
                        seq=seq,
                    )
                )
        return rec

    def counts(self) -> Dict[str, int]:
        return dict(self._counts)

    # -- pending keys --------------------------------------------------------------------------

    def pending(self) -> List[PendingKey]:
        return sorted(self._pending.values(), key=lambda p: p.first_seen)

    def get_pending(self, fingerprint: str) -> Optional[PendingKey]:
        return self._pending.get(fingerprint)

    def record_pending(self, key: PendingKey) -> PendingKey:
        """Record one presentation of a refused key. The entry describes the *latest* one (its
        reason, claimed device, claim source, peer and identities belong together: mixing an old
        claim with a new reason told the operator something no device ever said); only
        ``first_seen`` and ``count`` carry over."""
        now = time.time()
        old = self._pending.get(key.fingerprint)
        if old is not None:
            key.first_seen = old.first_seen
            key.count = old.count
        else:
            key.first_seen = now
        key.last_seen = now
        key.count += 1
        self._pending[key.fingerprint] = key
        with self._lock:
            self._dirty_pending[key.fingerprint] = self._next_seq()
            self._dropped.pop(key.fingerprint, None)
        return key

    def drop_pending(self, fingerprint: str) -> Optional[PendingKey]:
        key = self._pending.pop(fingerprint, None)
        if key is not None:
            with self._lock:
                self._dirty_pending.pop(fingerprint, None)
                self._dropped[fingerprint] = self._next_seq()
        return key

    # -- persistence ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        # Called with self._lock held (or before the registry is shared, in load).
        self._seq += 1
        return self._seq

    def has_unsaved(self) -> bool:
        return bool(self._dirty_devices or self._dirty_pending or self._dropped or self._events)

    def unsaved_count(self) -> int:
        """Records (devices, pending entries, deletions, events) not yet written: for the failure log."""
        with self._lock:
            return len(self._dirty_devices) + len(self._dirty_pending) + len(self._dropped) + len(self._events)

    def history(self, device: Optional[str] = None, limit: int = 100) -> List[RegistryEvent]:
        """The persisted event history (reads the store: call it off the event loop)."""
        return self.store.history(device, limit)

    def flush(self) -> None:
        """Write what changed since the last successful flush (thread-safe; serialised).

        Raises :class:`RegistryWriteError` when the store refuses the write; the changes then
        stay unsaved, for the next call.
        """
        with self._flush_lock:
            with self._lock:
                names = dict(self._dirty_devices)
                fps = dict(self._dirty_pending)
                dropped = dict(self._dropped)
                events = list(self._events)
            if not (names or fps or dropped or events):
                return
            devices = [_copy(self._devices[n]) for n in names if n in self._devices]
            pending = [_copy(self._pending[f]) for f in fps if f in self._pending]
            self.store.save(devices, pending, list(dropped), events)
            # Written: unmark what did not change again while the write ran (a newer change
            # has a newer sequence number and stays for the next flush).
            with self._lock:
                for marks, written in (
                    (self._dirty_devices, names),
                    (self._dirty_pending, fps),
                    (self._dropped, dropped),
                ):
                    for key, seq in written.items():
                        if marks.get(key) == seq:
                            del marks[key]
                # Events are appended in seq order: drop from the front what this write held
                # (the front may also have been dropped meanwhile by the bound).
                last = events[-1].seq if events else 0
                while self._events and self._events[0].seq <= last:
                    self._events.popleft()
                self._dropping_events = False

    def close(self) -> None:
        """Last flush, then release the store. A final write the store refuses is logged with
        what it loses (the process is going away), never raised: stopping must not fail."""
        try:
            self.flush()
        except RegistryWriteError as exc:
            log.error(
                "event=registry.flush_failed at_stop=true unsaved=%d error=%r", self.unsaved_count(), exc.message
            )
        self.store.close()


class FlushRetry:
    """When to try the next registry flush after failures: exponential backoff from ``base`` up
    to ``cap`` seconds, and one log line per failure streak (plus one when it recovers), so that a
    database locked for an hour is neither hammered nor logged 7,200 times."""

    def __init__(self, base: float, cap: float = 30.0) -> None:
        self.base = max(base, 0.01)
        self.cap = max(cap, self.base)
        self.failures = 0  # consecutive failed flushes in the current streak
        self.next_at = 0.0  # monotonic time before which no flush is tried
        self.streak_started = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def failed(self, now: float, error: str, unsaved: int) -> float:
        """Record a failed flush; returns the delay before the next attempt."""
        if self.failures == 0:
            self.streak_started = now
        self.failures += 1
        delay = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.next_at = now + delay
        if self.failures == 1:
            log.error(
                "event=registry.flush_failed attempts=%d unsaved=%d retry_in=%.1f retry_max=%.1f error=%r "
                "(changes are kept in memory and written once the database accepts them)",
                self.failures,
                unsaved,
                delay,
                self.cap,
                error,
            )
        else:
            log.debug(
                "event=registry.flush_retry_failed attempts=%d retry_in=%.1f error=%r", self.failures, delay, error
            )
        return delay

    def succeeded(self, now: float) -> None:
        if self.failures:
            log.warning(
                "event=registry.flush_recovered attempts=%d failed_for=%.1f",
                self.failures + 1,
                now - self.streak_started,
            )
        self.failures = 0
        self.next_at = 0.0


def _copy(rec: Any) -> Any:
    return type(rec)(**{f.name: getattr(rec, f.name) for f in fields(rec)})
