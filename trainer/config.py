"""The trainer's settings, loaded by :func:`load_trainer_config`.

A TOML file mirrors :class:`TrainerConfig`::

    batch_size = 64
    checkpoint_every_s = 30

    [model]
    kind = "deepfm"
    hidden = [128, 64]

    [[slots]]
    name = "user_id"
    dim = 8
    optimizer = {kind = "adagrad", lr = 0.05}

Environment variables ``HEADRACE_TRAINER__<KEY>[__<SUBKEY>]`` override it
(see :mod:`headrace.config`). The defaults fit the synthetic generator's
events, so a run on ``synthetic://`` needs no file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from headrace.config import load_config
from headrace.embedding_store import Adagrad, SlotConfig, StoreConfig

__all__ = [
    "ENV_PREFIX",
    "DenseOptimizerConfig",
    "DriftConfig",
    "ModelConfig",
    "TrainerConfig",
    "load_trainer_config",
    "slot_defaults",
]

ENV_PREFIX = "HEADRACE_TRAINER__"

# A bias and an 8-element vector per id (ModelConfig.id_bias).
_DEFAULT_DIM = 9
# Chosen by measuring progressive AUC on synthetic://?events=200000&seed=7
# (see bench/train.py): lr 0.02 and 0.2 both learned worse.
_SPARSE_OPTIMIZER = Adagrad(lr=0.05)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def slot_defaults(name: str) -> SlotConfig:
    """A slot with the trainer's defaults (they differ from :class:`SlotConfig`'s own).

    A ``[[slots]]`` table in the config file gets these for the keys it omits.
    """
    return SlotConfig(name=name, dim=_DEFAULT_DIM, optimizer=_SPARSE_OPTIMIZER)


#: The synthetic generator's sparse slots.
DEFAULT_SLOTS = tuple(
    slot_defaults(name)
    for name in ("user_id", "item_id", "segment", "category", "tags", "device", "position", "hour")
)


class ModelConfig(_Frozen):
    """The dense part of the model.

    Parameters
    ----------
    kind
        ``"lr"`` (logistic regression on the pooled embeddings and dense
        features), ``"fm"`` (plus pairwise interactions) or ``"deepfm"``
        (plus an MLP over all of them).
    pooling
        How the vectors of a multi-valued slot combine: ``"sum"`` or ``"mean"``.
    hidden
        Sizes of the DeepFM MLP's hidden layers.
    dense_features
        Names of the events' dense features, in model input order; an event
        lacking one gets 0.
    id_bias
        Column 0 of every slot's rows is the id's bias (see
        :class:`~headrace.trainer.CtrModel`); slots then need ``dim >= 2``.
    """

    kind: Literal["lr", "fm", "deepfm"] = "deepfm"
    pooling: Literal["sum", "mean"] = "sum"
    hidden: tuple[int, ...] = Field((128, 64), min_length=0, max_length=8)
    dense_features: tuple[str, ...] = ("price", "ctx_score")
    id_bias: bool = True

    @model_validator(mode="after")
    def _positive_layers(self) -> ModelConfig:
        if any(size < 1 for size in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {list(self.hidden)}")
        return self


class DenseOptimizerConfig(_Frozen):
    """The torch optimizer of the dense weights."""

    kind: Literal["adam", "adagrad", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)


class DriftConfig(_Frozen):
    """River drift detectors on per-batch signals.

    Parameters
    ----------
    detector
        ``"adwin"`` or ``"page_hinkley"``.
    adwin_delta
        ADWIN's confidence; smaller detects less often.
    ph_threshold
        Page-Hinkley's alarm threshold.
    feature_drift
        Also watch, per slot, the share of ids that had no row (new or
        filtered ids): a jump means the id population changed.
    window_events
        Events whose mean signals make one detector input, whatever the
        batch size (the detectors' cost is then off the per-step path).
    """

    detector: Literal["adwin", "page_hinkley"] = "adwin"
    adwin_delta: float = Field(0.002, gt=0, lt=1)
    ph_threshold: float = Field(50.0, gt=0)
    feature_drift: bool = True
    window_events: int = Field(128, ge=1)


class TrainerConfig(_Frozen):
    """Everything the trainer needs besides its source and data directory.

    Parameters
    ----------
    slots
        The sparse slots; for FM and DeepFM all share one ``dim``.
    model
        Model kind and shape.
    dense_optimizer
        Optimizer of the dense weights (sparse rows use each slot's own).
    batch_size
        Events per training step. Small batches learn faster online.
    window
        Events in the rolling progressive-metrics window.
    checkpoint_every_s, checkpoint_every_events
        Checkpoint when either much wall-clock time or that many events have
        passed since the last one (``None`` disables that trigger).
    expire_every
        Seconds of event time between expiry sweeps of the store.
    seed
        Seed of dense weights and of the store's row initialisation.
    threads
        Torch intra-op threads; ``None`` keeps torch's default. One by
        default: small batches gain nothing from intra-op parallelism, and
        spinning threads slowed a step ~8x on a shared 2-core machine.
    drift
        Drift detector settings.
    store
        The store's memory budget and eviction policy (every row in memory
        by default).
    """

    slots: tuple[SlotConfig, ...] = Field(DEFAULT_SLOTS, min_length=1)
    model: ModelConfig = ModelConfig()
    dense_optimizer: DenseOptimizerConfig = DenseOptimizerConfig()
    # Progressive AUC over the second half of synthetic://?events=200000&seed=7
    # (bar 0.868): 0.8786 with 32, 0.8779 with 64, 0.8790 with 128, 0.8773 with
    # 256. A step costs ~4.6 ms at 128, mostly per-slot store calls that do
    # not shrink with the batch, so small batches train fewer events/s.
    batch_size: int = Field(128, ge=1, le=1 << 16)
    window: int = Field(20_000, ge=100)
    checkpoint_every_s: float | None = Field(30.0, gt=0)
    checkpoint_every_events: int | None = Field(None, ge=1)
    expire_every: float = Field(3600.0, gt=0)
    seed: int = Field(0, ge=0)
    threads: int | None = Field(1, ge=1)
    drift: DriftConfig = DriftConfig()
    store: StoreConfig = StoreConfig()

    @model_validator(mode="before")
    @classmethod
    def _slot_defaults(cls, data: Any) -> Any:
        """Slots given as tables take the trainer's defaults for the keys they omit."""
        if isinstance(data, dict) and isinstance(data.get("slots"), list | tuple):
            data = dict(data)
            data["slots"] = [
                slot_defaults(slot["name"]).model_dump() | slot
                if isinstance(slot, dict) and isinstance(slot.get("name"), str)
                else slot
                for slot in data["slots"]
            ]
        return data

    @model_validator(mode="after")
    def _consistent_slots(self) -> TrainerConfig:
        names = [slot.name for slot in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"slot names must be unique, got {names}")
        dims = {slot.dim for slot in self.slots}
        if len(dims) > 1:
            raise ValueError(
                f"all slots must share one dim (the model stacks them), got {sorted(dims)}"
            )
        if self.model.id_bias and self.dim < 2:
            raise ValueError(f"model.id_bias needs slots of dim >= 2, got {self.dim}")
        return self

    @property
    def dim(self) -> int:
        """The embedding size every slot shares."""
        return self.slots[0].dim


def load_trainer_config(path: str | Path | None = None) -> TrainerConfig:
    """Defaults, then the TOML file at ``path``, then ``HEADRACE_TRAINER__*`` variables.

    Raises
    ------
    headrace.config.ConfigError
        Naming the bad key.
    """
    return load_config(TrainerConfig, path, env_prefix=ENV_PREFIX)
