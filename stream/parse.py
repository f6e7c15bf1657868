"""Raw messages -> columnar :class:`~headrace.stream.Batch` plus dead letters."""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter

import numpy as np
import orjson

from headrace.schema import (
    FastEvent,
    FidHasher,
    Reason,
    SchemaError,
    ValidEvent,
    event_decoder,
    validate_event,
)

from .batch import Batch, Positions, Record
from .deadletter import DeadLetter

__all__ = ["EventParser", "ParseResult", "ParserConfig"]

_SCALARS = {str, int}
_TS, _LABEL, _SPARSE, _DENSE, _REQUEST_ID, _WEIGHT, _SAMPLE_RATE, _EVENT_ID = map(
    attrgetter,
    ("ts", "label", "sparse", "dense", "request_id", "weight", "sample_rate", "event_id"),
)


@dataclass(frozen=True, slots=True)
class ParserConfig:
    """How raw messages are parsed.

    Attributes
    ----------
    max_message_bytes
        Larger messages are dead letters (``too_large``) without being decoded.
    require_label
        Training input needs labels; prediction input need not have them.
    dense_names
        Fixed dense columns, in order; other dense features are ignored. When
        ``None``, each batch has the sorted names that occur in it.
    fid_cache_entries
        Bound on the (slot, value) -> fid cache.
    fid_names
        ``(slot, name)`` pairs: the slot's values are hashed as ``name``'s
        (the table that several slots share), so that one value is one fid
        in all of them. Other slots hash with their own name.
    """

    max_message_bytes: int = 1 << 20
    require_label: bool = True
    dense_names: tuple[str, ...] | None = None
    fid_cache_entries: int = 1 << 20
    fid_names: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, not {self.max_message_bytes}")


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The batch of good events and the dead letters of one chunk of records.

    Attributes
    ----------
    batch
        The good events, in record order.
    dead_letters
        The bad records, in record order.
    kept
        ``bool`` per record: True where it became an event of ``batch``.
    """

    batch: Batch
    dead_letters: list[DeadLetter]
    kept: np.ndarray

    def slice(
        self, start: int, stop: int, positions: Positions, events: np.ndarray | None = None
    ) -> ParseResult:
        """The result of records ``start:stop`` alone, its batch ending at ``positions``.

        A reader that parses large chunks hands them out in batches of the
        size asked for, as if each had been parsed on its own. ``events``
        (:meth:`event_bounds`, computed once per chunk) saves a pass over it.
        """
        events = self.event_bounds() if events is None else events
        first, last = int(events[start]), int(events[stop])
        bad = start - first  # bad records before ``start``
        return ParseResult(
            self.batch.slice(first, last, positions),
            self.dead_letters[bad : bad + (stop - start) - (last - first)],
            self.kept[start:stop],
        )

    @staticmethod
    def concat(results: list[ParseResult], positions: Positions) -> ParseResult:
        """The results of consecutive chunks as one, its batch ending at ``positions``."""
        return ParseResult(
            Batch.concat([r.batch for r in results], positions),
            [letter for r in results for letter in r.dead_letters],
            np.concatenate([r.kept for r in results]),
        )

    def event_bounds(self) -> np.ndarray:
        """``(records + 1,)`` int64: how many events the records before each boundary gave."""
        bounds = np.zeros(len(self.kept) + 1, dtype=np.int64)
        np.cumsum(self.kept, out=bounds[1:])
        return bounds


class EventParser:
    """Decodes, validates and hashes raw messages into columns.

    Parameters
    ----------
    config
        Parsing rules; the defaults suit training.
    """

    def __init__(self, config: ParserConfig | None = None) -> None:
        self.config = config or ParserConfig()
        self._hasher = FidHasher(self.config.fid_cache_entries)
        self._fid_names = dict(self.config.fid_names)
        self._decode = event_decoder(require_label=self.config.require_label)

    def parse(self, records: Sequence[Record], positions: Positions) -> ParseResult:
        """Parse a chunk of records.

        Parameters
        ----------
        records
            Raw messages in source order.
        positions
            The source positions after the last of ``records``; the batch
            carries them so the caller can resume after it.

        Returns
        -------
        ParseResult
            Good events as a :class:`Batch`, bad ones as dead letters.
        """
        # Decoded events hold no reference cycles, yet thousands of new dicts
        # trigger the cyclic collector again and again, which rescans every
        # live object: pausing it for the batch is a large share of the speed.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._parse(records, positions)
        finally:
            if collecting:
                gc.enable()

    def _parse(self, records: Sequence[Record], positions: Positions) -> ParseResult:
        max_bytes = self.config.max_message_bytes
        decode = self._decode
        dead: list[DeadLetter] = []
        events: list[FastEvent | ValidEvent] = []
        kept = np.ones(len(records), dtype=bool)
        for i, record in enumerate(records):
            raw = record.value
            if raw is not None and len(raw) <= max_bytes:
                try:
                    events.append(decode(raw))
                    continue
                except Exception:
                    # Not a verdict: whatever the fast path refuses, for any
                    # reason, gets the full check, whose only error is a
                    # SchemaError with the reason.
                    pass
            try:
                events.append(self._check(raw))
            except SchemaError as exc:
                kept[i] = False
                dead.append(
                    DeadLetter(exc.reason, exc.detail, record.partition, record.offset, raw or b"")
                )
        fids: dict[str, np.ndarray] = {}
        offsets: dict[str, np.ndarray] = {}
        for slot, values in sorted(self._sparse_columns(list(map(_SPARSE, events))).items()):
            fids[slot], offsets[slot] = self._slot_column(slot, values)
        dense_matrix, dense_names = self._dense_matrix(list(map(_DENSE, events)))
        batch = Batch(
            fids=fids,
            offsets=offsets,
            dense=dense_matrix,
            dense_names=dense_names,
            # A bool label from the fast path converts like float(label).
            labels=np.array(list(map(_LABEL, events)), dtype=np.float32),
            ts=np.array(list(map(_TS, events)), dtype=np.float64),
            request_ids=tuple(map(_REQUEST_ID, events)),
            positions=dict(positions),
            weights=np.array(list(map(_WEIGHT, events)), dtype=np.float32),
            sample_rates=np.array(list(map(_SAMPLE_RATE, events)), dtype=np.float32),
            event_ids=tuple(map(_EVENT_ID, events)),
        )
        return ParseResult(batch, dead, kept)

    def _check(self, raw: bytes | None) -> ValidEvent:
        """The full check of one message; raises :class:`SchemaError` with the reason."""
        if raw is None:
            raise SchemaError(Reason.NOT_JSON, "empty message (a tombstone?)")
        max_bytes = self.config.max_message_bytes
        if len(raw) > max_bytes:
            raise SchemaError(Reason.TOO_LARGE, f"{len(raw)} bytes, the limit is {max_bytes}")
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SchemaError(Reason.NOT_JSON, str(exc)) from None
        return validate_event(decoded, require_label=self.config.require_label)

    @staticmethod
    def _sparse_columns(
        sparse: list[Mapping[str, str | int | list[str | int]]],
    ) -> dict[str, Sequence[str | int | list[str | int] | None]]:
        """Slot -> each event's value (``None`` where an event lacks the slot).

        Columns are built slot by slot over all events rather than event by
        event: C-level iteration instead of a Python-level append per value.
        """
        key_orders = set(map(tuple, sparse))
        if len(key_orders) == 1:
            # Producers mostly write every event's slots in the same order;
            # then the columns are a transposition of the values.
            [slots] = key_orders
            return dict(zip(slots, zip(*map(dict.values, sparse), strict=True), strict=True))
        return {slot: [s.get(slot) for s in sparse] for slot in set().union(*sparse)}

    def _slot_column(
        self, slot: str, values: Sequence[str | int | list[str | int] | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fids and offsets of one slot from each event's value (``None``: absent)."""
        name = self._fid_names.get(slot, slot)  # a shared table hashes as the table
        kinds = set(map(type, values))
        if kinds <= _SCALARS:  # the common case: one value per event
            return self._hasher.array(name, values), np.arange(len(values) + 1, dtype=np.int64)  # type: ignore[arg-type]
        if kinds == {list}:  # multi-valued in every event
            flat = list(chain.from_iterable(values))  # type: ignore[arg-type]
            counts = list(map(len, values))  # type: ignore[arg-type]
        else:
            flat = []
            counts = [0] * len(values)
            for i, value in enumerate(values):
                if type(value) is list:
                    flat.extend(value)
                    counts[i] = len(value)
                elif value is not None:
                    flat.append(value)
                    counts[i] = 1
        bounds = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        return self._hasher.array(name, flat), bounds

    def _dense_matrix(self, dense: list[Mapping[str, float]]) -> tuple[np.ndarray, tuple[str, ...]]:
        names = self.config.dense_names
        if names is None:
            names = tuple(sorted(set().union(*dense)))
        matrix = np.zeros((len(dense), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            matrix[:, j] = [d.get(name, 0.0) for d in dense]
        return matrix, names
