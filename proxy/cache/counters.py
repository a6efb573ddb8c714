"""The ``meta`` db's counters as one write transaction sees them, read and written once each.

A committed fill moves half a dozen counters (the queue's bytes, the objects, the sequence, the
era's accesses, the pinned and quota bytes) and reads a few more (the write and fence marks,
the era, the totals eviction compares), and a transaction batches many fills. Each LMDB call
releases the GIL and takes it back, a turn the event loop has to give up, so the counters are
read from the transaction at their first use, kept here, and the ones that changed are put
back once, by ``flush``, just before the transaction commits (Index.writing): a record and the
counters that count it still commit together or not at all.

Every read and write of a counter inside a write transaction goes through here (Txn.counter,
Txn.add, Txn.set_counter): a direct ``txn.put`` of one would be overwritten by the flush, and a
direct ``txn.get`` would miss what this transaction set.
"""

from __future__ import annotations

import struct
from typing import Any

import lmdb

U64 = struct.Struct(">Q")


class Counters:
    """The counters of ``db`` that transaction ``txn`` has read or set."""

    __slots__ = ("_txn", "_db", "_values", "_dirty")

    def __init__(self, txn: lmdb.Transaction, db: Any) -> None:
        self._txn = txn
        self._db = db
        self._values: dict[bytes, int] = {}
        self._dirty: set[bytes] = set()  # set since the last flush

    def get(self, name: bytes) -> int:
        value = self._values.get(name)
        if value is None:
            raw = self._txn.get(name, db=self._db)
            value = self._values[name] = U64.unpack(raw)[0] if raw else 0
        return value

    def set(self, name: bytes, value: int) -> None:
        self._values[name] = value
        self._dirty.add(name)

    def flush(self) -> None:
        """Put the counters set since the last flush into the transaction (writer thread)."""
        for name in self._dirty:
            self._txn.put(name, U64.pack(self._values[name]), db=self._db)
        self._dirty.clear()
