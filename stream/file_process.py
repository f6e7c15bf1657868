"""A log file read and parsed in a child process.

:class:`~headrace.stream.FileSource` reads and parses on the trainer's side,
where the JSON parsing shares the GIL with the training step (and, in a
distributed run, delays every collective's return). This source runs a
``FileSource`` in a child process with the machinery of
:mod:`headrace.stream.reader_process`: the child reads and parses chunks of
1024 records, this process slices them. Batches, positions, dead letters and
:attr:`ProcessFileSource.exhausted` are the ``FileSource``'s own: a poll
returns all the records asked for unless the end of the file comes first,
however far ahead the child is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .batch import Positions, Record
from .file import FileSource, checked_log, log_key
from .reader_process import ReaderProcess, ReaderProcessError

__all__ = ["ProcessFileSource", "ReaderProcessError"]


class ProcessFileSource(ReaderProcess):
    """A :class:`~headrace.stream.FileSource` that reads in a child process.

    The same parameters, records, positions and seeks; once
    :meth:`parse_with` is called (:class:`~headrace.stream.EventStream`
    does), the child parses too. :attr:`exhausted` turns true, as the
    ``FileSource``'s does, once a poll reaches the end of the file. The
    child reads ahead what the pipe holds (about two chunks of 1024 records)
    and, once a poll asks for more, that many records besides. It is a fresh
    interpreter (it does not import this process's main module), ignores
    SIGINT and SIGTERM and exits when this object closes or this process dies.

    Raises
    ------
    FileNotFoundError
        When there is no log at ``path``.
    ValueError
        For a ``rank`` not in ``0..world - 1``, or a seek past the end.
    ReaderProcessError
        When the child process dies or fails; the source is then closed.
    """

    _what = "file"
    _fills = True

    def __init__(
        self, path: str | Path, key: str | None = None, *, rank: int = 0, world: int = 1
    ) -> None:
        # Checked here, before a child starts, with FileSource's own errors.
        self.path = checked_log(path, rank, world)
        self.key = log_key(self.path, key)
        self.rank, self.world = rank, world
        super().__init__(
            _FileReader,
            (str(self.path.resolve()), self.key, rank, world),
            open_timeout_s=60.0,
        )

    def _on_status(self, status: Any, *, stale: bool) -> None:
        if not stale:
            self._end = status


class _FileReader:
    """The child's :class:`FileSource`; its status is its positions once at the end, else None."""

    def __init__(self, spec: tuple[str, str, int, int]) -> None:
        path, key, rank, world = spec
        self.source = FileSource(path, key, rank=rank, world=world)

    @property
    def idle(self) -> bool:
        return self.source.exhausted

    def positions(self) -> Positions:
        return self.source.positions()

    def poll(self, max_records: int) -> list[Record]:
        return self.source.poll(max_records)

    def status(self) -> Positions | None:
        return self.source.positions() if self.source.exhausted else None

    def seek(self, positions: Positions) -> None:
        self.source.seek(positions)

    def run(self, command: str, args: tuple[Any, ...]) -> Any:
        raise ValueError(f"unknown command {command!r}")

    def close(self) -> None:
        self.source.close()
