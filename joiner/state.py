"""The joiner's durable state: one RocksDB database per joiner process.

Pending impressions (``p:<join key>``), early actions (``e:<join key>``),
the input positions, the counters and the settings the state depends on
live in one database. :meth:`JoinState.commit` writes a cycle's changes,
positions and counters in one synced write batch, so a crash at any moment
leaves the previous commit or the new one, never a mix: on restart the
joiner reads again from the committed positions and rebuilds exactly the
state it had there.
"""

from __future__ import annotations

import json
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from headrace.stream import Positions

__all__ = ["JoinState", "JoinStateError"]

_META = b"m:meta"
_POSITIONS = b"m:positions"
_COUNTERS = b"m:counters"
_MARKS = b"m:marks"


class JoinStateError(RuntimeError):
    """The data directory holds the state of a joiner with other settings."""


class JoinState:
    """Opens (or creates) a joiner's state and commits to it.

    Parameters
    ----------
    path
        The database directory.
    identity
        The settings the state depends on (window, mode, item key, the
        partitions read); a restart with others is refused.

    Attributes
    ----------
    entries
        Pending impressions and early actions as committed (key -> value).
    positions
        ``{"impressions": ..., "actions": ...}`` as committed.
    counters
        Counters as committed.
    marks
        Output name -> the file size it had at the commit (files only).
    """

    def __init__(self, path: str | Path, identity: dict[str, object]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(self.path), Options(raw_mode=True))
        self._sync = WriteOptions()
        self._sync.sync = True
        try:
            self._check(identity)
        except BaseException:
            self._db.close()
            raise
        self.positions: dict[str, Positions] = json.loads(self._db.get(_POSITIONS) or b"{}")
        self.counters: dict[str, int] = json.loads(self._db.get(_COUNTERS) or b"{}")
        self.marks: dict[str, int] = json.loads(self._db.get(_MARKS) or b"{}")
        self.entries: dict[bytes, bytes] = {
            key: value for key, value in self._db.items() if not key.startswith(b"m:")
        }

    def _check(self, identity: dict[str, object]) -> None:
        saved = self._db.get(_META)
        wanted = json.dumps(identity, sort_keys=True).encode()
        if saved is None:
            self._db.put(_META, wanted, self._sync)
        elif saved != wanted:
            raise JoinStateError(
                f"{self.path} holds the state of a joiner with {saved.decode()}; this one has "
                f"{wanted.decode()}. Use the same settings or another --data-dir"
            )

    def commit(
        self,
        changes: dict[bytes, bytes | None],
        positions: dict[str, Positions],
        counters: dict[str, int],
        marks: dict[str, int] | None = None,
    ) -> None:
        """Write state changes, positions, counters and output marks atomically (and durably)."""
        batch = WriteBatch(raw_mode=True)
        for key, value in changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(_POSITIONS, json.dumps(positions, sort_keys=True).encode())
        batch.put(_COUNTERS, json.dumps(counters, sort_keys=True).encode())
        if marks is not None:
            batch.put(_MARKS, json.dumps(marks, sort_keys=True).encode())
            self.marks = marks
        self._db.write(batch, self._sync)
        self.positions = positions

    def close(self) -> None:
        self._db.close()
