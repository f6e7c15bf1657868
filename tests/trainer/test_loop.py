"""The training loop in process: restore, stop, expiry, metrics, serving reuse."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from headrace.embedding_store import EmbeddingStore
from headrace.model import lookup_inputs
from headrace.stream import FileSource, SyntheticConfig, SyntheticSource
from headrace.trainer import (
    Trainer,
    TrainerError,
    TrainingState,
    load_trainer_config,
    saved_model,
)
from tests.trainer.conftest import write_log


def _synthetic(limit: int) -> SyntheticSource:
    return SyntheticSource(SyntheticConfig(seed=3), limit=limit)


def test_restart_restores_the_checkpoint_and_resumes(tmp_path, small_config):
    config = load_trainer_config(small_config)
    with Trainer.open(config, tmp_path, _synthetic(2000)) as first:
        assert first.run().trained == 2000
        weights = {k: v.clone() for k, v in first.model.state_dict().items()}
        auc = first.metrics.auc()
    with Trainer.open(config, tmp_path, _synthetic(3000)) as second:
        assert second.state.trained == 2000
        assert second.stream.positions() == {"synthetic:3": 2000}
        assert second.metrics.auc() == auc
        for name, tensor in second.model.state_dict().items():
            assert torch.equal(tensor, weights[name]), name
        summary = second.run()
    assert (summary.events, summary.trained) == (1000, 3000)


def test_a_data_dir_refuses_another_model(tmp_path, small_config, monkeypatch):
    with Trainer.open(load_trainer_config(small_config), tmp_path, _synthetic(100)) as trainer:
        trainer.run()
    monkeypatch.setenv("HEADRACE_TRAINER__MODEL__KIND", "fm")
    with pytest.raises(TrainerError, match=r"the config asks for.*new --data-dir"):
        Trainer.open(load_trainer_config(small_config), tmp_path, _synthetic(100))


def test_stop_finishes_the_batch_and_checkpoints(tmp_path, small_config):
    config = load_trainer_config(small_config)
    with Trainer.open(config, tmp_path, _synthetic(None)) as trainer:
        seen = []

        def stop_after_five(t, result):
            seen.append(len(result.batch))
            if len(seen) == 5:
                stop.set()

        import threading

        stop = threading.Event()
        trainer.after_step.append(stop_after_five)
        summary = trainer.run(stop=stop)
    assert seen == [config.batch_size] * 5
    assert summary.trained == 5 * config.batch_size
    with EmbeddingStore.open(tmp_path / "store", read_only=True) as store:
        _, _ = saved_model(store.extra)
        assert b'"trained": 160' in store.extra["trainer.state"]


def test_predictions_precede_training_and_serving_reproduces_them(tmp_path, small_config):
    config = load_trainer_config(small_config)
    names = [s.name for s in config.slots]
    with Trainer.open(config, tmp_path, _synthetic(None)) as trainer:
        batch = trainer.stream.next_batch(64)
        trainer.step(batch)  # tags need two sightings (occurrence_threshold = 2)
        first = trainer.step(batch)
        # Every id of the batch has a row now, so a plain read sees what training sees.
        pooled = lookup_inputs(batch, names, names, trainer.store.lookup, "sum", config.dim)[0]
        with torch.no_grad():
            before = torch.sigmoid(trainer.model(pooled, {}, torch.from_numpy(batch.dense))).numpy()
        second = trainer.step(batch)
        assert np.allclose(second.probabilities, before, atol=1e-6)
        assert not np.allclose(second.probabilities, first.probabilities)
        trainer.checkpoint()
        with torch.no_grad():
            pooled = lookup_inputs(batch, names, names, trainer.store.lookup, "sum", config.dim)[0]
            after = trainer.model(pooled, {}, torch.from_numpy(batch.dense))
    with EmbeddingStore.open(tmp_path / "store", read_only=True) as store:
        served_config, model = saved_model(store.extra)
        assert served_config == config
        with torch.no_grad():
            pooled = lookup_inputs(batch, names, names, store.lookup, "sum", config.dim)[0]
            assert torch.equal(model(pooled, {}, torch.from_numpy(batch.dense)), after)


def test_expiry_runs_on_event_time(tmp_path, small_config, monkeypatch):
    monkeypatch.setenv("HEADRACE_TRAINER__EXPIRE_EVERY", "5")
    config = load_trainer_config(small_config)
    # 50 events per second: 3000 events span 60 s; user_id rows expire after 400 s
    # in the small config, so shorten that through a slot override here.
    slots = tuple(
        s.model_copy(update={"expire_after": 10.0}) if s.name == "user_id" else s
        for s in config.slots
    )
    config = config.model_copy(update={"slots": slots})
    registry = CollectorRegistry()
    with Trainer.open(config, tmp_path, _synthetic(3000), registry=registry) as trainer:
        trainer.run()
        stats = trainer.store.stats()
    expired = registry.get_sample_value("headrace_embedding_expired_total", {"slot": "user_id"})
    assert expired == stats.expired["user_id"] > 0
    assert stats.rows["user_id"] == stats.admitted["user_id"] - stats.expired["user_id"]
    assert stats.expired["item_id"] == 0  # no expiry configured


ISSUE_METRICS = [
    "headrace_ingest_records_total",
    "headrace_ingest_dead_letters_total",
    "headrace_kafka_consumer_lag_records",
    "headrace_train_examples_total",
    "headrace_train_step_duration_seconds",
    "headrace_eval_auc",
    "headrace_eval_logloss",
    "headrace_eval_label_rate",
    "headrace_drift_detections_total",
    "headrace_embedding_rows",
    "headrace_embedding_memory_bytes",
    "headrace_embedding_admitted_total",
    "headrace_embedding_filtered_total",
    "headrace_embedding_expired_total",
    "headrace_checkpoint_duration_seconds",
    "headrace_last_event_timestamp_seconds",
]


def test_prometheus_metrics_of_a_run(tmp_path, small_config):
    log = tmp_path / "events.jsonl"
    good = write_log(log, 1500, bad_every=100)
    registry = CollectorRegistry()
    config = load_trainer_config(small_config)
    with Trainer.open(config, tmp_path / "d", FileSource(log), registry=registry) as trainer:
        trainer.run()
    value = registry.get_sample_value
    names = {m.name for m in registry.collect()}
    for name in ISSUE_METRICS:
        assert name.removesuffix("_total") in names, name
    assert value("headrace_train_examples_total") == good
    assert value("headrace_ingest_records_total") == good + 15
    assert value("headrace_ingest_dead_letters_total", {"reason": "bad_ts"}) == 15
    assert 0.5 < value("headrace_eval_auc", {"window": "run"}) < 1
    assert value("headrace_eval_logloss", {"window": "rolling"}) > 0
    assert value("headrace_train_step_duration_seconds_count") == -(
        -(good + 15) // config.batch_size
    )
    assert value("headrace_checkpoint_duration_seconds_count") >= 1
    assert value("headrace_embedding_rows", {"slot": "device"}) == 3
    assert value("headrace_embedding_filtered_total", {"slot": "tags"}) > 0
    assert value("headrace_last_event_timestamp_seconds") == pytest.approx(
        SyntheticConfig().start_ts + (1500 - 1) / 50
    )


def test_a_checkpoint_without_tables_or_model_options_resumes(tmp_path, small_config):
    """Data dirs of the version before shared tables and model options still open."""
    config = load_trainer_config(small_config)
    with Trainer.open(config, tmp_path, _synthetic(500)) as trainer:
        trainer.run()
    with EmbeddingStore.open(tmp_path / "store") as store:
        saved = json.loads(store.extra["trainer.config"])
        del saved["tables"], saved["model"]["options"]
        for slot in saved["slots"]:
            del slot["table"]
        store.checkpoint(store.extra | {"trainer.config": json.dumps(saved).encode()})
    with Trainer.open(config, tmp_path, _synthetic(800)) as again:
        assert again.state.trained == 500
        assert again.run().trained == 800


def test_a_memory_budget_trains_the_same_and_checkpoints_early(tmp_path, small_config, caplog):
    """The table on disk under a budget of ~500 rows gives the very same model."""
    caplog.set_level(logging.INFO, logger="headrace.trainer.loop")
    config = load_trainer_config(small_config)
    runs = {}
    for budget in (None, 64 << 10):
        tiered = config.model_copy(
            update={"store": config.store.model_copy(update={"memory_budget": budget})}
        )
        registry = CollectorRegistry()
        with Trainer.open(
            tiered, tmp_path / str(budget), _synthetic(3000), registry=registry, deterministic=True
        ) as trainer:
            trainer.run()
            rows = {
                slot.name: dict(
                    zip(*[a.tolist() for a in trainer.store.export(slot.name)], strict=True)
                )
                for slot in config.slots
            }
            runs[budget] = (trainer.metrics.auc(), rows, trainer.store.stats())
        forced = registry.get_sample_value("headrace_checkpoint_forced_total")
        evictions = registry.get_sample_value("headrace_embedding_evictions_total")
        read_ahead = registry.get_sample_value("headrace_embedding_read_ahead_total")
        if budget is None:
            assert forced == evictions == read_ahead == 0
        else:
            # The next batch's rows on disk were read while each batch trained.
            assert forced > 0 and evictions > 0 and read_ahead > 0
    assert runs[None][0] == runs[64 << 10][0]
    assert runs[None][1] == runs[64 << 10][1]
    tiered_stats = runs[64 << 10][2]
    assert tiered_stats.memory_rows * 100 < 64 << 10 < sum(tiered_stats.rows.values()) * 100
    assert "checkpoint taken early" in caplog.text


def test_a_crashed_first_run_leaves_no_dead_letter_behind(tmp_path, small_config):
    # A run killed before its first checkpoint wrote letters; all its records are read again.
    log = tmp_path / "events.jsonl"
    write_log(log, 500, bad_every=100)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dead_letters.jsonl").write_text('{"offset": 0}\n{"offset": 101}\n')
    with Trainer.open(load_trainer_config(small_config), tmp_path / "data", FileSource(log)) as t:
        assert t.run().dead_letters == 5
    letters = (tmp_path / "data" / "dead_letters.jsonl").read_text().splitlines()
    assert [json.loads(line)["offset"] for line in letters] == [0, 101, 202, 303, 404]
    assert "raw_b64" in json.loads(letters[0])


def test_a_checkpoint_that_saved_the_dead_letter_file_size_resumes():
    old = b'{"trained": 3, "dead_letter_bytes": 120, "positions": {"log": 9}}'
    assert TrainingState.from_bytes(old).dead_letter_mark == {"bytes": 120}
    assert TrainingState.from_bytes(b'{"dead_letter_bytes": null}').dead_letter_mark == {}
