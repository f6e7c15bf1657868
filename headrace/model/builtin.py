"""The built-in models: logistic regression, FM, DeepFM and DIN."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from headrace.model.config import ModelSpec
from headrace.model.pooling import SequenceInput

__all__ = ["CtrModel", "DeepInterestNetwork", "DinOptions"]


def _signed_log1p(x: torch.Tensor) -> torch.Tensor:
    # Prices and counts span orders of magnitude; this keeps the scale sane
    # without statistics that would have to be learned and synced.
    return torch.sign(x) * torch.log1p(torch.abs(x))


def _mlp(width: int, hidden: Sequence[int]) -> nn.Sequential:
    """ReLU layers of sizes ``hidden``, then one output: ``(..., width) -> (..., 1)``."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class CtrModel(nn.Module):
    """Logits from pooled slot embeddings and dense features.

    Parameters
    ----------
    kind
        ``"lr"``: the ids' biases (see ``id_bias``) and a linear layer over
        the dense features. ``"fm"``: plus the FM pairwise interactions of
        the slot vectors. ``"deepfm"``: plus an MLP over the flattened
        vectors and dense features.
    n_slots, dim
        Shape of the pooled embeddings.
    n_dense
        Number of dense features (transformed by signed ``log1p``).
    hidden
        MLP hidden sizes (DeepFM only).
    id_bias
        Column 0 of every row is the id's own bias, added to the logit as
        is (Monolith's "bias" slot, kept in the same row so that it costs no
        second lookup); the other ``dim - 1`` columns are the id's vector,
        and the linear layer reads the dense features only. Without it the
        linear layer reads the flattened vectors too, so an id's bias is
        learned through its vector, entangled with the FM interactions; on
        the synthetic stream that cost ~0.005 of progressive AUC.

    Examples
    --------
    >>> model = CtrModel("deepfm", n_slots=3, dim=4, n_dense=2, hidden=(8,), id_bias=True)
    >>> model(torch.zeros(5, 3, 4), {}, torch.zeros(5, 2)).shape
    torch.Size([5])
    """

    sequence_slots: tuple[str, ...] = ()

    def __init__(
        self,
        kind: Literal["lr", "fm", "deepfm"],
        n_slots: int,
        dim: int,
        n_dense: int,
        hidden: Sequence[int] = (),
        id_bias: bool = False,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.id_bias = id_bias
        if id_bias:
            if dim < 2:
                raise ValueError(f"id_bias needs dim >= 2 (a bias and a vector), got {dim}")
            dim -= 1
        width = n_slots * dim + n_dense
        self.linear = nn.Linear(n_dense if id_bias else width, 1)
        self.mlp = _mlp(width, hidden) if kind == "deepfm" else None

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> CtrModel:
        """The ``spec.model.kind`` model (``lr``, ``fm`` or ``deepfm``) of ``spec``'s layout."""
        m = spec.model
        return cls(
            m.kind,  # type: ignore[arg-type]
            len(spec.slots),
            spec.dim,
            len(m.dense_features),
            m.hidden,
            m.id_bias,
        )

    def forward(
        self, pooled: torch.Tensor, sequences: dict[str, SequenceInput], dense: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(n,)`` from ``pooled`` ``(n, slots, dim)`` and ``dense`` ``(n, n_dense)``.

        ``sequences`` is not read (the interface passes it to every model).
        """
        dense = _signed_log1p(dense)
        biases = None
        if self.id_bias:
            biases, pooled = pooled[:, :, 0].sum(dim=1), pooled[:, :, 1:]
        flat = torch.cat([pooled.flatten(1), dense], dim=1)
        if biases is None:
            logits = self.linear(flat).squeeze(1)
        else:
            logits = self.linear(dense).squeeze(1) + biases
        if self.kind == "lr":
            return logits
        # Only the slot vectors interact: a projection of the dense features
        # as one more FM field (tried) swamped the slot vectors' gradients,
        # -0.025 of progressive AUC on the synthetic stream.
        total = pooled.sum(dim=1)
        logits = logits + 0.5 * (total * total - (pooled * pooled).sum(dim=1)).sum(dim=1)
        if self.mlp is not None:
            logits = logits + self.mlp(flat).squeeze(1)
        return logits


class DinOptions(BaseModel):
    """DIN's ``model.options``.

    Parameters
    ----------
    candidate
        The slot of the item to score (its vector is the attention query).
    history
        The multi-valued slot of the user's recent items, in order (best in
        the candidate's table, so that an item is the same row in both).
    attention_hidden
        Hidden sizes of the attention MLP.
    normalize
        ``"softmax"``: the attention weights of an event's history sum to 1;
        ``"none"``: the MLP's outputs are used as they are (as in the paper,
        which keeps the intensity of the user's interest).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: str = "item_id"
    history: str = "hist_item_ids"
    attention_hidden: tuple[int, ...] = Field((36,), max_length=4)
    normalize: Literal["softmax", "none"] = "softmax"


class DeepInterestNetwork(nn.Module):
    """DIN (Zhou et al., KDD 2018): the history slot pooled by attention from the candidate.

    For every item ``h`` in an event's history, an MLP over
    ``[c, h, c * h, c - h]`` (``c`` the candidate item's vector) gives a
    weight; the weighted sum of the history's rows replaces the history
    slot's pooled vector, and the slots then go through DeepFM (id biases,
    FM interactions and the MLP with the dense features).

    Examples
    --------
    >>> spec = ModelSpec(slots=("user", "item", "hist"), tables=("user", "item", "item"), dim=4,
    ...                  model={"kind": "din", "hidden": [8], "dense_features": ["price"],
    ...                         "options": {"candidate": "item", "history": "hist"}})
    >>> model = DeepInterestNetwork(spec)
    >>> history = SequenceInput(torch.randn(3, 4), torch.tensor([0, 2, 2, 3]))
    >>> model(torch.randn(3, 3, 4), {"hist": history}, torch.zeros(3, 1)).shape
    torch.Size([3])
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        options = DinOptions.model_validate(spec.model.options)
        self.candidate = spec.index(options.candidate)
        self.history = spec.index(options.history)
        self.sequence_slots = (options.history,)
        self.normalize = options.normalize
        self.skip = int(spec.model.id_bias)  # the bias column takes no part in attention
        self.attention = _mlp(4 * (spec.dim - self.skip), options.attention_hidden)
        self.deepfm = CtrModel.from_spec(
            spec.model_copy(update={"model": spec.model.model_copy(update={"kind": "deepfm"})})
        )

    def forward(
        self, pooled: torch.Tensor, sequences: dict[str, SequenceInput], dense: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(n,)``; ``sequences`` must hold the history slot."""
        interest = self.attend(pooled[:, self.candidate], sequences[self.sequence_slots[0]])
        h = self.history
        pooled = torch.cat([pooled[:, :h], interest[:, None], pooled[:, h + 1 :]], dim=1)
        return self.deepfm(pooled, {}, dense)

    def attend(self, candidate: torch.Tensor, history: SequenceInput) -> torch.Tensor:
        """The attention-pooled history ``(n, dim)`` of ``candidate`` ``(n, dim)``."""
        n, dim = candidate.shape
        offsets = history.offsets.numpy()
        counts = np.diff(offsets)
        length = int(counts.max()) if n else 0
        if length == 0:
            return candidate.new_zeros((n, dim))
        events = np.repeat(np.arange(n, dtype=np.int64), counts)
        cells = torch.from_numpy(events * length + np.arange(len(events)) - offsets[events])
        rows = candidate.new_zeros((n * length, dim)).index_copy(0, cells, history.values)
        rows = rows.view(n, length, dim)
        mask = torch.zeros(n * length, dtype=torch.bool)
        mask[cells] = True
        mask = mask.view(n, length)
        c = candidate[:, None, self.skip :].expand(-1, length, -1)
        h = rows[:, :, self.skip :]
        scores = self.attention(torch.cat([c, h, c * h, c - h], dim=2)).squeeze(2)
        if self.normalize == "softmax":
            # Padding gets no weight; an event without history attends to zeros.
            weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=1)
        else:
            weights = scores * mask
        return (weights[:, :, None] * rows).sum(dim=1)
