"""Replay of event logs: JSONL files, plain or gzip-compressed."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO

from .batch import Positions, Record, position_for

__all__ = ["FileSource", "checked_log", "log_key", "open_log"]


def open_log(path: str | Path, mode: str = "rb") -> IO:
    """Open a log, through gzip when the name ends in ``.gz``.

    Parameters
    ----------
    path
        The file.
    mode
        As for ``open``; text modes use UTF-8.
    """
    path = Path(path)
    if "r" in mode and not path.is_file():
        raise FileNotFoundError(f"no event log at {path}")
    encoding = None if "b" in mode else "utf-8"
    # The caller owns the file and closes it.
    if path.suffix == ".gz":
        return gzip.open(path, mode, encoding=encoding)
    return path.open(mode, encoding=encoding)


def checked_log(path: str | Path, rank: int, world: int) -> Path:
    """``path``, once it names a log and ``rank`` is one of ``world``; else a clear error.

    Raises
    ------
    ValueError
        For a ``rank`` not in ``0..world - 1``.
    FileNotFoundError
        When there is no log at ``path``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {path}")
    return path


def log_key(path: Path, key: str | None = None) -> str:
    """The partition key of a log's positions: ``key``, by default ``"file:<file name>"``.

    >>> log_key(Path("/data/events.jsonl.gz"))
    'file:events.jsonl.gz'
    """
    return key or f"file:{path.name}"


class FileSource:
    """Reads a JSONL log line by line, in order; one line is one message.

    A position is the index of the next line, so a replay resumes exactly and
    reads the same records every time. Blank lines count for positions but
    are not messages. With ``world`` > 1 the source reads only the lines
    ``i`` with ``i % world == rank`` (one rank's share of a distributed run);
    positions still count every line.

    Parameters
    ----------
    path
        The log (``.jsonl`` or ``.jsonl.gz``).
    key
        The partition key in positions and dead letters; by default
        ``"file:<file name>"``, so a log moved to another folder still resumes.
    rank, world
        Read the lines of this rank out of ``world``.
    """

    def __init__(
        self, path: str | Path, key: str | None = None, *, rank: int = 0, world: int = 1
    ) -> None:
        self.path = checked_log(path, rank, world)
        self.key = log_key(self.path, key)
        self.rank, self.world = rank, world
        self._file = open_log(self.path)
        self._next = 0
        self._eof = False

    @property
    def exhausted(self) -> bool:
        """True once the end of the file has been read."""
        return self._eof

    def poll(self, max_records: int, timeout_s: float = 0.0) -> list[Record]:
        """Up to ``max_records`` messages; ``timeout_s`` is unused (never waits)."""
        records: list[Record] = []
        readline, key, rank, world = self._file.readline, self.key, self.rank, self.world
        while len(records) < max_records:
            line = readline()
            if not line:
                self._eof = True
                break
            if world == 1 or self._next % world == rank:
                line = line.rstrip(b"\r\n")
                if line.strip():
                    records.append(Record(key, self._next, line))
            self._next += 1
        return records

    def positions(self) -> Positions:
        """``{key: index of the next line}``."""
        return {self.key: self._next}

    def seek(self, positions: Positions) -> None:
        """Continue at the line saved in ``positions``."""
        target = position_for(self.key, positions)
        self._file.close()
        self._file = open_log(self.path)
        self._next, self._eof = 0, False
        while self._next < target and self._file.readline():
            self._next += 1
        if self._next < target:
            raise ValueError(f"{self.path} has {self._next} lines; cannot seek to line {target}")

    def close(self) -> None:
        self._file.close()
