"""The trainer's model on the serving side, rebuilt from published updates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from headrace.model import (
    Lookup,
    ModelSpec,
    SequenceInput,
    build_model,
    load_dense_state,
    logit_offset,
    lookup_inputs,
)
from headrace.stream import Batch, EventParser, ParserConfig

__all__ = ["ModelInputs", "Scorer", "model_meta"]

#: What :meth:`Scorer.embed` gathers: pooled ``(n, slots, dim)`` and the sequence slots' vectors.
ModelInputs = tuple[torch.Tensor, dict[str, SequenceInput]]


def model_meta(spec: ModelSpec, sample_rate: float = 1.0) -> dict[str, Any]:
    """What a snapshot carries to rebuild the model (its class is ``spec.model.kind``).

    ``sample_rate`` is the rate at which the training stream's negatives were
    kept: served logits get ``ln(sample_rate)`` added, so that served
    probabilities are calibrated (Monolith's log-odds correction).
    """
    return {"spec": spec.model_dump(mode="json"), "sample_rate": sample_rate}


class Scorer:
    """Scores events with the model code the trainer runs.

    Scoring is two steps so that a request holds a version only while it
    gathers vectors: :meth:`embed` (under the version's read lock) and
    :meth:`predict` (outside it; a model object is never changed after it is
    built, new dense weights build a new one).
    """

    def __init__(self, spec: ModelSpec, dense: bytes, sample_rate: float = 1.0) -> None:
        self.spec = spec
        self.logit_offset = logit_offset(sample_rate)
        self.model = build_model(spec)
        load_dense_state(self.model, dense)
        self.model.eval()
        self.parser = EventParser(
            ParserConfig(
                require_label=False,
                dense_names=spec.model.dense_features,
                fid_names=tuple(spec.shared_tables.items()),
            )
        )
        self._sequence_slots = tuple(getattr(self.model, "sequence_slots", ()))

    @classmethod
    def from_update(cls, meta: Mapping[str, Any], dense: bytes) -> Scorer:
        """The ``build_model`` hook of :class:`~headrace.serving.params.ParameterState`."""
        if "spec" not in meta:
            raise ValueError(
                "the snapshot carries no model spec: it was published by an older headrace; "
                "restart the trainer with this version so that it publishes a new snapshot"
            )
        return cls(ModelSpec.model_validate(meta["spec"]), dense, meta.get("sample_rate", 1.0))

    def embed(self, batch: Batch, lookup: Lookup) -> ModelInputs:
        """The model inputs of ``batch``.

        Ids without a row get their slot's unknown row (``model.unknown_rows``)
        or a zero vector, as in training.
        """
        spec = self.spec
        return lookup_inputs(
            batch,
            spec.slots,
            spec.tables,
            lookup,
            spec.model.pooling,
            spec.dim,
            self._sequence_slots,
            spec.model.unknown_rows,
        )

    def predict(self, inputs: ModelInputs, batch: Batch) -> np.ndarray:
        """Click probabilities (float64) of the events of ``batch``."""
        pooled, sequences = inputs
        with torch.no_grad():
            logits = self.model(pooled, sequences, torch.from_numpy(batch.dense))
        return torch.sigmoid(logits.double() + self.logit_offset).numpy()
