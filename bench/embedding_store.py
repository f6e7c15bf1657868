"""Embedding store benchmark: prints one JSON object.

On a warm table of 1M rows (26 slots, dim 16, Adagrad, occurrence threshold
2) with batches of 4096 x 26 Zipf-distributed fids (5% of them new ids), in
the same run:

- training lookups and lookup + apply-gradients, in rows/s, against a
  baseline that keeps a Python dict of numpy rows per slot;
- seconds to checkpoint 1M dirty rows to RocksDB and to reopen them;
- bytes in memory per row against the raw bytes (vector + optimizer state);
- the counting filter's false-admission rate, with its default size and
  overloaded 30-fold.

Run: ``python bench/embedding_store.py [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from headrace.embedding_store import Adagrad, EmbeddingStore, FilterConfig, SlotConfig

SLOTS, DIM, BATCH, THRESHOLD = 26, 16, 4096, 2
WARM_ROWS = 1_000_000
NEW_SHARE = 0.05
ZIPF_A = 1.05


def _slots() -> list[SlotConfig]:
    return [
        SlotConfig(name=f"s{i}", dim=DIM, optimizer=Adagrad(), occurrence_threshold=THRESHOLD)
        for i in range(SLOTS)
    ]


class Workload:
    """Per-slot vocabularies and batches of Zipf ids with a share of new ones."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        per_slot = WARM_ROWS // SLOTS
        self.vocab = [self._ids(per_slot) for _ in range(SLOTS)]

    def _ids(self, n: int) -> np.ndarray:
        return self.rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64)

    def batch(self) -> list[np.ndarray]:
        out = []
        n_new = int(BATCH * NEW_SHARE)
        for vocab in self.vocab:
            ranks = (self.rng.zipf(ZIPF_A, size=BATCH) - 1) % len(vocab)
            fids = vocab[ranks]
            # New ids repeat a little, so some reach the threshold in the batch.
            fresh = self._ids(max(1, n_new * 3 // 4))
            fids[self.rng.choice(BATCH, n_new, replace=False)] = self.rng.choice(fresh, n_new)
            out.append(fids)
        return out


class DictBaseline:
    """The obvious implementation: a dict of numpy rows per slot, one fid at a time."""

    def __init__(self, lr: float = 0.05, eps: float = 1e-10) -> None:
        self.rows: list[dict[int, np.ndarray]] = [{} for _ in range(SLOTS)]
        self.acc: list[dict[int, np.ndarray]] = [{} for _ in range(SLOTS)]
        self.counts: list[dict[int, int]] = [{} for _ in range(SLOTS)]
        self.last_seen: list[dict[int, float]] = [{} for _ in range(SLOTS)]
        self.lr, self.eps = lr, eps
        self.rng = np.random.default_rng(1)

    def lookup_for_training(self, slot: int, fids: np.ndarray, t: float) -> np.ndarray:
        rows, counts, seen = self.rows[slot], self.counts[slot], self.last_seen[slot]
        out = np.zeros((len(fids), DIM), dtype=np.float32)
        for i, fid in enumerate(fids.tolist()):
            row = rows.get(fid)
            if row is None:
                count = counts.get(fid, 0) + 1
                if count < THRESHOLD:
                    counts[fid] = count
                    continue
                del counts[fid]
                row = rows[fid] = self.rng.uniform(-0.01, 0.01, DIM).astype(np.float32)
                self.acc[slot][fid] = np.zeros(DIM, dtype=np.float32)
            out[i] = row
            seen[fid] = t
        return out

    def apply_gradients(self, slot: int, fids: np.ndarray, grads: np.ndarray) -> None:
        rows, acc = self.rows[slot], self.acc[slot]
        summed: dict[int, np.ndarray] = {}
        for fid, g in zip(fids.tolist(), grads, strict=True):
            if fid in rows:
                summed[fid] = summed[fid] + g if fid in summed else g.copy()
        for fid, g in summed.items():
            a = acc[fid]
            a += g * g
            rows[fid] -= self.lr * g / (np.sqrt(a) + self.eps)


def _store_pass(store: EmbeddingStore, batches: list[list[np.ndarray]], train: bool) -> None:
    grads = np.full((BATCH, DIM), 0.01, dtype=np.float32)
    for t, batch in enumerate(batches):
        for i, fids in enumerate(batch):
            hit = store.lookup_for_training(f"s{i}", fids, float(t))
            if train:
                store.apply_gradients(hit, grads)


def _baseline_pass(baseline: DictBaseline, batches: list[list[np.ndarray]], train: bool) -> None:
    grads = np.full((BATCH, DIM), 0.01, dtype=np.float32)
    for t, batch in enumerate(batches):
        for i, fids in enumerate(batch):
            baseline.lookup_for_training(i, fids, float(t))
            if train:
                baseline.apply_gradients(i, fids, grads)


def _best_rate(run, workload: Workload, n_batches: int, repeats: int) -> int:
    """Rows/s of the fastest of ``repeats`` passes, each over new batches.

    The machine is shared, so the fastest pass is the one least disturbed.
    """
    best = float("inf")
    for _ in range(repeats):
        batches = [workload.batch() for _ in range(n_batches)]
        start = time.perf_counter()
        run(batches)
        best = min(best, time.perf_counter() - start)
    return round(n_batches * SLOTS * BATCH / best)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def false_admission_rate(filter_config: FilterConfig, occurrences: int, vocab: int) -> dict:
    """Admissions of ids truly seen fewer than the threshold times, and late ones.

    A Zipf stream over ``vocab`` ids goes through training lookups with
    threshold 3; after each batch the ids admitted in it are compared with
    exact counts.
    """
    threshold = 3
    rng = np.random.default_rng(11)
    permutation = rng.permutation(vocab)
    fid_of = permutation.astype(np.int64) * 7919 + 13
    rank_of = np.argsort(permutation)  # fid -> (fid - 13) // 7919 -> rank
    exact = np.zeros(vocab, dtype=np.int64)
    slot = SlotConfig(name="ids", dim=1, occurrence_threshold=threshold)
    admitted = false = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore.open(tmp, [slot], filter=filter_config)
        for _ in range(occurrences // BATCH):
            ranks = (rng.zipf(1.1, size=BATCH) - 1) % vocab
            exact += np.bincount(ranks, minlength=vocab)
            store.lookup_for_training("ids", fid_of[ranks], 0.0)
            new = store.drain_changes()["ids"].fids
            admitted += len(new)
            false += int(np.count_nonzero(exact[rank_of[(new - 13) // 7919]] < threshold))
        rows = store.stats().rows["ids"]
        store.close()
    should = int(np.count_nonzero(exact >= threshold))
    return {
        "rate": false / max(admitted, 1),
        "late_share": (should - (rows - false)) / max(should, 1),
        "distinct_ids": int(np.count_nonzero(exact)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches (a smoke run)")
    args = parser.parse_args()
    n_batches, n_baseline, repeats = (4, 1, 1) if args.quick else (20, 2, 3)

    workload = Workload()
    gc.collect()
    rss_before = _rss_bytes()
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "store"
    store = EmbeddingStore.open(path, _slots())
    for i, vocab in enumerate(workload.vocab):
        store.lookup_for_training(f"s{i}", np.repeat(vocab, THRESHOLD), 0.0)
    gc.collect()
    rss_per_row = (_rss_bytes() - rss_before) / WARM_ROWS
    stats = store.stats()
    rows = sum(stats.rows.values())
    raw_per_row = DIM * 4 * 2  # float32 vector + one Adagrad accumulator per element

    start = time.perf_counter()
    store.checkpoint({"bench": b"1"})
    checkpoint_s = time.perf_counter() - start
    store.close()
    start = time.perf_counter()
    store = EmbeddingStore.open(path, _slots())
    reopen_s = time.perf_counter() - start
    assert sum(store.stats().rows.values()) == rows

    baseline = DictBaseline()
    for i, vocab in enumerate(workload.vocab):
        baseline.lookup_for_training(i, np.repeat(vocab, THRESHOLD), 0.0)

    # Untimed warm-up: the first batches after a bulk load grow the tables'
    # arrays once; the timed passes measure the steady state.
    _store_pass(store, [workload.batch() for _ in range(3)], train=True)

    def rate(run, n: int) -> int:
        return _best_rate(run, workload, n, repeats)

    lookup = rate(lambda b: _store_pass(store, b, train=False), n_batches)
    lookup_update = rate(lambda b: _store_pass(store, b, train=True), n_batches)
    baseline_lookup = rate(lambda b: _baseline_pass(baseline, b, train=False), n_baseline)
    baseline_lookup_update = rate(lambda b: _baseline_pass(baseline, b, train=True), n_baseline)
    store.close()
    tmp.cleanup()

    default_filter = false_admission_rate(FilterConfig(), 2_000_000, 1_000_000)
    small_filter = false_admission_rate(FilterConfig(capacity=1 << 14), 2_000_000, 1_000_000)

    figures = {
        "rows": rows,
        "zipf_a": ZIPF_A,
        "lookup_rows_per_s": lookup,
        "baseline_lookup_rows_per_s": baseline_lookup,
        "lookup_update_rows_per_s": lookup_update,
        "baseline_lookup_update_rows_per_s": baseline_lookup_update,
        "checkpoint_1m_s": round(checkpoint_s, 2),
        "reopen_1m_s": round(reopen_s, 2),
        "memory_bytes_per_row": round((stats.memory_bytes - stats.filter_bytes) / rows, 1),
        "rss_bytes_per_row": round(rss_per_row, 1),
        "raw_bytes_per_row": raw_per_row,
        "filter_bytes": stats.filter_bytes,
        "filter_false_admission_rate": round(default_filter["rate"], 6),
        "filter_late_admission_share": round(default_filter["late_share"], 6),
        "filter_distinct_ids": default_filter["distinct_ids"],
        "overloaded_filter_capacity": 1 << 14,
        "overloaded_filter_false_admission_rate": round(small_filter["rate"], 6),
        "overloaded_filter_late_admission_share": round(small_filter["late_share"], 6),
    }
    figures["lookup_speedup"] = round(
        figures["lookup_rows_per_s"] / figures["baseline_lookup_rows_per_s"], 1
    )
    figures["lookup_update_speedup"] = round(
        figures["lookup_update_rows_per_s"] / figures["baseline_lookup_update_rows_per_s"], 1
    )
    json.dump(figures, sys.stdout)
    print()


if __name__ == "__main__":
    main()
