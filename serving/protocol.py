"""The wire format of parameter updates, shared by every transport.

An :class:`Update` is a delta (rows changed and fids removed since the
previous version) or a snapshot (every row, the dense weights and the model
description). A large update is split into parts that each fit a transport
message; a reader applies a version only once all its parts have arrived.

One part is one frame::

    b"HRP1" | u32 header length | header (JSON) | body | u32 CRC-32 of header + body

The body holds, per slot in header order, the fids (int64), the vectors
(float32, ``n x dim``) and the removed fids (int64), then the dense blob.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["CorruptUpdate", "SlotRows", "Update", "UpdateAssembler", "decode_part", "encode"]

log = logging.getLogger(__name__)

MAGIC = b"HRP1"
_LEN = struct.Struct("<I")


class CorruptUpdate(ValueError):
    """A frame that cannot be decoded; ``reason`` is a short label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class SlotRows:
    """Rows of one slot: ``vectors[i]`` belongs to ``fids[i]``; ``removed`` fids are gone."""

    fids: np.ndarray
    vectors: np.ndarray
    removed: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> SlotRows:
        return cls(np.empty(0, np.int64), np.empty((0, dim), np.float32), np.empty(0, np.int64))


@dataclass(frozen=True)
class Update:
    """One published version.

    Parameters
    ----------
    kind
        ``"delta"`` applies on top of ``version - 1``; ``"snapshot"`` replaces
        everything.
    version
        Increases by one with every update, deltas and snapshots alike.
    event_time
        Event time of the newest example trained into this version.
    published_at
        Wall-clock time of publishing, for sync-lag metrics.
    slots
        Changed (delta) or all (snapshot) rows per slot.
    dense
        Serialized dense weights, when this update carries them.
    meta
        The model description a worker needs to build the model (snapshots).
    """

    kind: Literal["delta", "snapshot"]
    version: int
    event_time: float
    published_at: float
    slots: Mapping[str, SlotRows]
    dense: bytes | None = None
    meta: Mapping[str, Any] | None = field(default=None)

    @property
    def rows(self) -> int:
        return sum(len(s.fids) + len(s.removed) for s in self.slots.values())


def encode(update: Update, max_part_bytes: int = 900_000) -> list[bytes]:
    """Frames of ``update``, each at most about ``max_part_bytes`` long.

    Rows are split across parts; the dense blob and ``meta`` travel in part
    0, so a single frame may exceed the limit only by the size of the blob.
    """
    pieces = list(_split(update, max_part_bytes))
    return [
        _frame(update, part, len(pieces), rows, with_dense=part == 0)
        for part, rows in enumerate(pieces)
    ]


def _row_bytes(rows: SlotRows) -> int:
    return 8 + 4 * rows.vectors.shape[1]


