"""How the store lays out its state in RocksDB.

Keys (raw bytes; RocksDB keeps them sorted, so each kind is one range):

- ``b"m"``: metadata, JSON (format version, seed, slots and their ids, filter).
- ``b"r" + slot id (u16, big-endian) + fid (u64, big-endian)``: one row, the
  packed record ``weights f32[dim] | optimizer state f32[k*dim] | last_seen f64``.
- ``b"e" + slot id (u16) + last_seen (sortable f64) + fid (i64)``, all
  big-endian: the expiry index of slots with ``expire_after``, empty values.
  Written in the same checkpoint batch as the rows, so an expiry sweep finds
  the rows unseen since a time by one range scan, without reading rows.
- ``b"f" + chunk (u32, big-endian)``: one chunk of the counting filter.
- ``b"x" + name``: a caller's checkpoint blob.
"""

from __future__ import annotations

import numpy as np

META_KEY = b"m"
EXPIRY_PREFIX = b"e"
ROW_PREFIX = b"r"
FILTER_PREFIX = b"f"
EXTRA_PREFIX = b"x"
FORMAT_VERSION = 1
ROW_KEY_LEN = 11
EXPIRY_KEY_LEN = 19
_SIGN = np.uint64(1 << 63)


def row_dtype(dim: int, state_width: int) -> np.dtype:
    """The packed on-disk record of one row."""
    return np.dtype([("w", "<f4", (dim,)), ("s", "<f4", (state_width,)), ("t", "<f8")])


def split_keys(packed: np.ndarray) -> list[bytes]:
    """The rows of fixed-length keys ``(n, width)`` uint8 as bytes.

    Through a void view, whose items numpy turns into bytes in C (4x
    faster than slicing one buffer in a Python loop).
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    return packed.view(f"V{packed.shape[1]}").ravel().tolist()


def _big_endian(values: np.ndarray, dtype: str, n: int) -> np.ndarray:
    """``values`` (broadcast to ``n``) as big-endian bytes, one row each."""
    array = np.broadcast_to(np.asarray(values).astype(dtype), (n,))
    return np.ascontiguousarray(array).view(np.uint8).reshape(n, np.dtype(dtype).itemsize)


def packed_row_keys(slot_ids: int | np.ndarray, fids: np.ndarray) -> np.ndarray:
    """Keys of ``fids`` in slots ``slot_ids`` (one for all, or one per fid), ``(n, 11)`` uint8."""
    n = len(fids)
    packed = np.empty((n, ROW_KEY_LEN), dtype=np.uint8)
    packed[:, 0] = ROW_PREFIX[0]
    packed[:, 1:3] = _big_endian(slot_ids, ">u2", n)
    packed[:, 3:] = _big_endian(fids, ">i8", n)
    return packed


def row_keys(slot_ids: int | np.ndarray, fids: np.ndarray) -> list[bytes]:
    """Keys of ``fids`` in slots ``slot_ids`` (one for all, or one per fid).

    >>> row_keys(1, np.array([2], dtype=np.int64))
    [b'r\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02']
    """
    return split_keys(packed_row_keys(slot_ids, fids))


def slot_range(prefix: bytes, slot_id: int) -> tuple[bytes, bytes]:
    """First key and the key after the last of one slot's keys of a kind."""
    return prefix + slot_id.to_bytes(2, "big"), prefix + (slot_id + 1).to_bytes(2, "big")


def _sortable(times: np.ndarray) -> np.ndarray:
    """float64 bit patterns as uint64 that sort as the floats do (NaN excluded)."""
    bits = np.asarray(times, dtype=np.float64).view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def packed_expiry_keys(
    slot_ids: int | np.ndarray, last_seen: np.ndarray, fids: np.ndarray
) -> np.ndarray:
    """Expiry index keys of rows, ``(n, 19)`` uint8; see :func:`expiry_keys`."""
    n = len(fids)
    packed = np.empty((n, EXPIRY_KEY_LEN), dtype=np.uint8)
    packed[:, 0] = EXPIRY_PREFIX[0]
    packed[:, 1:3] = _big_endian(slot_ids, ">u2", n)
    packed[:, 3:11] = _big_endian(_sortable(last_seen), ">u8", n)
    packed[:, 11:] = _big_endian(fids, ">i8", n)
    return packed


def expiry_keys(slot_ids: int | np.ndarray, last_seen: np.ndarray, fids: np.ndarray) -> list[bytes]:
    """Expiry index keys of rows; they sort by slot, then last_seen, then fid.

    >>> a, b = expiry_keys(0, np.array([-1.0, 2.5]), np.array([9, 1], dtype=np.int64))
    >>> a < b < expiry_keys(0, np.array([2.5]), np.array([2], dtype=np.int64))[0]
    True
    """
    return split_keys(packed_expiry_keys(slot_ids, last_seen, fids))


def parse_expiry_keys(keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """last_seen times and fids of expiry index keys."""
    if any(len(k) != EXPIRY_KEY_LEN for k in keys):
        raise ValueError(f"an expiry index key is not {EXPIRY_KEY_LEN} bytes long")
    packed = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, EXPIRY_KEY_LEN)
    bits = packed[:, 3:11].copy().view(">u8").ravel().astype(np.uint64)
    times = np.where(bits & _SIGN, bits & ~_SIGN, ~bits).view(np.float64)
    return times, packed[:, 11:].copy().view(">i8").ravel().astype(np.int64)


def parse_row_keys(keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Slot ids and fids of row keys."""
    if any(len(k) != ROW_KEY_LEN for k in keys):
        raise ValueError(f"a row key is not {ROW_KEY_LEN} bytes long")
    packed = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, ROW_KEY_LEN)
    slot_ids = packed[:, 1:3].copy().view(">u2").ravel().astype(np.int64)
    fids = packed[:, 3:].copy().view(">i8").ravel().astype(np.int64)
    return slot_ids, fids


def encode_rows(
    dtype: np.dtype, weights: np.ndarray, state: np.ndarray, last_seen: np.ndarray
) -> list[bytes]:
    records = np.empty(len(weights), dtype=dtype)
    records["w"] = weights
    records["s"] = state
    records["t"] = last_seen
    return records.view(f"V{dtype.itemsize}").tolist()


def decode_rows(dtype: np.dtype, values: list[bytes]) -> np.ndarray:
    """Records from row values; raises ValueError if any has the wrong size."""
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    if np.any(sizes != dtype.itemsize):
        bad = int(np.flatnonzero(sizes != dtype.itemsize)[0])
        raise ValueError(f"row value {bad} has {sizes[bad]} bytes, expected {dtype.itemsize}")
    return np.frombuffer(b"".join(values), dtype=dtype)


def filter_key(chunk: int) -> bytes:
    return FILTER_PREFIX + chunk.to_bytes(4, "big")


def extra_key(name: str) -> bytes:
    return EXTRA_PREFIX + name.encode()
