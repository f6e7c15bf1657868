"""Writing events out: synthetic events to a log or a sink, logs into Kafka."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from .file import open_log
from .synthetic import BayesAuc, CtrGenerator

__all__ = ["LogSink", "MessageSink", "generate_events", "replay_log", "write_log"]


class MessageSink(Protocol):
    """Takes raw messages (a :class:`~headrace.stream.KafkaSink`, or a log writer)."""

    def send(self, value: bytes) -> None: ...


class LogSink:
    """Writes messages as lines of a JSONL file (gzip when the name ends in ``.gz``).

    Parameters
    ----------
    path
        The file; its folder is created if needed.
    append
        Add to an existing file instead of replacing it. A plain file's
        unfinished last line (a writer killed mid-write) is cut off first:
        a writer that resumes from its last flush writes it again whole.
    """

    def __init__(self, path: Path, *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if append and path.suffix != ".gz" and path.exists():
            _cut_unfinished_line(path)
        self._file: IO[bytes] = open_log(path, "ab" if append else "wb")

    def send(self, value: bytes, key: bytes | None = None) -> None:
        """Write one line; ``key`` (a Kafka message key) is not kept."""
        self._file.write(value + b"\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_log(
    events: Iterable[dict[str, Any]],
    path: Path,
    *,
    chunk: int = 10_000,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write events as a ``.jsonl`` / ``.jsonl.gz`` log; returns how many.

    ``on_progress`` is called with the number of events of every ``chunk`` written.
    """
    sink = LogSink(path)
    written = 0
    try:
        for event in events:
            sink.send(orjson.dumps(event))
            written += 1
            if on_progress is not None and written % chunk == 0:
                on_progress(chunk)
    finally:
        sink.close()
    if on_progress is not None:
        on_progress(written % chunk)
    return written


def _cut_unfinished_line(path: Path) -> None:
    """Truncate ``path`` after its last newline."""
    with path.open("r+b") as f:
        end = f.seek(0, 2)
        position = end
        while position > 0:
            step = min(position, 1 << 16)
            f.seek(position - step)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        if position != end:
            f.truncate(position)


def generate_events(
    generator: CtrGenerator,
    count: int,
    out: Path | MessageSink,
    *,
    chunk: int = 10_000,
    on_progress: Callable[[int], None] | None = None,
) -> BayesAuc:
    """Generate ``count`` events into a log file or a sink.

    Parameters
    ----------
    generator
        The seeded generator.
    count
        How many events, from index 0.
    out
        A ``.jsonl`` / ``.jsonl.gz`` path, or a sink such as a :class:`KafkaSink`.
    chunk
        Events generated per step.
    on_progress
        Called with the number of events of each finished step.

    Returns
    -------
    BayesAuc
        The Bayes-optimal AUC of the labels drawn.
    """
    auc = BayesAuc()
    sink = LogSink(out) if isinstance(out, Path) else out
    try:
        for start in range(0, count, chunk):
            generated = generator.generate(start, min(chunk, count - start))
            auc.update(generated.probabilities, generated.labels)
            for event in generated.events:
                sink.send(orjson.dumps(event))
            if on_progress is not None:
                on_progress(len(generated.events))
    finally:
        if isinstance(sink, LogSink):
            sink.close()
    return auc


def _event_time(line: bytes) -> float | None:
    """The ``ts`` of a log line, or None when the line has no usable one."""
    try:
        ts = orjson.loads(line).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return float(ts) if type(ts) in (int, float) else None


def replay_log(
    path: Path,
    sink: MessageSink,
    *,
    speed: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 1000,
) -> int:
    """Send every non-blank line of a log to ``sink``, in order and byte for byte.

    Bad lines are sent too: the consumer's dead letters are where they belong.

    Parameters
    ----------
    path
        A ``.jsonl`` or ``.jsonl.gz`` log.
    sink
        Where lines go.
    speed
        ``None`` for as fast as possible; else replay at ``speed`` times the
        pace of the events' own timestamps (2.0: twice as fast).
    on_progress
        Called with the number of lines sent since the last call.
    progress_every
        Lines between progress calls.

    Returns
    -------
    int
        Lines sent.
    """
    if speed is not None and speed <= 0:
        raise ValueError(f"speed must be positive, not {speed}")
    sent = pending = 0
    first_ts: float | None = None
    started = time.monotonic()
    with open_log(path) as log:
        for raw in log:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if speed is not None and (ts := _event_time(line)) is not None:
                first_ts = ts if first_ts is None else first_ts
                delay = (ts - first_ts) / speed - (time.monotonic() - started)
                if delay > 0:
                    time.sleep(delay)
            sink.send(line)
            sent += 1
            pending += 1
            if on_progress is not None and pending >= progress_every:
                on_progress(pending)
                pending = 0
    if on_progress is not None and pending:
        on_progress(pending)
    return sent
