"""The trainer's model on the serving side, rebuilt from published updates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from headrace.stream import Batch, EventParser, ParserConfig
from headrace.trainer import TrainerConfig, build_model, load_dense_state, lookup_pooled
from headrace.trainer.correction import logit_offset

__all__ = ["Scorer", "model_meta"]


def model_meta(config: TrainerConfig, sample_rate: float = 1.0) -> dict[str, Any]:
    """What a snapshot carries so that serving can rebuild the model.

    ``sample_rate`` is the rate at which the training stream's negatives were
    kept: served logits get ``ln(sample_rate)`` added, so that served
    probabilities are calibrated (Monolith's log-odds correction).
    """
    return {"config": config.model_dump(mode="json"), "sample_rate": sample_rate}


class Scorer:
    """Scores events with the model code the trainer runs.

    Scoring is two steps so that a request holds a version only while it
    gathers vectors: :meth:`embed` (under the version's read lock) and
    :meth:`predict` (outside it; a model object is never changed after it is
    built, new dense weights build a new one).
    """

    def __init__(self, config: TrainerConfig, dense: bytes, sample_rate: float = 1.0) -> None:
        self.config = config
        self.logit_offset = logit_offset(sample_rate)
        self.model = build_model(config)
        load_dense_state(self.model, dense)
        self.model.eval()
        self.parser = EventParser(
            ParserConfig(require_label=False, dense_names=config.model.dense_features)
        )
        self._slots = tuple(slot.name for slot in config.slots)

    @classmethod
    def from_update(cls, meta: Mapping[str, Any], dense: bytes) -> Scorer:
        """The ``build_model`` hook of :class:`~headrace.serving.params.ParameterState`."""
        return cls(
            TrainerConfig.model_validate(meta["config"]), dense, meta.get("sample_rate", 1.0)
        )

    def embed(self, batch: Batch, lookup: Callable[[str, np.ndarray], np.ndarray]) -> torch.Tensor:
        """Pooled embeddings of ``batch``; unknown ids count as zero vectors, as in training."""
        return lookup_pooled(batch, self._slots, lookup, self.config.model.pooling, self.config.dim)

    def predict(self, pooled: torch.Tensor, batch: Batch) -> np.ndarray:
        """Click probabilities (float64) of the events of ``batch``."""
        with torch.no_grad():
            logits = self.model(pooled, torch.from_numpy(batch.dense))
        return torch.sigmoid(logits.double() + self.logit_offset).numpy()
