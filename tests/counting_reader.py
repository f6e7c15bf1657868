"""A reader process over an endless, counted source: how far its child has read ahead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headrace.stream.batch import Positions, Record
from headrace.stream.reader_process import ReaderProcess

#: Bytes of a value: about a typical event's, so that chunks fill the pipe as events do.
VALUE_BYTES = 200


class CountingSource(ReaderProcess):
    """Records ``("n", i, value)`` for i = 0, 1, ...; the child writes how many it read."""

    _what = "counting"
    _fills = True

    def __init__(self, count: Path) -> None:
        self.count = count
        super().__init__(_CountingReader, str(count), open_timeout_s=60.0)

    def read(self) -> int:
        """Records the child has read so far."""
        text = self.count.read_text() if self.count.exists() else ""
        return int(text or 0)


class _CountingReader:
    idle = False

    def __init__(self, count: str) -> None:
        self.count, self.next = Path(count), 0

    def positions(self) -> Positions:
        return {"n": self.next}

    def poll(self, max_records: int) -> list[Record]:
        # Distinct values: pickle would send one value many times over only once.
        records = [
            Record("n", i, str(i).encode().rjust(VALUE_BYTES, b"x"))
            for i in range(self.next, self.next + max_records)
        ]
        self.next += max_records
        # Replaced whole, so that the parent never reads half a number.
        self.count.with_suffix(".tmp").write_text(str(self.next))
        self.count.with_suffix(".tmp").replace(self.count)
        return records

    def status(self) -> None:
        return None

    def seek(self, positions: Positions) -> None:
        self.next = positions["n"]

    def run(self, command: str, args: tuple[Any, ...]) -> Any:
        raise ValueError(f"no command {command!r}")

    def close(self) -> None:
        pass
