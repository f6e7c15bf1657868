"""The default model learns the synthetic stream's user x item taste, not only its biases."""

from __future__ import annotations

import numpy as np

from headrace.stream import BayesAuc, SyntheticConfig, SyntheticSource
from headrace.trainer import ModelConfig, Trainer, TrainerConfig

EVENTS = 30_000


def _late_auc(config: TrainerConfig, tmp_path) -> float:
    """Progressive AUC over the second half of the first EVENTS events of seed 7."""
    probabilities, labels = [], []

    def collect(_trainer, result):
        probabilities.append(result.probabilities)
        labels.append(result.batch.labels)

    source = SyntheticSource(SyntheticConfig(seed=7), limit=EVENTS)
    with Trainer.open(config, tmp_path / config.model.kind, source) as trainer:
        trainer.after_step.append(collect)
        trainer.run()
    p, y = np.concatenate(probabilities), np.concatenate(labels)
    auc = BayesAuc()  # a binned AUC of any probabilities, not only the hidden ones
    auc.update(p[EVENTS // 2 :], y[EVENTS // 2 :])
    return auc.value()


def test_deepfm_learns_the_interaction_that_linear_cannot(tmp_path):
    default = TrainerConfig()
    linear = default.model_copy(update={"model": ModelConfig(kind="lr")})
    deepfm_auc, linear_auc = _late_auc(default, tmp_path), _late_auc(linear, tmp_path)
    # The taste <segment, category> is a product of two ids' vectors: only the
    # FM part can represent it. The ctx_score feature, a noisy view of the
    # taste, gives the linear model part of it (measured: 0.84 vs 0.82 at 40k).
    assert deepfm_auc > linear_auc + 0.015, (deepfm_auc, linear_auc)
