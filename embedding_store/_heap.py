"""Make freed memory leave the process at once, so that RSS follows live memory.

glibc's malloc serves blocks of at least ``M_MMAP_THRESHOLD`` bytes by mmap
and unmaps them when freed, but it raises that threshold (up to 32 MB) each
time such a block is freed: from then on a batch's temporary arrays come
from the heap and stay in the process after they are freed. Under a memory
budget that kept ~50 MB more resident than the store held (measured on the
bench's 2M-row table, 10% budget). Fixing the threshold stops the raising;
the price is a page fault per page of each large temporary array (CPU per
batch: within the noise of the same measurement).
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

# mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
# Arrays of 32k float64 and more (a batch's fids, rows, vectors) are mapped.
_THRESHOLD_BYTES = 256 << 10


@functools.cache
def return_freed_memory() -> bool:
    """Fix malloc's mmap threshold for the whole process (once); False where it has no mallopt.

    >>> isinstance(return_freed_memory(), bool)
    True
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD_BYTES))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", _THRESHOLD_BYTES, done)
    return done
