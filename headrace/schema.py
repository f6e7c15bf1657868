"""The event schema every headrace component shares, and the stable feature ids.

An event is one JSON object::

    {"ts": 1700000000.5, "label": 1,
     "sparse": {"user_id": "u42", "item_id": 981, "tags": ["a", "b"]},
     "dense": {"price": 3.5}, "request_id": "r-1"}

- ``ts`` (required): seconds since the epoch, a finite number.
- ``sparse`` (required): slot name -> a string, an integer, or a list of them.
- ``label`` (required for training): 0/1, a bool, or a probability in [0, 1].
- ``dense`` (optional): feature name -> a finite number.
- ``request_id`` (optional): a string, used to join predictions with outcomes.
- ``weight`` (optional, default 1): a finite number >= 0 that scales the
  event's loss (the joiner's importance weights).
- ``sample_rate`` (optional, default 1): the probability, in (0, 1], with
  which negatives of this event's stream were kept; serving and the
  trainer's metrics correct the logit by ``ln(sample_rate)``.
- ``event_id`` (optional): a string that names the event; the trainer trains
  an id at most once (the joiner's replays after a crash repeat ids).

Unknown top-level keys are ignored, so producers can add fields without
breaking older consumers.

Two checks implement these rules. :func:`validate_event` checks a decoded
JSON value and names the rule it breaks. :func:`event_decoder` decodes and
checks raw bytes in one C pass (msgspec) and is the fast path for parsing: it
accepts only events :func:`validate_event` accepts, with the same values, and
rejects some that are valid (e.g. a sparse int beyond int64, a null
``dense``), so a message it rejects gets the full check, which gives the
reason or accepts it after all.

Each sparse value becomes a feature id (fid): the first 8 bytes of the BLAKE2b
digest of (slot, value), read as a signed little-endian 64-bit integer. That is
the same in every process and on every machine (Python's ``hash()`` is salted
per process), and it fits ``int64`` arrays and torch index tensors. An integer
value hashes like its decimal string, so ``981`` and ``"981"`` are one feature:
logs disagree about such types more often than they mean different things.
"""

from __future__ import annotations

import enum
import hashlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, NamedTuple

import msgspec
import numpy as np

__all__ = [
    "FastEvent",
    "FidHasher",
    "Reason",
    "SchemaError",
    "ValidEvent",
    "check_ts",
    "event_decoder",
    "fid",
    "mix64",
    "unknown_fid",
    "validate_event",
]


class Reason(enum.StrEnum):
    """Why a message was sent to the dead letters."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_TS = "missing_ts"
    BAD_TS = "bad_ts"
    MISSING_LABEL = "missing_label"
    BAD_LABEL = "bad_label"
    MISSING_SPARSE = "missing_sparse"
    BAD_SPARSE = "bad_sparse"
    BAD_DENSE = "bad_dense"
    BAD_REQUEST_ID = "bad_request_id"
    BAD_WEIGHT = "bad_weight"
    BAD_SAMPLE_RATE = "bad_sample_rate"
    BAD_EVENT_ID = "bad_event_id"
    # The joiner's inputs (headrace.joiner): impressions and actions.
    MISSING_JOIN_KEY = "missing_join_key"
    BAD_ACTION_TYPE = "bad_action_type"
    DUPLICATE_JOIN_KEY = "duplicate_join_key"


class SchemaError(ValueError):
    """An event breaks the schema; ``reason`` says which rule, ``detail`` where."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class ValidEvent(NamedTuple):
    """The fields of an event that passed :func:`validate_event`."""

    ts: float
    label: float  # NaN when the event has no label and none was required
    sparse: Mapping[str, str | int | list[str | int]]
    dense: Mapping[str, float]
    request_id: str | None
    weight: float = 1.0
    sample_rate: float = 1.0
    event_id: str | None = None


def _is_number(value: object) -> bool:
    # bool is a subclass of int, but true/false is never a timestamp or a price.
    kind = type(value)
    if kind is int:
        # Beyond float range an int has no finite float value (isfinite
        # would raise OverflowError on it).
        return abs(value) <= _FLOAT_MAX_INT  # type: ignore[arg-type]
    return kind is float and math.isfinite(value)  # type: ignore[arg-type]


_FLOAT_MAX_INT = int(sys.float_info.max)


def _check_label(label: object) -> float:
    if type(label) is bool:
        return float(label)
    if not _is_number(label) or not 0.0 <= label <= 1.0:  # type: ignore[operator]
        raise SchemaError(
            Reason.BAD_LABEL, f"label must be 0/1, a bool or in [0, 1], not {label!r}"
        )
    return float(label)  # type: ignore[arg-type]


