"""Raw messages -> columnar :class:`~headrace.stream.Batch` plus dead letters."""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from headrace.schema import FidHasher, Reason, SchemaError, ValidEvent, validate_event

from .batch import Batch, Positions, Record
from .deadletter import DeadLetter

__all__ = ["EventParser", "ParseResult", "ParserConfig"]

_SCALARS = {str, int}


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
    """

    max_message_bytes: int = 1 << 20
    require_label: bool = True
    dense_names: tuple[str, ...] | None = None
    fid_cache_entries: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, not {self.max_message_bytes}")


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The batch of good events and the dead letters of one chunk of records."""

    batch: Batch
    dead_letters: list[DeadLetter]


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
        config = self.config
        max_bytes = config.max_message_bytes
        require_label = config.require_label
        loads = orjson.loads
        dead: list[DeadLetter] = []
        events: list[ValidEvent] = []
        for record in records:
            raw = record.value
            try:
                if raw is None:
                    raise SchemaError(Reason.NOT_JSON, "empty message (a tombstone?)")
                if len(raw) > max_bytes:
                    raise SchemaError(
                        Reason.TOO_LARGE, f"{len(raw)} bytes, the limit is {max_bytes}"
                    )
                try:
                    decoded = loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise SchemaError(Reason.NOT_JSON, str(exc)) from None
                events.append(validate_event(decoded, require_label=require_label))
            except SchemaError as exc:
                dead.append(
                    DeadLetter(exc.reason, exc.detail, record.partition, record.offset, raw or b"")
                )
        # Columns are built slot by slot over all events rather than event by
        # event: list comprehensions and C-level set unions instead of a
        # Python-level append per value, which halves the cost of a batch.
        sparse = [event.sparse for event in events]
        fids: dict[str, np.ndarray] = {}
        offsets: dict[str, np.ndarray] = {}
        for slot in sorted(set().union(*sparse)):
            fids[slot], offsets[slot] = self._slot_column(slot, [s.get(slot) for s in sparse])
        dense_matrix, dense_names = self._dense_matrix([event.dense for event in events])
        batch = Batch(
            fids=fids,
            offsets=offsets,
            dense=dense_matrix,
            dense_names=dense_names,
            labels=np.array([event.label for event in events], dtype=np.float32),
            ts=np.array([event.ts for event in events], dtype=np.float64),
            request_ids=tuple(event.request_id for event in events),
            positions=dict(positions),
        )
        return ParseResult(batch, dead)

    def _slot_column(
        self, slot: str, values: list[str | int | list[str | int] | None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fids and offsets of one slot from each event's value (``None``: absent)."""
        kinds = set(map(type, values))
        if kinds <= _SCALARS:  # the common case: one value per event
            flat = values
            counts = np.ones(len(values), dtype=np.int64)
        else:
            flat = []
            counts = np.zeros(len(values), dtype=np.int64)
            for i, value in enumerate(values):
                if type(value) is list:
                    flat.extend(value)
                    counts[i] = len(value)
                elif value is not None:
                    flat.append(value)
                    counts[i] = 1
        bounds = np.zeros(len(values) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        return np.array(self._hasher.many(slot, flat), dtype=np.int64), bounds  # type: ignore[arg-type]

    def _dense_matrix(self, dense: list[Mapping[str, float]]) -> tuple[np.ndarray, tuple[str, ...]]:
        names = self.config.dense_names
        if names is None:
            names = tuple(sorted(set().union(*dense)))
        matrix = np.zeros((len(dense), len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            matrix[:, j] = [d.get(name, 0.0) for d in dense]
        return matrix, names
