"""How the store lays out its state in RocksDB.

Keys (raw bytes; RocksDB keeps them sorted, so each kind is one range):

- ``b"m"``: metadata, JSON (format version, seed, slots and their ids, filter).
- ``b"r" + slot id (u16, big-endian) + fid (u64, big-endian)``: one row, the
  packed record ``weights f32[dim] | optimizer state f32[k*dim] | last_seen f64``.
- ``b"f" + chunk (u32, big-endian)``: one chunk of the counting filter.
- ``b"x" + name``: a caller's checkpoint blob.
"""

from __future__ import annotations

import numpy as np

META_KEY = b"m"
ROW_PREFIX = b"r"
FILTER_PREFIX = b"f"
EXTRA_PREFIX = b"x"
FORMAT_VERSION = 1
_ROW_KEY_LEN = 11


def row_dtype(dim: int, state_width: int) -> np.dtype:
    """The packed on-disk record of one row."""
    return np.dtype([("w", "<f4", (dim,)), ("s", "<f4", (state_width,)), ("t", "<f8")])


def _split(buffer: bytes, size: int) -> list[bytes]:
    return [buffer[i : i + size] for i in range(0, len(buffer), size)]


def row_keys(slot_id: int, fids: np.ndarray) -> list[bytes]:
    """Keys of ``fids`` in slot ``slot_id``."""
    packed = np.empty((len(fids), _ROW_KEY_LEN), dtype=np.uint8)
    packed[:, 0] = ROW_PREFIX[0]
    packed[:, 1:3] = np.frombuffer(slot_id.to_bytes(2, "big"), dtype=np.uint8)
    packed[:, 3:] = fids.astype(">i8").view(np.uint8).reshape(-1, 8)
    return _split(packed.tobytes(), _ROW_KEY_LEN)


def parse_row_keys(keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Slot ids and fids of row keys."""
    if any(len(k) != _ROW_KEY_LEN for k in keys):
        raise ValueError(f"a row key is not {_ROW_KEY_LEN} bytes long")
    packed = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, _ROW_KEY_LEN)
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
    return _split(records.tobytes(), dtype.itemsize)


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