def _check_sparse(sparse: object) -> Mapping[str, str | int | list[str | int]]:
    if type(sparse) is not dict:
        raise SchemaError(
            Reason.BAD_SPARSE, f"sparse must be an object, not {type(sparse).__name__}"
        )
    # Written out (no helper calls, no generators): this runs for every value.
    for slot, value in sparse.items():
        kind = type(value)
        if kind is str or kind is int:
            continue
        if kind is list:
            for item in value:
                kind = type(item)
                if kind is not str and kind is not int:
                    break
            else:
                continue
        raise SchemaError(
            Reason.BAD_SPARSE,
            f"sparse[{slot!r}] must be a string, an int or a list of them, not {value!r}",
        )
    return sparse


def _check_dense(dense: object) -> Mapping[str, float]:
    if type(dense) is not dict:
        raise SchemaError(Reason.BAD_DENSE, f"dense must be an object, not {type(dense).__name__}")
    for name, value in dense.items():
        if not _is_number(value):
            raise SchemaError(
                Reason.BAD_DENSE, f"dense[{name!r}] must be a finite number, not {value!r}"
            )
    # Floats, like the fast path gives and the float32 matrix will hold.
    return {name: float(value) for name, value in dense.items()}


def check_ts(record: object, kind: str) -> float:
    """Check that ``record`` is a JSON object with a finite ``ts``; return the ts.

    ``kind`` names the record in the error (``"an event"``, ``"an action"``).

    >>> check_ts({"ts": 5}, "an event")
    5.0
    """
    if type(record) is not dict:
        raise SchemaError(
            Reason.NOT_OBJECT, f"{kind} is a JSON object, not {type(record).__name__}"
        )
    ts = record.get("ts")
    if ts is None:
        raise SchemaError(Reason.MISSING_TS, "ts (seconds since the epoch) is required")
    if not _is_number(ts):
        raise SchemaError(Reason.BAD_TS, f"ts must be a finite number, not {ts!r}")
    return float(ts)


def validate_event(event: object, *, require_label: bool = True) -> ValidEvent:
    """Check a decoded JSON value against the event schema.

    Parameters
    ----------
    event
        The value decoded from one message.
    require_label
        Whether an event without ``label`` breaks the schema (training) or is
        fine (prediction).

    Returns
    -------
    ValidEvent
        The event's fields; the sparse and dense mappings are the input's own.

    Raises
    ------
    SchemaError
        With the :class:`Reason` of the first rule the event breaks.
    """
    ts = check_ts(event, "an event")
    label = event.get("label")  # type: ignore[union-attr]
    if label is None:
        if require_label:
            raise SchemaError(Reason.MISSING_LABEL, "label is required for training")
        label_value = math.nan
    else:
        label_value = _check_label(label)
    sparse = event.get("sparse")
    if sparse is None:
        raise SchemaError(Reason.MISSING_SPARSE, "sparse (slot -> value) is required")
    dense = event.get("dense")
    request_id = _check_optional_str(event.get("request_id"), "request_id", Reason.BAD_REQUEST_ID)
    return ValidEvent(
        ts=ts,
        label=label_value,
        sparse=_check_sparse(sparse),
        dense=_EMPTY if dense is None else _check_dense(dense),
        request_id=request_id,
        weight=_check_weight(event.get("weight")),
        sample_rate=_check_sample_rate(event.get("sample_rate")),
        event_id=_check_optional_str(event.get("event_id"), "event_id", Reason.BAD_EVENT_ID),
    )


def _check_weight(weight: object) -> float:
    if weight is None:
        return 1.0
    if not _is_number(weight) or weight < 0:  # type: ignore[operator]
        raise SchemaError(Reason.BAD_WEIGHT, f"weight must be a finite number >= 0, not {weight!r}")
    return float(weight)  # type: ignore[arg-type]


def _check_sample_rate(rate: object) -> float:
    if rate is None:
        return 1.0
    if not _is_number(rate) or not 0.0 < rate <= 1.0:  # type: ignore[operator]
        raise SchemaError(Reason.BAD_SAMPLE_RATE, f"sample_rate must be in (0, 1], not {rate!r}")
    return float(rate)  # type: ignore[arg-type]


def _check_optional_str(value: object, name: str, reason: Reason) -> str | None:
    if value is not None and type(value) is not str:
        raise SchemaError(reason, f"{name} must be a string, not {type(value).__name__}")
    return value


_EMPTY: Mapping[str, float] = {}

# The fast path's types. Every bound errs on the strict side: what they reject
# goes to validate_event, which gives the reason or accepts it.
# msgspec refuses numbers that overflow a double, and JSON has no NaN, so a
# plain float is finite.
_Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# orjson reads JSON integers up to 2**64 - 1 as int and larger ones as float
# (a bad sparse value); msgspec bounds stop at int64, so the rare uint64 value
# takes the full check.
_SparseInt = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
_SparseValue = str | _SparseInt | list[str | _SparseInt]
_Weight = Annotated[float, msgspec.Meta(ge=0.0)]
_SampleRate = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]


class _LabelledEvent(msgspec.Struct, gc=False):
    # gc=False: an event struct holds no cycles, so the collector need not track it.
    ts: float
    sparse: dict[str, _SparseValue]
    label: bool | _Probability
    dense: dict[str, float] = {}
    request_id: str | None = None
    weight: _Weight = 1.0
    sample_rate: _SampleRate = 1.0
    event_id: str | None = None


