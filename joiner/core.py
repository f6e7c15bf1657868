"""The join itself, in memory: pending impressions, early actions, windows in event time.

:class:`JoinCore` takes checked impressions and actions in arrival order,
closes windows as the watermark passes them, and collects what to emit, what
is late, and every state change as RocksDB puts and deletes, which the
runner commits together with the input positions.

Event time
----------
The watermark is the newest impression's ``ts`` minus ``allowed_lateness_s``
(held back, by the runner, to the actions' progress while the actions input
has records waiting). An impression's window closes once the watermark
reaches ``ts + window_s``. Impressions out of order by less than the allowed
lateness are joined as if in order; an older one is joined with the actions
buffered so far and its window closes at the next advance. An action whose
impression has not come waits in a bounded buffer until the watermark passes
its own ``ts`` (its impression, older than the action, should have come by
then); it then counts as late (``no_impression``), as does an action after
its impression's window (``after_window``) and the oldest buffered action
when the buffer is full (``buffer_full``).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import struct
from collections import Counter, deque
from typing import NamedTuple

import orjson

from headrace.joiner.config import JoinConfig
from headrace.joiner.records import Action, Impression

__all__ = ["Emitted", "JoinCore", "Late", "keep_negative"]

PENDING, EARLY = b"p:", b"e:"
_PENDING = struct.Struct("<dB")  # ts, flags: _POSITIVE | _SENT
_POSITIVE, _SENT = 1, 2
_EARLY = struct.Struct("<d")


def keep_negative(seed: int, key: str, rate: float) -> bool:
    """Whether the negative of join key ``key`` is kept when negatives are kept at ``rate``.

    A hash of (seed, key), so a replay keeps the same negatives.

    >>> keep_negative(0, "r1", 1.0), keep_negative(0, "r1", 1e-9)
    (True, False)
    """
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little") < rate * 2.0**64


class Emitted(NamedTuple):
    """One labelled event to write: its join key (the message key) and JSON bytes."""

    key: str
    value: bytes
    label: int


class Late(NamedTuple):
    """An action that joined nothing, with why."""

    reason: str
    raw: bytes


# A pending impression: [ts, body, flags] (flags: _POSITIVE | _SENT; sent:
# fake-negative mode, its first copy is out, at once or after the wait). A
# list, not an object: ~180k of them live at once and one is made per impression.
_TS, _BODY, _FLAGS = 0, 1, 2
_ONE, _ZERO = b',"label":1', b',"label":0'


class _Deadlines:
    """``(time, key)`` deadlines, taken in time order.

    Impressions mostly come in time order, so their deadlines go to a FIFO
    (O(1)); only one earlier than the newest goes to a heap.
    """

    __slots__ = ("_fifo", "_heap")

    def __init__(self) -> None:
        self._fifo: deque[tuple[float, str]] = deque()
        self._heap: list[tuple[float, str]] = []

    def push(self, at: float, key: str) -> None:
        item, fifo = (at, key), self._fifo
        if not fifo or item >= fifo[-1]:
            fifo.append(item)
        else:
            heapq.heappush(self._heap, item)

    def push_many(self, items: list[tuple[float, str]]) -> None:
        """:meth:`push` each of ``items`` (sorted in place).

        Sorted, a chunk read from several partitions is two or three runs
        in time order: the part after the newest deadline extends the FIFO
        at once, only the part before it goes to the heap.
        """
        if not items:
            return
        items.sort()
        fifo = self._fifo
        cut = bisect.bisect_left(items, fifo[-1]) if fifo else 0
        for item in items[:cut]:
            heapq.heappush(self._heap, item)
        fifo.extend(items[cut:] if cut else items)

    def earliest(self) -> float | None:
        heads = [q[0][0] for q in (self._fifo, self._heap) if q]
        return min(heads) if heads else None

    def take_until(self, time: float) -> list[str]:
        """The keys of every deadline at or before ``time``, in time order."""
        fifo, heap, keys = self._fifo, self._heap, []
        while True:
            if fifo and fifo[0][0] <= time and (not heap or fifo[0] <= heap[0]):
                keys.append(fifo.popleft()[1])
            elif heap and heap[0][0] <= time:
                keys.append(heapq.heappop(heap)[1])
            else:
                return keys


class JoinCore:
    """Joins impressions with actions; see the module docstring for event time.

    Parameters
    ----------
    config
        Window, mode, sampling.
    state
        RocksDB key -> value of the pending impressions and early actions
        restored from the last commit (empty on a first start).
    counters
        Counters restored from the last commit.

    Attributes
    ----------
    emitted, late
        What to write since the last :meth:`take_output`.
    changes
        RocksDB key -> new value (``None``: delete) since the last :meth:`take_changes`.
    counters
        Running totals: impressions, actions, positives, negatives, dropped
        (sampled-out) negatives, late actions by reason, duplicate actions, ...
    """

    def __init__(
        self,
        config: JoinConfig,
        state: dict[bytes, bytes] | None = None,
        counters: dict[str, int] | None = None,
    ) -> None:
        self.config = config
        self.counters: Counter[str] = Counter(counters or {})
        self.emitted: list[Emitted] = []
        self.late: list[Late] = []
        self.changes: dict[bytes, bytes | None] = {}
        self.max_impression_ts = -float("inf")
        self.max_action_ts = -float("inf")
        self._pending: dict[str, list] = {}  # join key -> [ts, body, flags]
        # Pending records are written at the commit (take_changes): those
        # created since the last one are not in RocksDB yet (closed before it,
        # they need no delete), those changed since are written again.
        # Dicts used as ordered sets: RocksDB takes a batch in arrival order
        # faster than in a set's hash order.
        self._unsaved: dict[str, None] = {}
        self._changed: dict[str, None] = {}
        self._closing = _Deadlines()  # when each pending window closes
        self._fake_negative = config.mode == "fake-negative"
        # Fake-negative mode with a wait: when each impression's first copy goes out.
        self._first_copy = _Deadlines() if self._fake_negative else None
        self._wait = config.first_copy_wait_s
        self._early: dict[str, tuple[float, bytes]] = {}
        self._early_order: list[tuple[float, str]] = []
        self._rate_suffix = (
            b""
            if config.negative_rate >= 1
            else b',"sample_rate":' + orjson.dumps(config.negative_rate)
        )
        for key, value in (state or {}).items():
            self._restore(key, value)

    def _restore(self, key: bytes, value: bytes) -> None:
        join_key = key[2:].decode()
        if key.startswith(PENDING):
            ts, flags = _PENDING.unpack_from(value)
            # Old states (no _SENT flag) had no wait: every first copy was out.
            sent = self._fake_negative and (bool(flags & _SENT) or self._wait == 0)
            entry = [ts, value[_PENDING.size :], (flags & _POSITIVE) | (_SENT if sent else 0)]
            self._pending[join_key] = entry
            self._closing.push(ts + self.config.window_s, join_key)
            if not sent and self._first_copy is not None:
                self._first_copy.push(ts, join_key)
            self.max_impression_ts = max(self.max_impression_ts, ts)
        elif key.startswith(EARLY):
            (ts,) = _EARLY.unpack_from(value)
            self._early[join_key] = (ts, value[_EARLY.size :])
            heapq.heappush(self._early_order, (ts, join_key))

    # -- figures -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Impressions whose window is open."""
        return len(self._pending)

    @property
    def early(self) -> int:
        """Actions waiting for their impression."""
        return len(self._early)

    def occupancy(self) -> float:
        """How much of the window the pending impressions span (0 to about 1)."""
        earliest = self._closing.earliest()
        if earliest is None:
            return 0.0
        oldest = earliest - self.config.window_s
        return max(0.0, self.max_impression_ts - oldest) / self.config.window_s

    # -- input ---------------------------------------------------------------

    def impression(self, impression: Impression) -> None:
        """Take one checked impression; a join key seen and still pending raises KeyError."""
        if self.impressions([impression.ts], [impression.key], [impression.body]):
            raise KeyError(impression.key)

    def impressions(self, times: list[float], keys: list[str], bodies: list[bytes]) -> list[int]:
        """Take checked impressions, given as parallel lists of ``ts``, join key and body.

        Returns the positions of those not taken: their join key is already pending.
        """
        pending_of, early_of, unsaved = self._pending, self._early, self._unsaved
        window = self.config.window_s
        at_once = self._fake_negative and self._wait == 0
        first_copy = None if at_once else self._first_copy
        closing, duplicates = [], []
        newest = self.max_impression_ts
        for i, (ts, key, body) in enumerate(zip(times, keys, bodies, strict=True)):
            if key in pending_of:
                duplicates.append(i)
                continue
            entry = [ts, body, 0]
            if early_of:
                early = early_of.pop(key, None)
                if early is not None:
                    self.changes[EARLY + key.encode()] = None
                    if early[0] - ts <= window:
                        entry[_FLAGS] = _POSITIVE
                    else:
                        self._late("after_window", early[1])
            pending_of[key] = entry
            unsaved[key] = None
            closing.append((ts + window, key))
            if ts > newest:
                newest = ts
            if at_once:
                # The weights of fake-negative positives use the running count.
                self.counters["impressions"] += 1
                entry[_FLAGS] |= _SENT
                self._emit_negative(key, entry, "n")
                if entry[_FLAGS] & _POSITIVE:
                    self._emit_positive(key, entry, "p")
            elif first_copy is not None:
                first_copy.push(ts, key)
        if not at_once:
            self.counters["impressions"] += len(closing)
        self.max_impression_ts = newest
        self._closing.push_many(closing)
        return duplicates

    def action(self, action: Action, raw: bytes) -> None:
        """Take one checked action (``raw``: its message, for the late-actions sink)."""
        if self.config.positive_types and action.type not in self.config.positive_types:
            self.counters["ignored_actions"] += 1
            return
        self.counters["actions"] += 1
        self.max_action_ts = max(self.max_action_ts, action.ts)
        key = action.key
        entry = self._pending.get(key)
        if entry is None:
            self._buffer_early(action, raw)
        elif action.ts - entry[_TS] > self.config.window_s:
            self._late("after_window", raw)
        elif entry[_FLAGS] & _POSITIVE:
            self.counters["duplicate_actions"] += 1
        else:
            entry[_FLAGS] |= _POSITIVE
            self._changed[key] = None
            if entry[_FLAGS] & _SENT:  # fake-negative mode, after its (fake) negative
                self._emit_positive(key, entry, "p")

    def advance(self, watermark: float) -> None:
        """Close every window that ends at or before ``watermark``; drop orphaned early actions."""
        pending_of, changes = self._pending, self.changes
        if self._first_copy is not None:
            for key in self._first_copy.take_until(watermark - self._wait):
                entry = pending_of.get(key)
                if entry is not None and not entry[_FLAGS] & _SENT:
                    entry[_FLAGS] |= _SENT
                    self._changed[key] = None
                    if entry[_FLAGS] & _POSITIVE:  # its action came within the wait
                        self.counters["positives_first"] += 1
                        self._emit_positive(key, entry, "p")
                    else:
                        self._emit_negative(key, entry, "n")
        keys = self._closing.take_until(watermark)
        unsaved = self._unsaved
        for key in keys:
            if key in unsaved:
                del unsaved[key]
            else:
                changes[PENDING + key.encode()] = None
        if keys:
            self.counters["closed"] += len(keys)
            closed = [(key, pending_of.pop(key)) for key in keys]
            if self.config.mode == "wait":
                self._emit_closed(closed)
        order = self._early_order
        while order and order[0][0] < watermark:
            ts, key = heapq.heappop(order)
            early = self._early.get(key)
            if early is not None and early[0] == ts:
                del self._early[key]
                self.changes[EARLY + key.encode()] = None
                self._late("no_impression", early[1])

    # -- output --------------------------------------------------------------

    def take_output(self) -> tuple[list[Emitted], list[Late]]:
        """What to write since the last call."""
        emitted, late = self.emitted, self.late
        self.emitted, self.late = [], []
        return emitted, late

    def take_changes(self) -> dict[bytes, bytes | None]:
        """State changes since the last call, for one write batch."""
        changes, self.changes = self.changes, {}
        get, pack = self._pending.get, _PENDING.pack
        self._unsaved |= self._changed
        # (A closed one's delete is in changes already.)
        changes |= {
            PENDING + key.encode(): pack(entry[_TS], entry[_FLAGS]) + entry[_BODY]
            for key in self._unsaved
            if (entry := get(key)) is not None
        }
        self._unsaved, self._changed = {}, {}
        return changes

    # -- internals -----------------------------------------------------------

    def _buffer_early(self, action: Action, raw: bytes) -> None:
        key = action.key
        if key in self._early:
            self.counters["duplicate_actions"] += 1
            return
        self._early[key] = (action.ts, raw)
        heapq.heappush(self._early_order, (action.ts, key))
        self.changes[EARLY + key.encode()] = _EARLY.pack(action.ts) + raw
        while len(self._early) > self.config.max_early_actions:
            ts, oldest = heapq.heappop(self._early_order)
            early = self._early.get(oldest)
            if early is not None and early[0] == ts:
                del self._early[oldest]
                self.changes[EARLY + oldest.encode()] = None
                self._late("buffer_full", early[1])

    def _late(self, reason: str, raw: bytes) -> None:
        self.counters[f"late_{reason}"] += 1
        self.late.append(Late(reason, raw))

    def _emit_closed(self, closed: list[tuple[str, list]]) -> None:
        """Wait mode: the events of impressions whose window closed, in one pass."""
        rate, seed = self.config.negative_rate, self.config.seed
        suffix = self._rate_suffix + b"}"
        emitted, positives, negatives = self.emitted, 0, 0
        for key, entry in closed:
            if entry[_FLAGS] & _POSITIVE:
                positives += 1
                label, part = 1, _ONE
            elif rate >= 1.0 or keep_negative(seed, key, rate):
                negatives += 1
                label, part = 0, _ZERO
            else:
                continue
            event_id = orjson.dumps(key + "#w")
            value = b"".join((entry[_BODY][:-1], part, b',"event_id":', event_id, suffix))
            emitted.append(Emitted(key, value, label))
        counters = self.counters
        counters["positives"] += positives
        counters["negatives"] += negatives
        if dropped := len(closed) - positives - negatives:
            counters["negatives_dropped"] += dropped

    def _emit_negative(self, key: str, entry: list, kind: str) -> None:
        if not keep_negative(self.config.seed, key, self.config.negative_rate):
            self.counters["negatives_dropped"] += 1
            return
        self._emit(key, entry, 0, kind, b"")

    def _emit_positive(self, key: str, entry: list, kind: str) -> None:
        weight = b""
        if self._fake_negative:
            # An impression goes out once as a negative unless its action
            # came within the wait (share F of the positives), and every
            # positive once: the observed odds are p / (1 - pF), not
            # p / (1 - p). Weighting positives by (1 - pF) / (1 - p) restores
            # them (Ktena et al.'s correction for F = 0, with the stream's
            # rates standing in for each example's p and pF).
            counters = self.counters
            seen = max(counters["impressions"], 1)
            rate = min(counters["positives"] / seen, 0.5)
            first = min(counters["positives_first"] / seen, rate)
            weight = b',"weight":' + orjson.dumps(round((1.0 - first) / (1.0 - rate), 4))
        self._emit(key, entry, 1, kind, weight)

    def _emit(self, key: str, entry: list, label: int, kind: str, extra: bytes) -> None:
        self.counters["positives" if label else "negatives"] += 1
        value = b"".join(
            (
                entry[_BODY][:-1],
                _ONE if label else _ZERO,
                b',"event_id":',
                orjson.dumps(f"{key}#{kind}"),
                extra,
                self._rate_suffix,
                b"}",
            )
        )
        self.emitted.append(Emitted(key, value, label))
