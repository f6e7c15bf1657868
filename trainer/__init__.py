"""Models, the online training loop, metrics, drift and checkpoints (``headrace.trainer``).

Serving reuses the model half without the loop: :func:`saved_model` rebuilds
the config and dense model from a store's checkpoint blobs,
:func:`lookup_pooled` pools a batch's vectors, and :class:`CtrModel` maps
(pooled embeddings, dense features) to logits.

Examples
--------
>>> import tempfile
>>> from headrace.stream import SyntheticConfig, SyntheticSource
>>> from headrace.trainer import Trainer, TrainerConfig
>>> source = SyntheticSource(SyntheticConfig(seed=1), limit=500)
>>> with Trainer.open(TrainerConfig(), tempfile.mkdtemp(), source) as trainer:
...     summary = trainer.run()
>>> summary.trained
500
"""

from headrace.trainer.checkpoint import TrainingState, saved_model
from headrace.trainer.config import (
    DenseOptimizerConfig,
    DriftConfig,
    ModelConfig,
    TrainerConfig,
    load_trainer_config,
)
from headrace.trainer.drift import Detection, DriftMonitor
from headrace.trainer.evaluation import ProgressiveMetrics, histogram_auc
from headrace.trainer.loop import StepResult, Summary, Trainer, TrainerError
from headrace.trainer.models import (
    CtrModel,
    build_model,
    dense_state_bytes,
    load_dense_state,
    lookup_pooled,
    pool_embeddings,
)
from headrace.trainer.sources import OrderedKafkaReader, SourceUrlError, open_source

__all__ = [
    "CtrModel",
    "DenseOptimizerConfig",
    "Detection",
    "DriftConfig",
    "DriftMonitor",
    "ModelConfig",
    "OrderedKafkaReader",
    "ProgressiveMetrics",
    "SourceUrlError",
    "StepResult",
    "Summary",
    "Trainer",
    "TrainerConfig",
    "TrainerError",
    "TrainingState",
    "build_model",
    "dense_state_bytes",
    "histogram_auc",
    "load_dense_state",
    "load_trainer_config",
    "lookup_pooled",
    "open_source",
    "pool_embeddings",
    "saved_model",
]
