"""The joiner process: read both inputs, join, emit, commit; exactly once across crashes.

Each cycle reads a chunk of impressions and of actions (keeping the two
inputs within ``align_slack_s`` of each other in event time), joins them,
advances the watermark and writes what was emitted. An action is joined
only once the impressions have been read up to its time (until then it is
held, and the committed position of its partition stays before it), so the
output follows event time. An input's progress is
the smallest, over its partitions that still have records to read, of the
newest ``ts`` read from each (partitions are read unevenly; one read to its
end does not hold the others back), and the watermark is the impressions'
progress less the allowed lateness, held back to the actions' progress
while actions are still coming. Every ``commit_every_s`` it flushes the
output, the late actions and the dead letters, then commits the state
changes, both inputs' positions, the counters and the size of every output
file in one RocksDB write batch. After a crash it restarts from the last
commit: output files are cut back to their committed size, so what is
emitted again is written once; a Kafka output gets it again with the same
``event_id`` values, and the trainer drops the ids it has already trained.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from prometheus_client import CollectorRegistry

from headrace.joiner.config import JoinConfig
from headrace.joiner.core import JoinCore
from headrace.joiner.endpoints import Sink
from headrace.joiner.records import Action, Impression, ImpressionReader, read_action
from headrace.joiner.state import JoinState
from headrace.joiner.telemetry import JoinTelemetry
from headrace.schema import Reason, SchemaError
from headrace.stream import DeadLetter, DeadLetterSink, Record, Source

__all__ = ["JoinSummary", "Joiner"]

log = logging.getLogger(__name__)

_CHUNK = 4096
_TICK_S = 0.5


@dataclass(frozen=True)
class JoinSummary:
    """What a run did (running totals over every run on the data directory)."""

    counters: dict[str, int]
    pending: int
    early: int
    seconds: float
    emitted_this_run: int

    def to_json(self) -> dict[str, object]:
        rate = self.emitted_this_run / self.seconds if self.seconds else None
        return {
            **dict(sorted(self.counters.items())),
            "pending": self.pending,
            "early": self.early,
            "seconds": round(self.seconds, 3),
            "emitted_per_s": None if rate is None else round(rate, 1),
        }


def _at_end(source: Source, key: str) -> bool:
    """Whether partition ``key`` of ``source`` has no record left to read now."""
    highwater = getattr(source, "highwater", None)
    if highwater is None:  # a file: one partition
        return source.exhausted
    end = highwater(key)
    return end is not None and source.positions()[key] >= end


class Joiner:
    """Joins an impressions source with an actions source into labelled events.

    Parameters
    ----------
    config
        Window, mode, sampling.
    data_dir
        The state (RocksDB); a rerun resumes here.
    impressions, actions
        The inputs (the joiner owns and closes them).
    out
        Where labelled events go.
    late
        Where actions that joined nothing go.
    dead_letters
        Where bad records of each input go: ``{"impressions": ..., "actions": ...}``.
    identity
        Further settings the state depends on (e.g. the partitions read).
    registry
        Prometheus registry for ``headrace_join_*`` metrics.
    """

    def __init__(
        self,
        config: JoinConfig,
        data_dir: str | Path,
        impressions: Source,
        actions: Source,
        out: Sink,
        late: Sink,
        dead_letters: dict[str, DeadLetterSink],
        *,
        identity: dict[str, object] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.inputs = {"impressions": impressions, "actions": actions}
        self.out, self.late, self.dead_letters = out, late, dead_letters
        self.state = JoinState(Path(data_dir) / "state", config.identity() | (identity or {}))
        self.core = JoinCore(config, self.state.entries, self.state.counters)
        self.state.entries = {}  # the core holds them now
        self.telemetry = JoinTelemetry(registry or CollectorRegistry())
        self.watermark = -float("inf")
        self._read_impression = ImpressionReader(config.item_key, config.max_message_bytes)
        self._idle = {"impressions": False, "actions": False}
        # Per input: partition -> newest ts read.
        self._seen: dict[str, dict[str, float]] = {
            "impressions": {},
            "actions": {},
        }
        # Per actions partition, in offset order: actions read but not yet
        # joined, because the impressions have not reached their time (see
        # :meth:`_release`), or the reason a record is bad.
        self._held: dict[str, deque[tuple[float, Action | SchemaError, Record]]] = {}
        self.emitted_this_run = 0
        for name, source in self.inputs.items():
            if name in self.state.positions:
                source.seek(self.state.positions[name])
        self._cut_back_outputs()
        if self.state.positions:
            log.info(
                "resuming at %s with %d pending impressions",
                self.state.positions,
                self.core.pending,
            )

    def _outputs(self) -> dict[str, object]:
        return {
            "out": self.out,
            "late": self.late,
            **{f"dead_{name}": sink for name, sink in self.dead_letters.items()},
        }

    def _marks(self) -> dict[str, int]:
        """The size of every output file now (outputs that are not files have none)."""
        return {
            name: sink.size()  # type: ignore[attr-defined]
            for name, sink in self._outputs().items()
            if hasattr(sink, "truncate")
        }

    def _cut_back_outputs(self) -> None:
        """Cut output files back to the last commit; on a first start, commit their sizes.

        What was written after the last commit is written again as the
        inputs are read again from there: cutting it makes emitted events,
        late actions and dead letters in files exactly once.
        """
        if not self.state.marks:
            self.commit()
            return
        for name, sink in self._outputs().items():
            if name in self.state.marks and hasattr(sink, "truncate"):
                sink.truncate(self.state.marks[name])
        log.info("output files cut back to the last commit: %s", self.state.marks)

    # -- one cycle -----------------------------------------------------------

    def progress(self, name: str) -> float:
        """Event time up to which input ``name`` is read in every partition with records left."""
        source, seen = self.inputs[name], self._seen[name]
        behind = [
            seen.get(key, -float("inf")) for key in source.positions() if not _at_end(source, key)
        ]
        if behind:
            return min(behind)
        return max(seen.values(), default=-float("inf"))

    def _saw(self, name: str, record: Record, ts: float) -> None:
        seen = self._seen[name]
        seen[record.partition] = max(ts, seen.get(record.partition, ts))

    def _wanted(self) -> list[str]:
        """The inputs to read now: each unless it is ahead of the other by the slack."""
        slack = self.config.align_slack_s
        imps, acts = self.progress("impressions"), self.progress("actions")
        wanted = []
        if self._idle["actions"] or imps <= acts + slack:
            wanted.append("impressions")
        if self._idle["impressions"] or acts <= imps + slack:
            wanted.append("actions")
        return wanted

    def _read(self, name: str, timeout_s: float) -> list[Record]:
        records = self.inputs[name].poll(_CHUNK, timeout_s)
        self._idle[name] = not records
        if name == "impressions":  # actions count when joined: held ones may be read again
            self.core.counters["records_impressions"] += len(records)
        return records

    def _dead(self, name: str, exc: SchemaError, record: Record) -> None:
        self.core.counters[f"dead_{name}:{exc.reason.value}"] += 1
        letter = DeadLetter(
            exc.reason, exc.detail, record.partition, record.offset, record.value or b""
        )
        self.dead_letters[name].write(letter)

    def cycle(self, timeout_s: float = 0.1) -> int:
        """Read, join and emit one chunk of each wanted input; returns the records read."""
        wanted = self._wanted()
        each = timeout_s / len(wanted)
        read = {name: self._read(name, each) for name in wanted}
        impressions, actions = read.get("impressions", []), read.get("actions", [])
        self._hold(actions)
        if self.config.mode == "fake-negative":
            self._join_in_time_order(impressions)
        else:
            # Impressions first: an action read in the same cycle finds its impression.
            self._take_impressions(impressions)
            for _, action, record in self._release():
                self.core.action(action, record.value)  # type: ignore[arg-type]
        self._advance()
        self._write_output()
        return len(impressions) + len(actions)

    def _take_impressions(self, records: list[Record]) -> None:
        # The hot loop: a chunk is checked in one decoding call and joined in
        # one call; a chunk that needs a closer look goes one record at a time.
        checked = self._read_impression.many([record.value for record in records])
        if checked is None:
            self._take_impressions_one_by_one(records)
            return
        times, keys = checked
        seen = self._seen["impressions"]
        for record, ts in zip(records, times, strict=True):
            if ts > seen.get(record.partition, -float("inf")):
                seen[record.partition] = ts
        values = [record.value for record in records]
        for i in self.core.impressions(times, keys, values):  # type: ignore[arg-type]
            self._duplicate(keys[i], records[i])

    def _take_impressions_one_by_one(self, records: list[Record]) -> None:
        check, seen = self._read_impression, self._seen["impressions"]
        for record in records:
            try:
                impression = check(record.value)
            except SchemaError as exc:
                self._dead("impressions", exc, record)
                continue
            if impression.ts > seen.get(record.partition, -float("inf")):
                seen[record.partition] = impression.ts
            self._take_impression(impression, record)

    def _take_impression(self, impression: Impression, record: Record) -> None:
        try:
            self.core.impression(impression)
        except KeyError:
            self._duplicate(impression.key, record)

    def _duplicate(self, key: str, record: Record) -> None:
        detail = f"join key {key!r} is already pending"
        self._dead("impressions", SchemaError(Reason.DUPLICATE_JOIN_KEY, detail), record)

    def _hold(self, records: list[Record]) -> None:
        """Check actions and queue them, per partition, until :meth:`_release`."""
        cfg, held = self.config, self._held
        for record in records:
            try:
                action: Action | SchemaError = read_action(
                    record.value, cfg.item_key, cfg.max_message_bytes
                )
            except SchemaError as exc:
                action, ts = exc, -float("inf")
            else:
                ts = action.ts
                self._saw("actions", record, ts)
            queue = held.get(record.partition)
            if queue is None:
                queue = held[record.partition] = deque()
            queue.append((ts, action, record))

    def _release(self, until: float | None = None) -> list[tuple[float, Action, Record]]:
        """The held actions up to event time ``until`` (default: the impressions' progress).

        The actions input is read in chunks that span far more event time
        than the impressions' (a chunk of clicks covers minutes); joining
        each action only once the impressions have reached its time keeps
        the output in event-time order, as the trainer should see it: no
        runs of positives ahead of their time, no impression waiting as
        early for an action read too soon. Bad records are dead-lettered
        here, in their place among the partition's records.
        """
        if until is None:
            idle = self._idle["impressions"]
            until = float("inf") if idle else self.progress("impressions")
        released = []
        for queue in self._held.values():
            while queue and queue[0][0] <= until:
                ts, action, record = queue.popleft()
                if isinstance(action, SchemaError):
                    self._dead("actions", action, record)
                else:
                    released.append((ts, action, record))
        self.core.counters["records_actions"] += len(released)
        return released

    def _join_in_time_order(self, impressions: list[Record]) -> None:
        """Fake-negative mode: join a cycle's impressions and released actions in time order.

        Its output is the trainer's order: all of a cycle's impressions
        and then all its actions would emit a run of negatives and then a
        run of positives, and a trainer swings with such runs; in time
        order the labels come mixed as they happen.
        """
        checked: list[tuple[float, int, Impression | Action, Record]] = []
        for record in impressions:
            try:
                impression = self._read_impression(record.value)
            except SchemaError as exc:
                self._dead("impressions", exc, record)
                continue
            self._saw("impressions", record, impression.ts)
            checked.append((impression.ts, 0, impression, record))
        checked += [(ts, 1, action, record) for ts, action, record in self._release()]
        # Stable, impressions before actions of the same time.
        checked.sort(key=itemgetter(0, 1))
        for _, is_action, item, record in checked:
            if is_action:
                self.core.action(item, record.value)  # type: ignore[arg-type]
            else:
                self._take_impression(item, record)  # type: ignore[arg-type]

    def _advance(self) -> None:
        watermark = self.progress("impressions") - self.config.allowed_lateness_s
        if not self._idle["actions"]:
            # Actions are still coming: close no window their progress has not reached.
            watermark = min(watermark, self.progress("actions"))
        if watermark > self.watermark:
            self.watermark = watermark
            self.core.advance(watermark)

    def _write_output(self) -> None:
        emitted, late = self.core.take_output()
        send = self.out.send
        for event in emitted:
            send(event.value, event.key.encode())
        for action in late:
            self.late.send(action.raw)
        self.emitted_this_run += len(emitted)

    def commit(self) -> None:
        """Flush every output, then commit state, positions and counters in one write."""
        started = time.perf_counter()
        self.out.flush()
        self.late.flush()
        for sink in self.dead_letters.values():
            sink.flush()
        positions = {name: source.positions() for name, source in self.inputs.items()}
        for key, queue in self._held.items():
            if queue:  # read again after a restart: held actions are not joined yet
                positions["actions"][key] = queue[0][2].offset
        self.state.commit(
            self.core.take_changes(), positions, dict(self.core.counters), self._marks()
        )
        self.telemetry.commit_duration.observe(time.perf_counter() - started)

    def close_all_windows(self) -> None:
        """Treat the inputs as ended: close every window now (for finite replays)."""
        for _, action, record in self._release(float("inf")):
            self.core.action(action, record.value)  # type: ignore[arg-type]
        self.watermark = float("inf")
        self.core.advance(self.watermark)
        self._write_output()

    # -- the loop ------------------------------------------------------------

    def _ended(self) -> bool:
        """Both inputs read to their end (files at EOF; Kafka partitions caught up)."""
        for source in self.inputs.values():
            if source.exhausted:
                continue
            lag = getattr(source, "lag", None)
            if lag is None or sum(lag().values()) > 0:
                return False
        return True

    def refresh_gauges(self) -> None:
        core, t = self.core, self.telemetry
        t.update(core.counters)
        t.pending.set(core.pending)
        t.early.set(core.early)
        t.occupancy.set(core.occupancy())
        if self.watermark > 0:
            t.watermark.set(self.watermark)

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        until_end: bool = False,
        on_tick: Callable[[Joiner], None] | None = None,
    ) -> JoinSummary:
        """Join until ``stop`` is set (or, with ``until_end``, both inputs are read to their end).

        With ``until_end`` every window is closed at the end, as if event
        time had run on. A last commit is written before returning.
        """
        stop = stop or threading.Event()
        started = last_commit = last_tick = time.monotonic()
        while not stop.is_set():
            read = self.cycle()
            now = time.monotonic()
            if until_end and not read and all(self._idle.values()) and self._ended():
                self.close_all_windows()
                break
            if now - last_commit >= self.config.commit_every_s:
                self.commit()
                last_commit = now
                # Pending impressions live for a window, by the hundred
                # thousand: frozen, the cyclic GC stops scanning them over and
                # over (measured: 2.2x the joined events/s). They are still
                # freed by reference counting when their window closes.
                gc.freeze()
            if now - last_tick >= _TICK_S:
                self.refresh_gauges()
                last_tick = now
                if on_tick is not None:
                    on_tick(self)
        self.commit()
        gc.unfreeze()
        self.refresh_gauges()
        return JoinSummary(
            dict(self.core.counters),
            self.core.pending,
            self.core.early,
            time.monotonic() - started,
            self.emitted_this_run,
        )

    def close(self) -> None:
        """Close inputs, outputs and state (without a commit: :meth:`run` writes one)."""
        closers = [*self.inputs.values(), self.out, self.late, *self.dead_letters.values()]
        try:
            for closer in closers:
                closer.close()
        finally:
            self.state.close()

    def __enter__(self) -> Joiner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
