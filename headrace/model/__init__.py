"""The model, shared by the trainer and serving (``headrace.model``).

Pooling (:func:`model_inputs`), the built-in models (:class:`CtrModel` for
``lr``, ``fm`` and ``deepfm``; :class:`DeepInterestNetwork` for ``din``),
your own models (``model.kind = "package.module:Class"``, see
:mod:`headrace.model.interface`), the spec both sides build a model from
(:class:`ModelSpec`) and the dense weights as bytes. It imports no other
headrace package but the root's schema and config, so a serving worker
loads none of the training code.
"""

from headrace.model.builtin import CtrModel, DeepInterestNetwork, DinOptions
from headrace.model.calibration import logit_offset
from headrace.model.config import BUILTIN_KINDS, ModelConfig, ModelSpec
from headrace.model.interface import RecModel
from headrace.model.pooling import (
    Lookup,
    SequenceInput,
    batch_fids,
    lookup_inputs,
    model_inputs,
    pool_embeddings,
)
from headrace.model.registry import (
    ModelError,
    build_model,
    dense_state_bytes,
    load_dense_state,
    model_class,
)

__all__ = [
    "BUILTIN_KINDS",
    "CtrModel",
    "DeepInterestNetwork",
    "DinOptions",
    "Lookup",
    "ModelConfig",
    "ModelError",
    "ModelSpec",
    "RecModel",
    "SequenceInput",
    "batch_fids",
    "build_model",
    "dense_state_bytes",
    "load_dense_state",
    "logit_offset",
    "lookup_inputs",
    "model_class",
    "model_inputs",
    "pool_embeddings",
]
