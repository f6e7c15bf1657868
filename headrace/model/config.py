"""The model's settings and its spec: what the trainer and serving both build it from."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BUILTIN_KINDS", "ModelConfig", "ModelSpec"]

#: The model kinds headrace ships; any other kind is ``"package.module:Class"``.
BUILTIN_KINDS = ("lr", "fm", "deepfm", "din")

_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """The dense part of the model.

    Parameters
    ----------
    kind
        ``"lr"`` (logistic regression on the pooled embeddings and dense
        features), ``"fm"`` (plus pairwise interactions), ``"deepfm"`` (plus
        an MLP over all of them), ``"din"`` (DeepFM whose history slot is
        pooled by attention from the candidate item, see
        :class:`~headrace.model.DeepInterestNetwork`), or
        ``"package.module:Class"``: your own ``torch.nn.Module`` (see
        :mod:`headrace.model.interface`).
    pooling
        How the vectors of a multi-valued slot combine: ``"sum"`` or ``"mean"``.
    hidden
        Sizes of the MLP's hidden layers (DeepFM and DIN).
    dense_features
        Names of the events' dense features, in model input order; an event
        lacking one gets 0.
    id_bias
        Column 0 of every slot's rows is the id's bias (see
        :class:`~headrace.model.CtrModel`); slots then need ``dim >= 2``.
    unknown_rows
        Each slot has an "unknown" row (a regular row of its table, under
        :func:`~headrace.schema.unknown_fid`) that stands in for ids without
        a row, at serving and in training, instead of a zero vector. The
        trainer teaches it what a new id means: an event that brings an id
        its first row is also trained once more with the unknown row in the
        new row's place, and only the unknown row learns from that copy.
    options
        A free table passed to the model as is: your own model's settings,
        or DIN's (see :class:`~headrace.model.DinOptions`).

    Examples
    --------
    >>> ModelConfig(kind="my_models:TwoTower", options={"towers": 2}).options
    {'towers': 2}
    >>> from pydantic import ValidationError
    >>> try:
    ...     ModelConfig(kind="deep")
    ... except ValidationError as exc:
    ...     print(exc.errors()[0]["msg"][:70])
    Value error, model.kind must be one of lr, fm, deepfm, din or 'package
    """

    kind: str = "deepfm"
    pooling: Literal["sum", "mean"] = "sum"
    hidden: tuple[int, ...] = Field((128, 64), min_length=0, max_length=8)
    dense_features: tuple[str, ...] = ("price", "ctx_score")
    id_bias: bool = True
    unknown_rows: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if any(size < 1 for size in self.hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {list(self.hidden)}")
        if self.kind not in BUILTIN_KINDS and not _CLASS_PATH.match(self.kind):
            raise ValueError(
                f"model.kind must be one of {', '.join(BUILTIN_KINDS)} or "
                f"'package.module:Class' (an importable torch.nn.Module), got {self.kind!r}"
            )
        return self

    @property
    def builtin(self) -> bool:
        """Whether ``kind`` names one of headrace's own models."""
        return self.kind in BUILTIN_KINDS

    def check_dim(self, dim: int) -> None:
        """``ValueError`` when rows of length ``dim`` cannot feed this model.

        >>> ModelConfig(id_bias=True).check_dim(1)
        Traceback (most recent call last):
        ...
        ValueError: model.id_bias needs slots of dim >= 2, got 1
        """
        if self.id_bias and dim < 2:
            raise ValueError(f"model.id_bias needs slots of dim >= 2, got {dim}")


class ModelSpec(_Frozen):
    """Everything needed to build the model and feed it: the slot layout and the model config.

    The trainer derives it from its config; every checkpoint and published
    snapshot carries it, so serving builds the same model without the
    trainer's config.

    Parameters
    ----------
    slots
        The sparse slots in model order: ``pooled[:, k]`` is ``slots[k]``.
    tables
        The embedding table of each slot, parallel to ``slots`` (a slot's own
        name unless several slots share a table). Feature ids are hashed
        with the table name, so one value is one row in every slot of a table.
    dim
        The row length every slot shares.
    model
        The model's settings.

    Examples
    --------
    >>> spec = ModelSpec(slots=("item_id", "hist"), tables=("item", "item"), dim=4)
    >>> spec.index("hist"), spec.table_of("hist"), spec.shared_tables
    (1, 'item', {'item_id': 'item', 'hist': 'item'})
    """

    slots: tuple[str, ...] = Field(min_length=1)
    tables: tuple[str, ...]
    dim: int = Field(ge=1)
    model: ModelConfig = ModelConfig()

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if len(self.tables) != len(self.slots):
            raise ValueError(f"{len(self.slots)} slots but {len(self.tables)} tables")
        if len(set(self.slots)) != len(self.slots):
            raise ValueError(f"slot names must be unique, got {list(self.slots)}")
        self.model.check_dim(self.dim)
        return self

    def index(self, slot: str) -> int:
        """Position of ``slot`` in model order (``ValueError`` naming the slots if absent)."""
        try:
            return self.slots.index(slot)
        except ValueError:
            raise ValueError(f"no slot {slot!r}; the slots are {list(self.slots)}") from None

    def table_of(self, slot: str) -> str:
        """The embedding table (the store slot) of ``slot``."""
        return self.tables[self.index(slot)]

    @property
    def shared_tables(self) -> dict[str, str]:
        """Slot -> table, for the slots whose table is not their own name (the parser's hashing)."""
        return {s: t for s, t in zip(self.slots, self.tables, strict=True) if s != t}
