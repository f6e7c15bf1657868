"""The collisionless embedding table (``headrace.embedding_store``).

Every sparse id gets its own row, keyed by its full 64-bit fid. Rows are
admitted by a frequency filter, expire after a stretch of event time without
a training lookup, are updated by a per-row optimizer, and are checkpointed to
RocksDB in atomic write batches.

Examples
--------
>>> import tempfile, numpy as np
>>> from headrace.embedding_store import EmbeddingStore, SlotConfig
>>> with EmbeddingStore.open(tempfile.mkdtemp(), [SlotConfig(name="user", dim=8)]) as store:
...     hit = store.lookup_for_training("user", np.array([1, 2], dtype=np.int64), event_time=0.0)
...     store.apply_gradients(hit, np.ones_like(hit.values))
...     store.stats().rows
{'user': 2}
"""

from headrace.embedding_store.config import (
    FTRL,
    SGD,
    Adagrad,
    FilterConfig,
    Initializer,
    SlotConfig,
    StoreConfig,
)
from headrace.embedding_store.store import (
    CorruptStoreError,
    EmbeddingStore,
    MemoryBudgetError,
    SlotChanges,
    StoreError,
    StoreStats,
    TrainingLookup,
)

__all__ = [
    "FTRL",
    "SGD",
    "Adagrad",
    "CorruptStoreError",
    "EmbeddingStore",
    "FilterConfig",
    "Initializer",
    "MemoryBudgetError",
    "SlotChanges",
    "SlotConfig",
    "StoreConfig",
    "StoreError",
    "StoreStats",
    "TrainingLookup",
]
