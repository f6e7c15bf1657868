"""Child process of test_crash.py: checkpoints generation after generation.

Every row of generation ``g`` holds the value ``g`` in every element (zeros
initializer, SGD with lr 1, a gradient of -1 per generation), and the
checkpoint's ``extra`` names each slot's generation and the checkpoint's
number, so a reader can tell a whole checkpoint from a mix of two.

With a memory budget (second argument, bytes) room for about 1.3 slots'
rows: each slot is checkpointed on its own, and each lookup evicts the
other slot's rows that the checkpoint before it left clean.
"""

import sys

import numpy as np

from headrace.embedding_store import SGD, EmbeddingStore, Initializer, SlotConfig

ROWS = 150_000
SLOTS = [
    SlotConfig(name="a", dim=8, optimizer=SGD(lr=1.0), initializer=Initializer(kind="zeros")),
    SlotConfig(name="b", dim=4, optimizer=SGD(lr=1.0), initializer=Initializer(kind="zeros")),
]
# Room for about 1.3 slots' rows besides the working memory the store keeps
# for lookups (a third of the budget).
BUDGET = 36_000_000


def main(path: str, budget: int | None) -> None:
    store = EmbeddingStore.open(path, SLOTS, memory_budget=budget)
    done = {name: int(store.extra.get(name, b"0")) for name in ("a", "b", "checkpoint")}
    ids = np.arange(ROWS, dtype=np.int64)
    while True:
        for slot in SLOTS:
            # Each slot goes on from its own generation: under a budget a
            # kill can land between the two slots' checkpoints.
            generation = done[slot.name] + 1
            hit = store.lookup_for_training(slot.name, ids, event_time=float(generation))
            store.apply_gradients(hit, -np.ones_like(hit.values))
            done[slot.name] = generation
            if budget is not None or slot is SLOTS[-1]:
                done["checkpoint"] += 1
                print(f"begin {done['checkpoint']}", flush=True)
                store.checkpoint({name: str(n).encode() for name, n in done.items()})
                print(f"done {done['checkpoint']}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