class _UnlabelledEvent(msgspec.Struct, gc=False):
    ts: float
    sparse: dict[str, _SparseValue]
    label: bool | _Probability = math.nan
    dense: dict[str, float] = {}
    request_id: str | None = None
    weight: _Weight = 1.0
    sample_rate: _SampleRate = 1.0
    event_id: str | None = None


#: What the fast path returns: the fields of :class:`ValidEvent` as
#: attributes, except that ``label`` may still be a bool.
FastEvent = _LabelledEvent | _UnlabelledEvent


def event_decoder(*, require_label: bool = True) -> Callable[[bytes], FastEvent]:
    """The fast path: decode and check one raw message in a single C call.

    Parameters
    ----------
    require_label
        As for :func:`validate_event`.

    Returns
    -------
    Callable[[bytes], FastEvent]
        Returns an event with the attributes of :class:`ValidEvent` (a bool
        ``label`` stays a bool) and raises ``msgspec.DecodeError`` or
        ``UnicodeDecodeError`` for a message it does not accept. That is no
        verdict: decode the message and call :func:`validate_event` for one.
    """
    kind = _LabelledEvent if require_label else _UnlabelledEvent
    return msgspec.json.Decoder(kind).decode


def fid(slot: str, value: str | int) -> int:
    """The stable 64-bit feature id of one sparse value.

    Parameters
    ----------
    slot
        The slot (feature) name, e.g. ``"user_id"``.
    value
        The value; an int hashes like its decimal string.

    Returns
    -------
    int
        A signed 64-bit integer, the same in every process and on every machine.
    """
    slot_bytes = slot.encode()
    # The length prefix keeps ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.blake2b(
        len(slot_bytes).to_bytes(4, "little") + slot_bytes + str(value).encode(),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "little", signed=True)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of uint64 values ``(n,)``: bijective and well spread.

    What every hash of fids derived in the project builds on (table
    positions, owner ranks, initial rows, the generator's draws).

    Examples
    --------
    >>> mix64(np.array([0, 1], dtype=np.uint64)).tolist()
    [0, 6238072747940578789]
    """
    z = x.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def unknown_fid(slot: str) -> int:
    """The reserved feature id of ``slot``'s "unknown" row: what ids without a row get.

    A regular row of the slot's table (checkpointed, synced and expired like
    any other; the trainer looks it up at every step). It is hashed apart
    from every value's :func:`fid` (BLAKE2b personalised with
    ``b"unknown-row"``), so it is no value's id; slots that share a table
    each get their own.

    >>> unknown_fid("user_id") == unknown_fid("user_id") != fid("user_id", "")
    True
    """
    digest = hashlib.blake2b(slot.encode(), digest_size=8, person=b"unknown-row").digest()
    return int.from_bytes(digest, "little", signed=True)


class FidHasher:
    """:func:`fid` with a bounded per-slot cache, for the hot parsing path.

    Popular users and items repeat across events, so most lookups hit the
    cache. When the cache holds ``max_entries`` values it is emptied rather
    than evicted entry by entry: cheaper, and a miss only costs one hash.

    Parameters
    ----------
    max_entries
        Upper bound on the cached (slot, value) pairs.
    """

    def __init__(self, max_entries: int = 1 << 20) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._cache: dict[str, dict[str | int, int]] = {}
        self._size = 0

    def __call__(self, slot: str, value: str | int) -> int:
        """Return ``fid(slot, value)``."""
        return self.many(slot, [value])[0]

    def many(self, slot: str, values: list[str | int]) -> list[int]:
        """Return ``[fid(slot, v) for v in values]``, hashing each distinct miss once."""
        cache = self._slot_cache(slot)
        found = list(map(cache.get, values))
        if None in found:
            self._fill(slot, values, found)
        return found  # type: ignore[return-value]

    def array(self, slot: str, values: Sequence[str | int]) -> np.ndarray:
        """:meth:`many` as an ``int64`` array, with one pass over the hits."""
        found = list(map(self._slot_cache(slot).get, values))
        try:
            return np.array(found, dtype=np.int64)
        except TypeError:  # a None among them: a value not cached yet
            self._fill(slot, values, found)
        return np.array(found, dtype=np.int64)

    def _slot_cache(self, slot: str) -> dict[str | int, int]:
        cache = self._cache.get(slot)
        if cache is None:
            cache = self._cache[slot] = {}
        return cache

    def _fill(self, slot: str, values: Sequence[str | int], found: list[int | None]) -> None:
        """Hash the values whose ``found`` entry is None, caching the fids."""
        cache = self._slot_cache(slot)
        for i, value in enumerate(values):
            if found[i] is None:
                known = cache.get(value)
                if known is None:
                    if self._size >= self.max_entries:
                        cache = {}
                        self._cache = {slot: cache}
                        self._size = 0
                    known = cache[value] = fid(slot, value)
                    self._size += 1
                found[i] = known
