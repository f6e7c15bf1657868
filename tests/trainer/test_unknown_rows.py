"""Each slot's unknown row (``model.unknown_rows``): trained on copies of events that bring
a new row, by nothing else; it stands in for ids without a row and never expires."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headrace.embedding_store import EmbeddingStore, SlotConfig
from headrace.model import ModelConfig, lookup_inputs
from headrace.schema import unknown_fid
from headrace.stream import Batch, CtrGenerator, FileSource, Record, SyntheticConfig
from headrace.trainer import Trainer, TrainerConfig
from headrace.trainer.config import slot_defaults
from headrace.trainer.unknown_rows import UnknownRows, YoungIds

SLOTS = ("user_id", "item_id", "segment", "category", "tags", "device", "position", "hour")


def _config(unknown_rows: bool, **overrides) -> TrainerConfig:
    return TrainerConfig(
        model=ModelConfig(hidden=(16,), unknown_rows=unknown_rows),
        checkpoint_every_s=None,
        **overrides,
    )


def _events(n: int, seed: int = 3) -> list[dict]:
    return CtrGenerator(SyntheticConfig(seed=seed)).generate(0, n).events


def _source(path: Path, events: list[dict]) -> FileSource:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return FileSource(path)


def _batch(trainer: Trainer, events: list[dict]) -> Batch:
    records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(events)]
    return trainer.stream.parser.parse(records, {}).batch


def _rows(trainer: Trainer) -> dict[str, dict[int, np.ndarray]]:
    rows = {}
    for slot in SLOTS:
        fids, vectors = trainer.store.export(slot)
        rows[slot] = dict(zip(fids.tolist(), vectors, strict=True))
    return rows


def test_the_copies_train_the_unknown_rows_and_nothing_else(tmp_path):
    events = _events(800)
    trained = {}
    for flag in (False, True):
        source = _source(tmp_path / "events.jsonl", events)
        with Trainer.open(
            _config(flag), tmp_path / str(flag), source, deterministic=True
        ) as trainer:
            summary = trainer.run()
            trained[flag] = (summary, trainer.model.state_dict(), _rows(trainer))
    (plain, plain_dense, plain_rows), (summary, dense, rows) = trained[False], trained[True]
    # The progressive predictions and the dense weights are the same bits: the
    # copies' dense gradients go nowhere.
    assert summary.auc == plain.auc and summary.logloss == plain.logloss
    for name, weights in plain_dense.items():
        assert dense[name].numpy().tobytes() == weights.numpy().tobytes(), name
    for slot in SLOTS:
        unknown = unknown_fid(slot)
        # Every regular row is as without the option: new rows keep their initial values.
        assert rows[slot].keys() - {unknown} == plain_rows[slot].keys()
        for fid, vector in plain_rows[slot].items():
            assert rows[slot][fid].tobytes() == vector.tobytes(), slot
        # ...and each slot has its unknown row, trained away from its initial value.
        with EmbeddingStore.open(tmp_path / slot, [SlotConfig(name=slot, dim=9)]) as fresh:
            initial = fresh.lookup_for_training(slot, np.array([unknown]), 0.0).values[0]
        assert unknown in rows[slot], slot
        assert not np.allclose(rows[slot][unknown], initial), slot


def test_only_the_slots_with_a_new_id_train_their_unknown_row(tmp_path):
    events = _events(64)
    with Trainer.open(_config(True), tmp_path, _source(tmp_path / "none.jsonl", [])) as trainer:
        batch = _batch(trainer, events)
        trainer.step(batch)

        def unknown_rows() -> dict[str, np.ndarray]:
            return {s: trainer.store.lookup(s, np.array([unknown_fid(s)]))[0] for s in SLOTS}

        before = unknown_rows()
        assert all(v.any() for v in before.values())  # created by the first step
        trainer.step(batch)  # every id known now: no copy, no change
        assert all(np.array_equal(before[s], v) for s, v in unknown_rows().items())
        # One event with a new item: the item's unknown row alone learns.
        new = dict(events[0], sparse=dict(events[0]["sparse"], item_id="never-seen"))
        trainer.step(_batch(trainer, [new]))
        after = unknown_rows()
        assert not np.array_equal(after["item_id"], before["item_id"])
        assert all(np.array_equal(after[s], before[s]) for s in SLOTS if s != "item_id")


def test_stand_ins_fill_held_back_ids_and_route_the_gradients(tmp_path):
    slots = [SlotConfig(name="user", dim=3, occurrence_threshold=2), SlotConfig(name="item", dim=3)]
    with EmbeddingStore.open(tmp_path, slots) as store:
        unknown = UnknownRows({"user": "user", "item": "item"})
        unknown.keep(store, 0.0)
        unknown.keep(store, 0.0)  # the user slot's filter admits at the second sighting
        store.lookup_for_training("item", np.array([7]), 0.0)
        # Two events: users 1 and 2 are held back (first sightings), item 8 is
        # new, item 7 known.
        fids = {"user": np.array([1, 2]), "item": np.array([7, 8])}
        offsets = {"user": np.array([0, 1, 2]), "item": np.array([0, 1, 2])}
        lookup = store.lookup_slots(fids, 1.0)
        assert lookup.rows.tolist()[:2] == [-1, -1] and lookup.created.tolist() == [
            False, False, False, True,
        ]  # fmt: skip
        stand_ins = unknown.stand_ins(store, lookup, fids, offsets, 1.0)
        assert stand_ins.positions.tolist() == [0, 1, 3]
        assert stand_ins.events.tolist() == [0, 1, 1]
        user, item = (store.lookup(s, np.array([unknown_fid(s)]))[0] for s in ("user", "item"))
        filled = stand_ins.fill_missing(lookup.values)
        np.testing.assert_array_equal(filled[:2], [user, user])
        np.testing.assert_array_equal(filled[2:], lookup.values[2:])  # new rows keep theirs
        copy, weights = stand_ins.copy_inputs(filled, 2, np.array([2.0, 3.0], np.float32))
        np.testing.assert_array_equal(copy[3], item)
        np.testing.assert_array_equal(copy[:3], filled[:3])
        assert weights.tolist() == [0.0, 3.0]  # only the event with a new row, at its weight
        main = np.arange(12, dtype=np.float32).reshape(4, 3)
        grads = stand_ins.gradients(main, -main)
        np.testing.assert_array_equal(grads, [main[0], main[1], -main[3]])


def test_unknown_rows_never_expire(tmp_path):
    slots = tuple(
        s.model_copy(update={"expire_after": 400.0}) if s.name == "user_id" else s
        for s in (slot_defaults(name) for name in SLOTS)
    )
    events = _events(300)
    # The same events again 1000 s later: no id is new then, so nothing but
    # the expiry sweep's stamp keeps the unknown user row.
    later = [dict(e, ts=e["ts"] + 1000.0) for e in events[:32]]
    config = _config(True, slots=slots, expire_every=60.0, batch_size=32)
    with Trainer.open(config, tmp_path, _source(tmp_path / "e.jsonl", events + later)) as trainer:
        trainer.run()
        fids, _ = trainer.store.export("user_id")
        assert trainer.store.stats().expired["user_id"] > 0  # the sweep ran
    assert unknown_fid("user_id") in fids.tolist()


@pytest.mark.parametrize("flag", [True, False])
def test_serving_lookup_fills_with_the_unknown_row_only_when_asked(tmp_path, flag):
    with EmbeddingStore.open(tmp_path, [SlotConfig(name="user", dim=2)]) as store:
        UnknownRows({"user": "user"}).keep(store, 0.0)
        store.lookup_for_training("user", np.array([5]), 0.0)
        unknown = store.lookup("user", np.array([unknown_fid("user")]))[0]
        known = store.lookup("user", np.array([5]))[0]

        events = Batch(
            fids={"user": np.array([5, 6])},
            offsets={"user": np.array([0, 1, 2])},
            dense=np.zeros((2, 0), np.float32),
            dense_names=(),
            labels=np.zeros(2, np.float32),
            ts=np.zeros(2),
            request_ids=(None, None),
            positions={},
        )
        pooled, _ = lookup_inputs(events, ["user"], ["user"], store.lookup, "sum", 2, (), flag)
        np.testing.assert_array_equal(pooled[0, 0].numpy(), known)
        np.testing.assert_array_equal(pooled[1, 0].numpy(), unknown if flag else [0.0, 0.0])


def test_young_ids_age_out_and_survive_a_checkpoint():
    young = YoungIds(age_s=10.0)
    young.add("item", np.array([1, 2, 2]), 100.0)
    young.add("user", np.array([7]), 105.0)
    young.add("item", np.array([3]), 108.0)
    assert young.find("item", np.array([1, 2, 3, 4])).tolist() == [True, True, True, False]
    again = YoungIds.from_bytes(young.to_bytes(), 10.0)
    for y in (young, again):
        y.expire(110.0)  # items 1 and 2 are 10 s old
        assert y.find("item", np.array([1, 2, 3])).tolist() == [False, False, True]
        assert y.find("user", np.array([7])).tolist() == [True]
        assert len(y) == 2
    # An id created again (its row expired) stays young from its newer time.
    young.add("user", np.array([7]), 112.0)
    young.expire(115.5)
    assert young.find("user", np.array([7])).tolist() == [True]


def test_events_of_young_ids_train_the_unknown_rows_until_they_age(tmp_path):
    events = _events(64)
    config = _config(True, unknown_rows_young_s=100.0)
    with Trainer.open(config, tmp_path, _source(tmp_path / "none.jsonl", [])) as trainer:
        batch = _batch(trainer, events)
        trainer.step(batch)  # every id gets its row: all young for 100 s
        item = np.array([unknown_fid("item_id")])
        before = trainer.store.lookup("item_id", item)
        trainer.step(batch)  # no new row, but young ones: the item's unknown row learns
        after = trainer.store.lookup("item_id", item)
        assert not np.array_equal(after, before)
        # 200 s later every row is old: no copy, no change.
        old = _batch(trainer, [dict(e, ts=e["ts"] + 200.0) for e in events])
        trainer.step(old)
        assert np.array_equal(trainer.store.lookup("item_id", item), after)
        assert len(trainer._unknown.young) == 0


def test_a_restarted_trainer_keeps_its_young_ids(tmp_path):
    events = _events(200)
    config = _config(True, unknown_rows_young_s=100.0)
    source = _source(tmp_path / "e.jsonl", events)
    with Trainer.open(config, tmp_path / "d", source) as trainer:
        trainer.run()  # checkpoints at the end
        young = trainer._unknown.young
        fids, _ = trainer.store.export("user_id")
    with Trainer.open(config, tmp_path / "d", _source(tmp_path / "e.jsonl", events)) as again:
        restored = again._unknown.young
        assert len(restored) == len(young) > 0
        np.testing.assert_array_equal(restored.find("user_id", fids), young.find("user_id", fids))


def test_young_ids_without_unknown_rows_fail_naming_the_fix():
    with pytest.raises(ValueError, match=r"set model.unknown_rows = true"):
        TrainerConfig(unknown_rows_young_s=60.0)
