"""Events from the joiner: ids trained once across restarts, loss weights, sampled negatives."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import torch

from headrace.serving import Scorer
from headrace.serving.scorer import model_meta
from headrace.stream import FileSource
from headrace.trainer import Trainer, load_trainer_config
from headrace.trainer.correction import calibrated_probabilities, metric_weights
from tests.trainer.conftest import write_log


def _rewrite(path, change) -> list[dict]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    events = [change(i, e) for i, e in enumerate(events)]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return events


def test_an_event_id_is_trained_once_even_across_a_restart(tmp_path, small_config):
    config = load_trainer_config(small_config)
    log = tmp_path / "events.jsonl"
    write_log(log, 900)
    # Ids 0-399, then 0-199 again (in the first run), then 300-599 (the second run).
    ids = [*range(400), *range(200), *range(300, 600)]
    _rewrite(log, lambda i, e: e | {"event_id": f"e{ids[i]}"})
    with Trainer.open(config, tmp_path / "data", FileSource(log)) as trainer:
        assert trainer.run(max_events=600).trained == 400
        assert trainer.state.duplicates == 200
    with Trainer.open(config, tmp_path / "data", FileSource(log)) as trainer:
        assert len(trainer.recent_ids) == 400
        assert trainer.run().trained == 400 + 200
        assert trainer.state.duplicates == 200 + 100


def test_events_of_weight_zero_change_no_weight(tmp_path, small_config):
    config = load_trainer_config(small_config)
    log = tmp_path / "events.jsonl"
    write_log(log, 300)
    _rewrite(log, lambda i, e: e | {"weight": 0})
    with Trainer.open(config, tmp_path / "data", FileSource(log)) as trainer:
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        assert trainer.run().trained == 300
        for name, tensor in trainer.model.state_dict().items():
            assert torch.equal(tensor, before[name]), name
        assert all(
            np.abs(trainer.store.export(slot.name)[1]).max() <= 0.01 for slot in config.slots
        )


def test_sampled_negatives_are_corrected_in_metrics_and_serving(tmp_path, small_config):
    config = load_trainer_config(small_config)
    log = tmp_path / "events.jsonl"
    write_log(log, 200)
    _rewrite(log, lambda i, e: e | {"sample_rate": 0.1})
    with Trainer.open(config, tmp_path / "data", FileSource(log)) as trainer:
        trainer.run()
        assert trainer.state.sample_rate == np.float32(0.1)
        batch = trainer.stream.parser.parse([r for r in FileSource(log).poll(10)], {}).batch
        weights = metric_weights(batch)
        np.testing.assert_allclose(weights, np.where(batch.labels == 1, 1.0, 10.0), rtol=1e-6)
        probabilities = calibrated_probabilities(np.zeros(len(batch)), batch.sample_rates)
        np.testing.assert_allclose(probabilities, 1 / 11, rtol=1e-6)
        # Serving adds ln(r) to the same logits the trainer's model gives.
        dense = trainer.model.state_dict()
    buffer = io.BytesIO()
    torch.save(dense, buffer)
    plain = Scorer(config.model_spec, buffer.getvalue())
    sampled = Scorer.from_update(model_meta(config.model_spec, 0.1), buffer.getvalue())
    inputs = (torch.zeros(len(batch), len(config.slots), config.dim), {})
    p, q = plain.predict(inputs, batch), sampled.predict(inputs, batch)
    logit = np.log(p / (1 - p))
    np.testing.assert_allclose(np.log(q / (1 - q)), logit + math.log(0.1), rtol=1e-5, atol=1e-6)
