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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from headrace.config import load_config
from headrace.embedding_store import Adagrad, SlotConfig, StoreConfig
from headrace.model import ModelConfig, ModelSpec

__all__ = [
    "ENV_PREFIX",
    "DenseOptimizerConfig",
    "DriftConfig",
    "ModelConfig",
    "Slot",
    "TrainerConfig",
    "load_trainer_config",
    "slot_defaults",
]

ENV_PREFIX = "HEADRACE_TRAINER__"

# A bias and an 8-element vector per id (ModelConfig.id_bias).
_DEFAULT_DIM = 9
# Chosen by measuring progressive AUC on MovieLens (bench/movielens.py) and
# the synthetic stream (bench/train.py); the table is in the README under
# "Choosing the defaults". The decay keeps rows updated for months able to
# move after a drift: it halved the synthetic stream's recovery (0.993 did
# at every seed tried, 0.995 at some).
_SPARSE_OPTIMIZER = Adagrad(lr=0.07, decay=0.993)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Slot(SlotConfig):
    """A sparse slot of the events: rows of its own (the :class:`SlotConfig` settings) or a table's.

    Parameters
    ----------
    table
        The name of a ``[[tables]]`` entry whose rows this slot shares with
        the other slots naming it (e.g. ``item_id`` and ``hist_item_ids``
        both ``"item"``): a value is one row in all of them, and admission,
        expiry and optimizer are the table's. Such a slot sets no row
        settings of its own.

    Examples
    --------
    >>> Slot(name="hist_item_ids", table="item").table
    'item'
    """

    table: str | None = Field(None, min_length=1, max_length=200)

    @model_serializer(mode="wrap")
    def _table_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A slot of a table saves its name and table: the row settings are the table's."""
        return {"name": self.name, "table": self.table} if self.table else handler(self)


def slot_defaults(name: str) -> Slot:
    """A slot with the trainer's defaults (dim and optimizer differ from :class:`SlotConfig`'s).

    A ``[[slots]]`` table in the config file gets these for the keys it omits.
    """
    return Slot(name=name, dim=_DEFAULT_DIM, optimizer=_SPARSE_OPTIMIZER)


#: The synthetic generator's sparse slots.
DEFAULT_SLOTS = tuple(
    slot_defaults(name)
    for name in ("user_id", "item_id", "segment", "category", "tags", "device", "position", "hour")
)


