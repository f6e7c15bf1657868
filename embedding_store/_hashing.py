"""Vectorised 64-bit mixing, used for hash positions and for row initial values.

Everything here is a pure function of its inputs (no process state), so the
results are the same in every process and on every machine.
"""

from __future__ import annotations

import functools

import numpy as np

from headrace.schema import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S11 = np.uint64(11)


def as_uint64(fids: np.ndarray) -> np.ndarray:
    """Reinterpret int64 fids as uint64 without copying."""
    return fids.view(np.uint64)


def salted(fids: np.ndarray, salt: int) -> np.ndarray:
    """Hash of ``(salt, fid)``; distinct salts give independent hash families."""
    return mix64(as_uint64(fids) ^ _mixed_salt(salt & 0xFFFF_FFFF_FFFF_FFFF))


def mixed_salts(salts: np.ndarray) -> np.ndarray:
    """Salts mixed as :func:`salted` mixes one: ``salted(f, s) == mix64(f ^ mixed_salts(s))``."""
    return mix64(np.asarray(salts, dtype=np.uint64))


@functools.lru_cache(maxsize=1024)
def _mixed_salt(salt: int) -> np.uint64:
    # A handful of salts recur on every call of the hot path.
    return mix64(np.asarray([salt], dtype=np.uint64))[0]


def unit_uniform(bits: np.ndarray) -> np.ndarray:
    """Map uint64 hash values to float64 uniforms in [0, 1)."""
    return (bits >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def initial_rows(fids: np.ndarray, dim: int, seed: int, kind: str, scale: float) -> np.ndarray:
    """Initial float32 vectors of ``fids``, a function of ``(seed, fid)`` only.

    Element ``j`` of a row is drawn from the counter-based stream
    ``mix64(mix64(seed ^ fid) + j)``, so the order in which ids arrive does not
    matter.
    """
    if kind == "zeros" or len(fids) == 0:
        return np.zeros((len(fids), dim), dtype=np.float32)
    base = salted(fids, seed)[:, None]
    if kind == "uniform":
        counters = np.arange(dim, dtype=np.uint64) * _GOLDEN
        u = unit_uniform(mix64(base + counters))
        return ((2.0 * u - 1.0) * scale).astype(np.float32)
    # Box-Muller over two independent uniform streams.
    counters = np.arange(2 * dim, dtype=np.uint64) * _GOLDEN
    u = unit_uniform(mix64(base + counters))
    radius = np.sqrt(-2.0 * np.log1p(-u[:, :dim]))
    return (radius * np.cos(2.0 * np.pi * u[:, dim:]) * scale).astype(np.float32)
