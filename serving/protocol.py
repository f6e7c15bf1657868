"""The wire format of parameter updates, shared by every transport.

An :class:`Update` is a delta (rows changed and fids removed since the
previous version) or a snapshot (every row, the dense weights and the model
description). A large update is split into parts that each fit a transport
message; a reader applies a version only once all its parts have arrived.
A distributed trainer publishes each version as one update per shard (each
rank its own rows; shard 0 adds the dense weights and ``meta``); a reader
applies the version once every shard's parts have arrived.

One part is one frame::

    b"HRP1" | u32 header length | header (JSON) | body | u32 CRC-32 of header + body

The body holds, per slot in header order, the fids (int64), the vectors
(float32, ``n x dim``) and the removed fids (int64), then the dense blob.

The CRC catches damage, not forgery. With a key (see :class:`SyncKey`) a
frame is signed instead::

    b"HRS1" | u32 header length | header | body | u32 CRC | HMAC-SHA256 (32 bytes)

the HMAC covering every byte before it. A reader given the key takes only
signed frames whose HMAC checks out; a reader without one takes both kinds
(it cannot check a signature, and behaves as before signing existed).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from headrace.config import ConfigError, read_secret

__all__ = [
    "CorruptUpdate",
    "SlotRows",
    "SyncKey",
    "Update",
    "UpdateAssembler",
    "decode_part",
    "encode",
]

log = logging.getLogger(__name__)

MAGIC = b"HRP1"
SIGNED_MAGIC = b"HRS1"
_LEN = struct.Struct("<I")
_TAG_BYTES = hashlib.sha256().digest_size
#: Where ``headrace train`` and ``headrace serve`` look for the sync key.
SYNC_KEY_ENV = "HEADRACE_SYNC_KEY"
#: Shorter keys are refused: HMAC is only as strong as its key.
MIN_KEY_BYTES = 16


class SyncKey:
    """The shared secret that signs and checks parameter updates.

    Its ``repr`` never shows the key, so it can be logged and printed.

    Parameters
    ----------
    secret
        At least :data:`MIN_KEY_BYTES` bytes.

    Raises
    ------
    ValueError
        When the key is too short.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(
                f"the sync key has {len(secret)} bytes; use at least {MIN_KEY_BYTES} "
                "(e.g. the output of `openssl rand -hex 32`)"
            )
        self._secret = secret

    def __repr__(self) -> str:
        return "SyncKey(<hidden>)"

    def sign(self, data: bytes) -> bytes:
        """The HMAC-SHA256 tag of ``data``."""
        return hmac.new(self._secret, data, hashlib.sha256).digest()

    def verify(self, data: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is the tag of ``data`` (compared in constant time)."""
        return hmac.compare_digest(self.sign(data), tag)

    @classmethod
    def load(
        cls, path: str | Path | None = None, environ: Mapping[str, str] | None = None
    ) -> SyncKey | None:
        """The key in the file at ``path``, else in ``HEADRACE_SYNC_KEY``, else ``None``.

        Raises
        ------
        headrace.config.ConfigError
            When the file cannot be read or the key is too short; the message
            names the file or the variable, never the key.
        """
        secret = read_secret(path, SYNC_KEY_ENV, environ)
        if secret is None:
            return None
        try:
            return cls(secret.encode())
        except ValueError as exc:
            where = SYNC_KEY_ENV if path is None else f"the sync key file {path}"
            raise ConfigError(f"{where}: {exc}") from None


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
    shard, shards
        This update holds the rows of shard ``shard`` of ``shards`` (one per
        rank of a distributed trainer); the version is whole once all
        shards' updates have arrived.
    """

    kind: Literal["delta", "snapshot"]
    version: int
    event_time: float
    published_at: float
    slots: Mapping[str, SlotRows]
    dense: bytes | None = None
    meta: Mapping[str, Any] | None = field(default=None)
    shard: int = 0
    shards: int = 1

    @property
    def rows(self) -> int:
        return sum(len(s.fids) + len(s.removed) for s in self.slots.values())


def encode(
    update: Update, max_part_bytes: int = 900_000, key: SyncKey | None = None
) -> list[bytes]:
    """Frames of ``update``, each at most about ``max_part_bytes`` long.

    Rows are split across parts; the dense blob and ``meta`` travel in part
    0, so a single frame may exceed the limit only by the size of the blob.
    With ``key`` every frame is signed.
    """
    pieces = list(_split(update, max_part_bytes))
    return [
        _frame(update, part, len(pieces), rows, with_dense=part == 0, key=key)
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
    update: Update,
    part: int,
    parts: int,
    slots: dict[str, SlotRows],
    with_dense: bool,
    key: SyncKey | None,
) -> bytes:
    dense = update.dense if with_dense else None
    header = {
        "kind": update.kind,
        "version": update.version,
        "event_time": update.event_time,
        "published_at": update.published_at,
        "part": part,
        "parts": parts,
        "shard": update.shard,
        "shards": update.shards,
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
    if key is None:
        return MAGIC + _LEN.pack(len(body[0])) + payload + _LEN.pack(crc)
    signed = SIGNED_MAGIC + _LEN.pack(len(body[0])) + payload + _LEN.pack(crc)
    return signed + key.sign(signed)


@dataclass(frozen=True)
class Part:
    """One decoded frame: a slice of the rows of ``update``, part ``part`` of ``parts``."""

    update: Update
    part: int
    parts: int


def _unsign(frame: bytes, key: SyncKey | None) -> bytes:
    """The frame without its signature, checked when there is a ``key``.

    A frame whose HMAC fails counts as damaged (``checksum``) when its CRC
    fails too, and as forged (``signature``) when only the HMAC does: a
    forger can always fix the public CRC, while damage rarely fixes it.
    """
    if frame[:4] == MAGIC:
        if key is not None:
            raise CorruptUpdate("signature", "an unsigned update, and this worker has a sync key")
        return frame
    body, tag = frame[:-_TAG_BYTES], frame[-_TAG_BYTES:]
    if len(body) < 12:
        raise CorruptUpdate("checksum", "the signed frame is truncated")
    if key is None or key.verify(body, tag):
        return body
    if zlib.crc32(body[8:-4]) == _LEN.unpack_from(body, len(body) - 4)[0]:
        raise CorruptUpdate("signature", "the update's signature does not match the sync key")
    raise CorruptUpdate("checksum", "the signed frame is truncated or damaged")


def decode_part(frame: bytes, key: SyncKey | None = None) -> Part:
    """Decode one frame; raises :class:`CorruptUpdate` if it is damaged.

    With ``key`` only frames signed with it are taken (reason
    ``signature`` for the others).
    """
    if len(frame) < 12 or frame[:4] not in (MAGIC, SIGNED_MAGIC):
        raise CorruptUpdate("bad_magic", f"frame of {len(frame)} bytes is not a headrace update")
    frame = _unsign(frame, key)
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
        # Absent from frames of single-process trainers published before sharding.
        shard=int(header.get("shard", 0)),
        shards=int(header.get("shards", 1)),
    )
    if update.kind not in ("delta", "snapshot"):
        raise ValueError(f"unknown kind {update.kind!r}")
    if not 0 <= update.shard < update.shards:
        raise ValueError(f"shard {update.shard} of {update.shards}")
    return Part(update, int(header["part"]), int(header["parts"]))


class UpdateAssembler:
    """Collects the parts of each version, from every shard, and hands out whole updates.

    The parts of one shard's update arrive in order on every transport, and
    a shard publishes its versions in order; the shards of a distributed
    trainer interleave. A part of a newer version from a shard drops the
    older versions that shard left unfinished (its publisher died
    mid-update): they can never complete. ``incomplete`` counts those.
    """

    def __init__(self) -> None:
        #: version -> shard -> the parts received so far, in order.
        self._pending: dict[int, dict[int, list[Part]]] = {}
        self.incomplete = 0

    def add(self, part: Part) -> Update | None:
        """The whole update once ``part`` completes it, else ``None``.

        Raises :class:`CorruptUpdate` for a part out of order; the version's
        parts received so far are dropped then.
        """
        version, shard = part.update.version, part.update.shard
        for old in [v for v, by_shard in self._pending.items() if v < version]:
            if not _whole(self._pending[old].get(shard, [])):
                received = self._pending.pop(old)
                log.warning(
                    "version %d ended with parts of %d of %d shards; dropped",
                    old,
                    sum(map(_whole, received.values())),
                    part.update.shards,
                )
                self.incomplete += 1
        by_shard = self._pending.setdefault(version, {})
        pending = by_shard.setdefault(shard, [])
        known = [parts[0].update.shards for parts in by_shard.values() if parts]
        if (
            part.part != len(pending)
            or (pending and part.parts != pending[0].parts)
            or (known and part.update.shards != known[0])
        ):
            del self._pending[version]
            raise CorruptUpdate(
                "incomplete",
                f"part {part.part} of version {version} arrived out of order",
            )
        pending.append(part)
        if len(by_shard) < part.update.shards or not all(map(_whole, by_shard.values())):
            return None
        del self._pending[version]
        return _merge([p for s in sorted(by_shard) for p in by_shard[s]])


def _whole(parts: list[Part]) -> bool:
    return bool(parts) and len(parts) == parts[0].parts


def _merge(parts: list[Part]) -> Update:
    """One update of the parts of every shard (shard 0's first part carries dense and meta)."""
    first = parts[0].update
    if len(parts) == 1:
        return first
    if any(p.update.kind != first.kind for p in parts):
        raise CorruptUpdate("malformed", f"the shards of version {first.version} differ in kind")
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
        max(p.update.event_time for p in parts),
        max(p.update.published_at for p in parts),
        slots,
        first.dense,
        first.meta,
    )