class DenseOptimizerConfig(_Frozen):
    """The optimizer of the dense weights (torch's fused kernels, see ``dense_optimizer``)."""

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
    dedup_window
        Event ids remembered (in the checkpoint) to drop repeats; it must
        cover what an upstream joiner re-emits after a crash.
    tables
        Embedding tables shared by several slots (``slots[].table``), each
        with its row settings (``name`` is the table's); the trainer's slot
        defaults apply to the keys a table omits.
    store
        The store's memory budget and eviction policy (every row in memory
        by default).
    unknown_rows_young_s
        With ``model.unknown_rows``: seconds of event time after an id gets
        its row during which its events still train its slot's unknown row
        (on copies; 0: only the step that creates the row). Set it to how
        far serving's parameters lag the events' own time, e.g. the window
        of a ``wait``-mode joiner: the ids serving meets without a row are
        then the ones the unknown row learns from, as often.
    dead_letters
        Where records that are not valid events go: ``"topic"`` is
        ``<topic>.dlq`` (Kafka sources only), ``"file"`` is
        ``dead_letters.jsonl`` in the data directory, and ``"auto"`` the
        topic for a Kafka source and the file otherwise.
    """

    slots: tuple[Slot, ...] = Field(DEFAULT_SLOTS, min_length=1)
    model: ModelConfig = ModelConfig()
    dense_optimizer: DenseOptimizerConfig = DenseOptimizerConfig()
    # Real users act in bursts, and an event is predicted with the parameters
    # from before its batch: MovieLens' second-half AUC is 0.788 at 16,
    # 0.781 at 32, 0.772 at 64, 0.761 at 128 (synthetic: equal). A step's
    # cost hardly depends on its size, so 32 trains ~3x fewer events/s than 128.
    batch_size: int = Field(32, ge=1, le=1 << 16)
    window: int = Field(20_000, ge=100)
    checkpoint_every_s: float | None = Field(30.0, gt=0)
    checkpoint_every_events: int | None = Field(None, ge=1)
    expire_every: float = Field(3600.0, gt=0)
    seed: int = Field(0, ge=0)
    threads: int | None = Field(1, ge=1)
    drift: DriftConfig = DriftConfig()
    dedup_window: int = Field(1 << 18, ge=1)
    tables: tuple[SlotConfig, ...] = ()
    store: StoreConfig = StoreConfig()
    unknown_rows_young_s: float = Field(0.0, ge=0)
    dead_letters: Literal["auto", "topic", "file"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _slot_defaults(cls, data: Any) -> Any:
        """Slots given as tables take the trainer's defaults for the keys they omit."""
        if isinstance(data, dict) and isinstance(data.get("slots"), list | tuple):
            data = dict(data)
            data["slots"] = [_slot_entry(slot) for slot in data["slots"]]
        if isinstance(data, dict) and isinstance(data.get("tables"), list | tuple):
            data = dict(data)
            data["tables"] = [
                slot_defaults(table["name"]).model_dump(exclude={"table"}) | table
                if isinstance(table, dict) and isinstance(table.get("name"), str)
                else table
                for table in data["tables"]
            ]
        return data

    @model_validator(mode="after")
    def _consistent_slots(self) -> TrainerConfig:
        names = [slot.name for slot in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"slot names must be unique, got {names}")
        self._check_tables()
        dims = {slot.dim for slot in self.store_slots}
        if len(dims) > 1:
            raise ValueError(
                f"all slots must share one dim (the model stacks them), got {sorted(dims)}"
            )
        self.model.check_dim(self.dim)
        if self.unknown_rows_young_s and not self.model.unknown_rows:
            raise ValueError(
                "unknown_rows_young_s trains the model's unknown rows: "
                "set model.unknown_rows = true, or leave unknown_rows_young_s at 0"
            )
        return self

    def _check_tables(self) -> None:
        tables = [table.name for table in self.tables]
        if len(set(tables)) != len(tables):
            raise ValueError(f"table names must be unique, got {tables}")
        used = {slot.table for slot in self.slots if slot.table}
        if unknown := sorted(used - set(tables)):
            raise ValueError(f"slots name the tables {unknown}; add them as [[tables]] entries")
        if unused := sorted(set(tables) - used):
            raise ValueError(f"no slot uses the tables {unused}; name them in slots[].table")
        clash = sorted({slot.name for slot in self.slots if not slot_table(slot)} & set(tables))
        if clash:
            raise ValueError(f"{clash} name both a slot with its own rows and a table")

    @property
    def store_slots(self) -> tuple[SlotConfig, ...]:
        """The embedding store's slots: each slot with rows of its own, then each table."""
        own = tuple(
            SlotConfig.model_validate(slot.model_dump(exclude={"table"}))
            for slot in self.slots
            if not slot_table(slot)
        )
        return own + self.tables

    @property
    def model_spec(self) -> ModelSpec:
        """The slot layout and model config that trainer and serving build the model from."""
        return ModelSpec(
            slots=tuple(slot.name for slot in self.slots),
            tables=tuple(slot_table(slot) or slot.name for slot in self.slots),
            dim=self.dim,
            model=self.model,
        )

    @property
    def dim(self) -> int:
        """The embedding size every slot shares (read on every training step: no copies here)."""
        first = self.slots[0]
        if first.table is None:
            return first.dim
        return next(table.dim for table in self.tables if table.name == first.table)


def slot_table(slot: Slot) -> str | None:
    """The shared table ``slot`` uses, if any (``None``: rows of its own)."""
    return slot.table


def _slot_entry(slot: Any) -> Any:
    """A ``[[slots]]`` table with the trainer's defaults, or as a :class:`Slot` of a table."""
    if isinstance(slot, SlotConfig) and not isinstance(slot, Slot):
        return Slot.model_validate(slot.model_dump())
    if not (isinstance(slot, dict) and isinstance(slot.get("name"), str)):
        return slot
    if slot.get("table") is None:
        return slot_defaults(slot["name"]).model_dump() | slot
    if own := sorted(slot.keys() - {"name", "table"}):
        raise ValueError(
            f"slot {slot['name']!r} uses table {slot['table']!r}, so it cannot set {own}: "
            "set them on the [[tables]] entry"
        )
    return Slot(name=slot["name"], table=slot["table"])


def load_trainer_config(path: str | Path | None = None) -> TrainerConfig:
    """Defaults, then the TOML file at ``path``, then ``HEADRACE_TRAINER__*`` variables.

    Raises
    ------
    headrace.config.ConfigError
        Naming the bad key.
    """
    return load_config(TrainerConfig, path, env_prefix=ENV_PREFIX)
