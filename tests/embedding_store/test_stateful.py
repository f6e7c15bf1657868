"""Random sequences of store operations against a plain-dict reference model."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from headrace.embedding_store import FTRL, EmbeddingStore, SlotConfig
from headrace.embedding_store._hashing import initial_rows
from headrace.embedding_store.optimizers import initial_state, update
from headrace.embedding_store.store import MemoryBudgetError

SEED = 9
SLOTS = {
    "user": SlotConfig(
        name="user", dim=3, occurrence_threshold=3, expire_after=20.0, repeats="sum"
    ),
    # The same settings as "user": the two slots share one table.
    "friend": SlotConfig(
        name="friend", dim=3, occurrence_threshold=3, expire_after=20.0, repeats="sum"
    ),
    "item": SlotConfig(
        name="item",
        dim=2,
        optimizer=FTRL(l1=0.001),
        occurrence_threshold=1,
        expire_after=35.0,
        repeats="per_occurrence",
    ),
}
# A few small ids and a few at the edges of int64.
UNIVERSE = [*range(12), -1, 2**63 - 1, -(2**63), 2**40 + 3]


class Reference:
    """The store's semantics, one id at a time, with plain dicts."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], list] = {}  # -> [weights, state, last_seen]
        self.counts: dict[tuple[str, int], int] = {}

    def copy(self) -> "Reference":
        other = Reference()
        other.rows = {k: [w.copy(), s.copy(), t] for k, (w, s, t) in self.rows.items()}
        other.counts = dict(self.counts)
        return other

    def train_lookup(self, slot: str, ids: list[int], t: float) -> list[bool]:
        cfg = SLOTS[slot]
        seen: dict[int, int] = {}
        for fid in ids:
            seen[fid] = seen.get(fid, 0) + 1
        for fid, n in seen.items():
            key = (slot, fid)
            if key in self.rows:
                continue
            count = self.counts.get(key, 0) + n
            if count >= cfg.occurrence_threshold:
                self.counts.pop(key, None)
                one = np.array([fid], dtype=np.int64)
                init = cfg.initializer
                w = initial_rows(one, cfg.dim, SEED, init.kind, init.scale)[0]
                self.rows[key] = [w, initial_state(cfg.optimizer, 1, cfg.dim)[0], t]
            else:
                self.counts[key] = count
        for fid in seen:
            if (slot, fid) in self.rows:
                self.rows[(slot, fid)][2] = max(self.rows[(slot, fid)][2], t)
        return [(slot, fid) in self.rows for fid in ids]

    def apply(self, slot: str, ids: list[int], admitted: list[bool], grads: np.ndarray) -> None:
        summed: dict[int, np.ndarray] = {}
        squares: dict[int, np.ndarray] = {}
        for fid, ok, g in zip(ids, admitted, grads, strict=True):
            if ok:
                summed[fid] = summed[fid] + g if fid in summed else g.copy()
                squares[fid] = squares[fid] + g * g if fid in squares else g * g
        cfg = SLOTS[slot]
        for fid, g in summed.items():
            row = self.rows[(slot, fid)]
            sq = squares[fid][None] if cfg.repeats == "per_occurrence" else None
            w, s = update(cfg.optimizer, row[0][None], row[1][None], g[None], sq)
            row[0], row[1] = w[0], s[0]

    def expire(self, now: float) -> None:
        for key in [k for k, r in self.rows.items() if now - r[2] >= SLOTS[k[0]].expire_after]:
            del self.rows[key]

    def vectors(self, slot: str) -> np.ndarray:
        dim = SLOTS[slot].dim
        zeros = np.zeros(dim, dtype=np.float32)
        return np.stack([self.rows.get((slot, f), [zeros])[0] for f in UNIVERSE])


