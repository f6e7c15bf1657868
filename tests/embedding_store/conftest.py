import numpy as np
import pytest

from headrace.embedding_store import EmbeddingStore, SlotConfig


def fids(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@pytest.fixture
def open_store(tmp_path):
    """Open (or reopen) a store in a per-test directory; closes what it opened."""
    opened: list[EmbeddingStore] = []

    def _open(slots: list[SlotConfig] | None = None, **kwargs) -> EmbeddingStore:
        store = EmbeddingStore.open(tmp_path / "store", slots, **kwargs)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()
