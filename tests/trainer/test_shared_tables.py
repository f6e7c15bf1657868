"""Slots sharing one table, sequence slots and DIN: training, restore, publishing, serving."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from headrace.config import ConfigError, load_config
from headrace.embedding_store import EmbeddingStore
from headrace.model import lookup_inputs
from headrace.serving import attach_publisher, build_worker, open_writer
from headrace.stream import (
    CtrGenerator,
    EventParser,
    FileSource,
    ParserConfig,
    Record,
    SyntheticConfig,
)
from headrace.trainer import Trainer, TrainerConfig
from tests.trainer.conftest import assert_bit_identical

# item_id and hist_item_ids are not adjacent: the trainer regroups their fids
# into one store lookup and brings the vectors back into slot order.
DIN_CONFIG = """
batch_size = 64
checkpoint_every_s = 60

[model]
kind = "din"
hidden = [16]
options = {attention_hidden = [8]}

[[slots]]
name = "user_id"
dim = 5

[[slots]]
name = "item_id"
table = "item"

[[slots]]
name = "device"
dim = 5

[[slots]]
name = "hist_item_ids"
table = "item"

[[tables]]
name = "item"
dim = 5
expire_after = 86400.0
"""


def _with_history(events: list[dict], length: int = 5) -> list[dict]:
    """Each event gets the user's last ``length`` items before it, newest first."""
    recent: dict[str, deque] = {}
    for event in events:
        seen = recent.setdefault(event["sparse"]["user_id"], deque(maxlen=length))
        event["sparse"]["hist_item_ids"] = list(reversed(seen))
        seen.append(event["sparse"]["item_id"])
    return events


def _served_inputs(trainer: Trainer, events: list[dict]) -> tuple:
    """A batch of ``events`` and its model inputs read from the trainer's rows, as serving reads."""
    records = [Record("p", i, json.dumps(e).encode()) for i, e in enumerate(events)]
    batch = trainer.stream.parser.parse(records, {}).batch
    spec = trainer.model_spec
    lookup = trainer.store.lookup
    sequences = ("hist_item_ids",)
    return batch, lookup_inputs(batch, spec.slots, spec.tables, lookup, "sum", spec.dim, sequences)


@pytest.fixture
def din_log(tmp_path):
    (tmp_path / "din.toml").write_text(DIN_CONFIG)
    events = _with_history(CtrGenerator(SyntheticConfig(seed=4)).generate(0, 4000).events)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return load_config(TrainerConfig, tmp_path / "din.toml"), path, events