def _split(update: Update, max_part_bytes: int) -> Iterator[dict[str, SlotRows]]:
    """Row ranges per part, filling each part up to ``max_part_bytes``."""
    part: dict[str, SlotRows] = {}
    room = max_part_bytes
    for name, rows in update.slots.items():
        start, removed = 0, rows.removed
        while True:
            take = max(0, min(len(rows.fids) - start, room // _row_bytes(rows)))
            take_removed = max(0, min(len(removed), (room - take * _row_bytes(rows)) // 8))
            part[name] = SlotRows(
                rows.fids[start : start + take],
                rows.vectors[start : start + take],
                removed[:take_removed],
            )
            start, removed = start + take, removed[take_removed:]
            room -= take * _row_bytes(rows) + take_removed * 8
            if start == len(rows.fids) and len(removed) == 0:
                break
            yield part
            part, room = {}, max_part_bytes
    yield part


def _frame(
    update: Update, part: int, parts: int, slots: dict[str, SlotRows], with_dense: bool
) -> bytes:
    dense = update.dense if with_dense else None
    header = {
        "kind": update.kind,
        "version": update.version,
        "event_time": update.event_time,
        "published_at": update.published_at,
        "part": part,
        "parts": parts,
        "slots": [
            {
                "name": name,
                "n": len(r.fids),
                "dim": int(r.vectors.shape[1]),
                "removed": len(r.removed),
            }
            for name, r in slots.items()
        ],
        "dense": None if dense is None else len(dense),
        "meta": update.meta if with_dense else None,
    }
    body = [json.dumps(header).encode()]
    for rows in slots.values():
        body.append(np.ascontiguousarray(rows.fids, dtype="<i8").tobytes())
        body.append(np.ascontiguousarray(rows.vectors, dtype="<f4").tobytes())
        body.append(np.ascontiguousarray(rows.removed, dtype="<i8").tobytes())
    if dense is not None:
        body.append(dense)
    payload = b"".join(body)
    crc = zlib.crc32(payload)
    return MAGIC + _LEN.pack(len(body[0])) + payload + _LEN.pack(crc)


@dataclass(frozen=True)
class Part:
    """One decoded frame: a slice of the rows of ``update``, part ``part`` of ``parts``."""

    update: Update
    part: int
    parts: int


def decode_part(frame: bytes) -> Part:
    """Decode one frame; raises :class:`CorruptUpdate` if it is damaged."""
    if len(frame) < 12 or frame[:4] != MAGIC:
        raise CorruptUpdate("bad_magic", f"frame of {len(frame)} bytes is not a headrace update")
    (header_len,) = _LEN.unpack_from(frame, 4)
    payload = frame[8:-4]
    (crc,) = _LEN.unpack_from(frame, len(frame) - 4)
    if header_len > len(payload) or zlib.crc32(payload) != crc:
        raise CorruptUpdate("checksum", "the frame is truncated or damaged (CRC mismatch)")
    try:
        header = json.loads(payload[:header_len])
        return _parse(header, memoryview(payload)[header_len:])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptUpdate("malformed", f"the frame's layout is inconsistent: {exc}") from exc


def _parse(header: dict, body: memoryview) -> Part:
    offset = 0

    def take(dtype: str, count: int, shape: tuple[int, ...]) -> np.ndarray:
        nonlocal offset
        size = np.dtype(dtype).itemsize * count
        if offset + size > len(body):
            raise ValueError("body shorter than its header says")
        array = np.frombuffer(body[offset : offset + size], dtype=dtype).reshape(shape)
        offset += size
        return array.astype(dtype[1:], copy=True)

    slots = {}
    for s in header["slots"]:
        n, dim, removed = int(s["n"]), int(s["dim"]), int(s["removed"])
        slots[s["name"]] = SlotRows(
            take("<i8", n, (n,)), take("<f4", n * dim, (n, dim)), take("<i8", removed, (removed,))
        )
    dense = None
    if header["dense"] is not None:
        dense = bytes(body[offset : offset + int(header["dense"])])
        offset += len(dense)
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes left over after the body")
    update = Update(
        kind=header["kind"],
        version=int(header["version"]),
        event_time=float(header["event_time"]),
        published_at=float(header["published_at"]),
        slots=slots,
        dense=dense,
        meta=header["meta"],
    )
    if update.kind not in ("delta", "snapshot"):
        raise ValueError(f"unknown kind {update.kind!r}")
    return Part(update, int(header["part"]), int(header["parts"]))


class UpdateAssembler:
    """Collects the parts of each version and hands out whole updates.

    Parts of one version arrive together and in order on every transport. A
    part of a new version drops an unfinished one (its publisher died
    mid-update); ``incomplete`` counts those.
    """

    def __init__(self) -> None:
        self._parts: list[Part] = []
        self.incomplete = 0

    def add(self, part: Part) -> Update | None:
        """The whole update once ``part`` completes it, else ``None``.

        Raises :class:`CorruptUpdate` for a part out of order; the version's
        parts received so far are dropped then.
        """
        if self._parts and part.update.version != self._parts[0].update.version:
            log.warning(
                "version %d ended after %d of %d parts; dropped",
                self._parts[0].update.version,
                len(self._parts),
                self._parts[0].parts,
            )
            self.incomplete += 1
            self._parts = []
        pending = self._parts
        if part.part != len(pending) or (pending and part.parts != pending[0].parts):
            self._parts = []
            raise CorruptUpdate(
                "incomplete",
                f"part {part.part} of version {part.update.version} arrived out of order",
            )
        pending.append(part)
        if len(pending) < part.parts:
            return None
        self._parts = []
        return _merge(pending)


def _merge(parts: list[Part]) -> Update:
    first = parts[0].update
    if len(parts) == 1:
        return first
    names = list(dict.fromkeys(name for p in parts for name in p.update.slots))
    slots = {}
    for name in names:
        pieces = [p.update.slots[name] for p in parts if name in p.update.slots]
        slots[name] = SlotRows(
            np.concatenate([r.fids for r in pieces]),
            np.concatenate([r.vectors for r in pieces]),
            np.concatenate([r.removed for r in pieces]),
        )
    return Update(
        first.kind,
        first.version,
        first.event_time,
        first.published_at,
        slots,
        first.dense,
        first.meta,
    )
