"""Child process of test_crash.py: checkpoints generation after generation.

Every row of generation ``g`` holds the value ``g`` in every element (zeros
initializer, SGD with lr 1, a gradient of -1 per generation), and the
checkpoint's ``extra`` names ``g``, so a reader can tell a whole checkpoint
from a mix of two.
"""

import sys

import numpy as np

from headrace.embedding_store import SGD, EmbeddingStore, Initializer, SlotConfig

ROWS = 150_000
SLOTS = [
    SlotConfig(name="a", dim=8, optimizer=SGD(lr=1.0), initializer=Initializer(kind="zeros")),
    SlotConfig(name="b", dim=4, optimizer=SGD(lr=1.0), initializer=Initializer(kind="zeros")),
]


def main(path: str) -> None:
    store = EmbeddingStore.open(path, SLOTS)
    generation = int(store.extra.get("generation", b"0"))
    ids = np.arange(ROWS, dtype=np.int64)
    while True:
        generation += 1
        for slot in SLOTS:
            hit = store.lookup_for_training(slot.name, ids, event_time=float(generation))
            store.apply_gradients(hit, -np.ones_like(hit.values))
        print(f"begin {generation}", flush=True)
        store.checkpoint({"generation": str(generation).encode()})
        print(f"done {generation}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