class StoreMachine(RuleBasedStateMachine):
    #: The store's memory budget (None: every row in memory).
    budget: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.store = EmbeddingStore.open(
            self.dir, SLOTS.values(), seed=SEED, memory_budget=self.budget
        )
        self.model = Reference()
        self.committed = Reference()
        self.now = 0.0
        # The last training lookup: ([(slot, ids, admitted)], lookup).
        self.last = None

    @rule(
        slots=st.lists(st.sampled_from(sorted(SLOTS)), min_size=1, max_size=3, unique=True),
        ids=st.lists(
            st.lists(st.sampled_from(UNIVERSE), min_size=1, max_size=12), min_size=3, max_size=3
        ),
        dt=st.integers(min_value=0, max_value=15),
    )
    def train_lookup(self, slots, ids, dt):
        self.now += dt
        # Slots of one lookup share a dim: drop those whose dim differs from the first's.
        slots = [s for s in slots if SLOTS[s].dim == SLOTS[slots[0]].dim]
        asked = {slot: np.array(i, dtype=np.int64) for slot, i in zip(slots, ids, strict=False)}
        try:
            hit = self._lookup(slots, asked)
        except MemoryBudgetError:
            # Changed rows fill the budget: the failed lookup changed
            # nothing; a checkpoint lets them leave memory, as the trainer's does.
            assert self.budget is not None
            self.every_lookup_matches()
            self.checkpoint()
            try:
                hit = self._lookup(slots, asked)
            except MemoryBudgetError:
                # Even with every row clean: the lookup alone outgrows the budget.
                distinct = sum(len(set(fids.tolist())) for fids in asked.values())
                room = self.budget - self.store._overhead_bytes()
                assert distinct * max(t.row_bytes for t in self.store._tables) > room
                self.every_lookup_matches()
                self.last = None
                return
        segments = []
        for k, (slot, fids) in enumerate(asked.items()):
            part = slice(hit.bounds[k], hit.bounds[k + 1])
            admitted = self.model.train_lookup(slot, fids.tolist(), self.now)
            assert (hit.rows[part] >= 0).tolist() == admitted
            expected = self.model.vectors(slot)[[UNIVERSE.index(f) for f in fids]]
            np.testing.assert_allclose(hit.values[part], expected, rtol=0, atol=1e-6)
            segments.append((slot, fids.tolist(), admitted))
        self.last = (segments, hit)

    def _lookup(self, slots, asked):
        if len(asked) == 1:
            return self.store.lookup_for_training(slots[0], asked[slots[0]], self.now)
        return self.store.lookup_slots(asked, self.now)

    @rule(
        slots=st.lists(st.sampled_from(sorted(SLOTS)), min_size=1, max_size=3, unique=True),
        ids=st.lists(
            st.lists(st.sampled_from(UNIVERSE), min_size=1, max_size=12), min_size=3, max_size=3
        ),
    )
    def prefetch(self, slots, ids):
        # A read-ahead changes nothing the model sees: later lookups match it still.
        self.store.prefetch(
            {slot: np.array(i, dtype=np.int64) for slot, i in zip(slots, ids, strict=False)}
        )

    @precondition(lambda self: self.last is not None)
    @rule(data=st.data())
    def apply_gradients(self, data):
        segments, hit = self.last
        grads = data.draw(
            st.lists(
                st.floats(min_value=-2, max_value=2, allow_nan=False, width=32),
                min_size=hit.values.size,
                max_size=hit.values.size,
            )
        )
        grads = np.array(grads, dtype=np.float32).reshape(hit.values.shape)
        self.store.apply_gradients(hit, grads)
        for k, (slot, ids, admitted) in enumerate(segments):
            self.model.apply(slot, ids, admitted, grads[hit.bounds[k] : hit.bounds[k + 1]])
        self.last = None

    @rule(dt=st.integers(min_value=0, max_value=40))
    def expire(self, dt):
        self.now += dt
        self.store.expire(self.now)
        self.model.expire(self.now)
        self.last = None

    @rule()
    def checkpoint(self):
        self.store.checkpoint({"now": repr(self.now).encode()})
        self.committed = self.model.copy()

    @rule()
    def reopen(self):
        self.store.close()
        self.store = EmbeddingStore.open(self.dir, SLOTS.values(), memory_budget=self.budget)
        self.model = self.committed.copy()
        if self.store.extra:
            self.now = float(self.store.extra["now"])
        self.last = None

    @invariant()
    def every_lookup_matches(self):
        ids = np.array(UNIVERSE, dtype=np.int64)
        for slot in SLOTS:
            np.testing.assert_allclose(
                self.store.lookup(slot, ids), self.model.vectors(slot), rtol=0, atol=1e-6
            )
            assert self.store.stats().rows[slot] == sum(1 for k in self.model.rows if k[0] == slot)

    @invariant()
    def memory_stays_within_the_budget(self):
        if self.budget is not None:
            assert self.store._resident_bytes() <= self.budget

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class TieredStoreMachine(StoreMachine):
    """The same, with room in memory for 15 rows (of 101 bytes) of the 48 there can be.

    Rows leave memory on most lookups and come back from RocksDB; changed
    rows fill the budget within a lookup or two, and a checkpoint frees
    them; the largest lookups (up to 24 distinct ids) do not fit at all.
    """

    budget = 1515


StoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestStoreMachine = StoreMachine.TestCase
TieredStoreMachine.TestCase.settings = StoreMachine.TestCase.settings
TestTieredStoreMachine = TieredStoreMachine.TestCase
