"""Dead letters: messages that could not become events, kept with the reason.

A bad message never stops the stream: the parser hands it here with the reason,
its source position and its raw bytes, and the good events beside it go on.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from headrace.schema import Reason

from .batch import Positions
from .file import open_log

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "JsonlDeadLetterSink",
    "ListDeadLetterSink",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that broke the schema, with why and where."""

    reason: Reason
    detail: str
    partition: str
    offset: int
    raw: bytes

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; the raw bytes in base64, since they need not be UTF-8."""
        return {
            "reason": self.reason.value,
            "detail": self.detail,
            "partition": self.partition,
            "offset": self.offset,
            "raw_b64": base64.b64encode(self.raw).decode("ascii"),
        }


class DeadLetterSink(Protocol):
    """Where dead letters go. ``flush`` and ``mark`` return once all written are durable.

    A consumer that checkpoints its input positions writes each record's
    letter exactly once across crashes this way: it saves :meth:`mark`
    with the positions (taken when every letter written so far belongs to
    a record before them), and on start calls :meth:`resume` with the saved
    mark and the positions it resumes at. The sink then drops or skips the
    letters of records that will be read again. A mark is a flat dict of
    ints, so it can go into a JSON checkpoint; a sink ignores the keys of
    another kind of sink's mark.
    """

    def write(self, letter: DeadLetter) -> None: ...

    def flush(self) -> None: ...

    def mark(self) -> dict[str, int]: ...

    def resume(self, mark: Mapping[str, int] | None, positions: Positions) -> None:
        """Forget what was written of records at or after ``positions``.

        ``mark`` is what :meth:`mark` returned when those positions were
        saved, or ``None`` when nothing was saved yet (every record is read
        again).
        """

    def close(self) -> None: ...


class ListDeadLetterSink:
    """Keeps dead letters in memory (tests, and callers that inspect them)."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def flush(self) -> None:
        """Nothing to flush."""

    def mark(self) -> dict[str, int]:
        """How many letters it holds."""
        return {"letters": len(self.letters)}

    def resume(self, mark: Mapping[str, int] | None, positions: Positions) -> None:
        """Drop the letters written after ``mark`` (all of them without one)."""
        if mark is None or "letters" in mark:
            del self.letters[mark["letters"] if mark else 0 :]

    def close(self) -> None:
        """Nothing to close."""

    @property
    def counts(self) -> Counter[str]:
        """Dead letters per reason."""
        return Counter(letter.reason.value for letter in self.letters)


class JsonlDeadLetterSink:
    """Appends dead letters to a JSONL file (gzip when the name ends in ``.gz``).

    Its mark is the file's size (``{"bytes": n}``); :meth:`resume` cuts the
    file there, so the letters of records read again are written once.

    Parameters
    ----------
    path
        The file; its folder is created if needed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from headrace.schema import Reason
    >>> sink = JsonlDeadLetterSink(pathlib.Path(tempfile.mkdtemp()) / "dead.jsonl")
    >>> letter = DeadLetter(Reason.NOT_JSON, "", "log", 3, b"{")
    >>> sink.write(letter); mark = sink.mark()
    >>> sink.write(letter); sink.resume(mark, {"log": 3})
    >>> len(sink.path.read_text().splitlines())
    1
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open_log(self.path, "at")

    def write(self, letter: DeadLetter) -> None:
        self._file.write(json.dumps(letter.to_json()) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def mark(self) -> dict[str, int]:
        """Bytes written so far (after a flush)."""
        self._plain_file_only()
        self.flush()
        return {"bytes": self.path.stat().st_size}

    def resume(self, mark: Mapping[str, int] | None, positions: Positions) -> None:
        """Cut the file to the size in ``mark`` (to nothing without a mark).

        A mark of another kind of sink leaves the file as it is.
        """
        if mark is not None and "bytes" not in mark:
            return
        self._plain_file_only()
        self._file.close()
        size = mark["bytes"] if mark is not None else 0
        os.truncate(self.path, min(size, self.path.stat().st_size))
        self._file = open_log(self.path, "at")

    def _plain_file_only(self) -> None:
        # A gzip member cannot be cut at an arbitrary byte.
        if self.path.suffix == ".gz":
            raise ValueError(f"{self.path}: only a plain .jsonl dead-letter file can be truncated")

    def close(self) -> None:
        self._file.close()