def test_slots_of_a_table_share_rows_and_hash_with_the_table_name():
    config = TrainerConfig.model_validate(
        {
            "slots": [{"name": "item_id", "table": "item"}, {"name": "hist", "table": "item"}],
            "tables": [{"name": "item", "dim": 4}],
            "model": {"dense_features": []},
        }
    )
    assert [s.name for s in config.store_slots] == ["item"]
    assert config.model_spec.tables == ("item", "item")
    parser = EventParser(ParserConfig(fid_names=tuple(config.model_spec.shared_tables.items())))
    event = {"ts": 1.0, "label": 1, "sparse": {"item_id": "5", "hist": ["7", "5"]}}
    batch = parser.parse([Record("p", 0, json.dumps(event).encode())], {}).batch
    assert batch.fids["hist"][1] == batch.fids["item_id"][0]
    assert batch.fids["hist"][0] != batch.fids["item_id"][0]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"slots": [{"name": "a", "table": "t"}]}, r"slots name the tables \['t'\]"),
        ({"slots": [{"name": "a"}], "tables": [{"name": "t"}]}, r"no slot uses the tables \['t'\]"),
        (
            {"slots": [{"name": "a", "table": "t", "dim": 4}], "tables": [{"name": "t"}]},
            r"slot 'a' uses table 't', so it cannot set \['dim'\]",
        ),
        (
            {"slots": [{"name": "t"}, {"name": "a", "table": "t"}], "tables": [{"name": "t"}]},
            r"\['t'\] name both a slot with its own rows and a table",
        ),
    ],
)
def test_bad_tables_fail_naming_what_to_fix(tmp_path, config, message):
    lines = []
    for slot in config.get("slots", []):
        lines.append("[[slots]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in slot.items()))
    for table in config.get("tables", []):
        lines.append("[[tables]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    (tmp_path / "t.toml").write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=message):
        load_config(TrainerConfig, tmp_path / "t.toml")


def test_din_trains_restores_publishes_and_serves_on_a_shared_table(tmp_path, din_log):
    config, path, events = din_log
    url = f"dir://{tmp_path}/params"
    with Trainer.open(config, tmp_path / "data", FileSource(path)) as trainer:
        assert trainer.model.sequence_slots == ("hist_item_ids",)
        publisher = attach_publisher(trainer, open_writer(url), snapshot_interval=3600)
        summary = trainer.run(max_events=3000)
        update = publisher.publish_snapshot(publisher.event_time)
        spec = trainer.model_spec
        # An item's row is the same in both slots: the history's pooled vector
        # is the sum of the rows that item_id trained.
        batch, (pooled, sequences) = _served_inputs(trainer, events[3000:3040])
        hist = spec.index("hist_item_ids")
        offsets = batch.offsets["hist_item_ids"]
        for i in range(len(batch)):
            fids = batch.fids["hist_item_ids"][offsets[i] : offsets[i + 1]]
            rows = trainer.store.lookup("item", fids)
            assert np.allclose(pooled[i, hist].numpy(), rows.sum(axis=0), atol=1e-6)
            assert np.array_equal(
                sequences["hist_item_ids"].values[offsets[i] : offsets[i + 1]], rows
            )
        assert (rows != 0).any()
        with torch.no_grad():
            expected = torch.sigmoid(
                trainer.model(pooled, sequences, torch.from_numpy(batch.dense))
            )
    assert summary.auc > 0.6
    assert set(update.slots) == {"user_id", "device", "item"}
    with EmbeddingStore.open(tmp_path / "data" / "store", read_only=True) as store:
        assert [s.name for s in store.slots] == ["user_id", "device", "item"]
    # The checkpoint restores, and training goes on where it stopped.
    with Trainer.open(config, tmp_path / "data", FileSource(path)) as again:
        assert again.state.trained == 3000
        assert again.run().trained == 4000
    app, sync = build_worker(url)
    sync.step()
    response = TestClient(app).post(
        "/v1/predict",
        json={"events": [{k: v for k, v in e.items() if k != "label"} for e in events[3000:3040]]},
    )
    assert response.json()["version"] == update.version
    np.testing.assert_allclose(response.json()["scores"], expected.numpy(), rtol=0, atol=1e-6)
    sync.stop()


def test_din_is_deterministic(tmp_path, din_log):
    config, path, _ = din_log
    for run in ("a", "b"):
        with Trainer.open(config, tmp_path / run, FileSource(path), deterministic=True) as t:
            t.run(max_events=1500)
    assert_bit_identical(tmp_path / "a", tmp_path / "b")


def test_a_step_regrouping_a_tables_slots_predicts_as_serving_does(tmp_path, din_log):
    config, path, events = din_log
    with Trainer.open(config, tmp_path / "data", FileSource(path)) as trainer:
        trainer.run(max_events=1000)
        batch, _ = _served_inputs(trainer, events[1000:1064])
        trainer.step(batch)  # every id of the batch has a row now
        _, inputs = _served_inputs(trainer, events[1000:1064])
        with torch.no_grad():
            served = torch.sigmoid(trainer.model(*inputs, torch.from_numpy(batch.dense))).numpy()
        step = trainer.step(batch)
    np.testing.assert_allclose(step.probabilities, served, rtol=0, atol=1e-6)
    assert len(set(np.round(served, 4))) > 10
