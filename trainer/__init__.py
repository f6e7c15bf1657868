"""Models, the online training loop, metrics, drift and checkpoints (``headrace.trainer``).

The model itself (pooling, built-in and user models, dense weights as
bytes) is :mod:`headrace.model`, which serving shares without this package;
:func:`saved_model` rebuilds the config and dense model of a checkpoint.

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
    Slot,
    TrainerConfig,
    load_trainer_config,
)
from headrace.trainer.drift import Detection, DriftMonitor
from headrace.trainer.evaluation import ProgressiveMetrics, histogram_auc
from headrace.trainer.loop import StepResult, Summary, Trainer, TrainerError
from headrace.trainer.sources import (
    OrderedKafkaReader,
    SourceUrlError,
    open_dead_letters,
    open_source,
)

__all__ = [
    "DenseOptimizerConfig",
    "Detection",
    "DriftConfig",
    "DriftMonitor",
    "ModelConfig",
    "OrderedKafkaReader",
    "ProgressiveMetrics",
    "Slot",
    "SourceUrlError",
    "StepResult",
    "Summary",
    "Trainer",
    "TrainerConfig",
    "TrainerError",
    "TrainingState",
    "histogram_auc",
    "load_trainer_config",
    "open_dead_letters",
    "open_source",
    "saved_model",
]
