"""Pooling, the built-in models, and dense weights saved for serving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from headrace.model import (
    CtrModel,
    build_model,
    dense_state_bytes,
    load_dense_state,
    lookup_inputs,
    pool_embeddings,
)
from headrace.stream import Batch
from headrace.trainer import TrainerConfig


def _batch() -> Batch:
    # Event 0: tags a, b; event 1: no tags; event 2: tag c. One user each.
    return Batch(
        fids={"tags": np.array([1, 2, 3], dtype=np.int64), "user": np.array([7, 8, 9])},
        offsets={"tags": np.array([0, 2, 2, 3]), "user": np.array([0, 1, 2, 3])},
        dense=np.array([[1.0], [0.0], [-3.0]], dtype=np.float32),
        dense_names=("price",),
        labels=np.array([1, 0, 0], dtype=np.float32),
        ts=np.zeros(3),
        request_ids=(None, None, None),
        positions={},
    )


@pytest.mark.parametrize(("pooling", "first"), [("sum", [4.0, 6.0]), ("mean", [2.0, 3.0])])
def test_pooling_of_multi_valued_absent_and_missing_slots(pooling, first):
    tags = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    users = torch.tensor([[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]])
    # The vectors of all slots' fids, concatenated in slot order.
    values = torch.cat([tags, users])
    pooled = pool_embeddings(_batch(), ["tags", "user", "absent"], values, pooling, 2)
    assert pooled.shape == (3, 3, 2)
    assert pooled[0, 0].tolist() == first
    assert pooled[1, 0].tolist() == [0.0, 0.0]  # an event without tags
    assert pooled[2, 0].tolist() == [5.0, 6.0]
    assert torch.equal(pooled[:, 1], users)
    assert not pooled[:, 2].any()  # a slot no event has


def test_gradients_reach_every_vector():
    tags = torch.ones(3, 2, requires_grad=True)
    pooled = pool_embeddings(_batch(), ["tags"], tags, "sum", 2)
    pooled.sum().backward()
    assert tags.grad.tolist() == [[1.0, 1.0]] * 3


def test_one_id_per_event_and_slot_pools_without_copying():
    batch = dataclasses.replace(_batch(), fids={"user": _batch().fids["user"]})
    users = torch.tensor([[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]], requires_grad=True)
    pooled = pool_embeddings(batch, ["user"], users, "mean", 2)
    assert torch.equal(pooled[:, 0], users)
    pooled[:, 0, 1].sum().backward()
    assert users.grad.tolist() == [[0.0, 1.0]] * 3


def test_lookup_inputs_reads_vectors_through_a_function():
    table = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [2.0, 2.0], 7: [1, 1], 8: [2, 2], 9: [3, 3]}

    def lookup(name, fids, fill):
        assert name in ("t", "u")  # each slot's table
        assert fill is None  # zero vectors for ids without a row: no unknown rows asked for
        return np.array([table[int(f)] for f in fids], dtype=np.float32)

    pooled, sequences = lookup_inputs(_batch(), ["tags", "user"], ["t", "u"], lookup, "sum", 2)
    assert sequences == {}
    assert pooled[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert pooled[2].tolist() == [[2.0, 2.0], [3.0, 3.0]]


@pytest.mark.parametrize("kind", ["lr", "fm", "deepfm"])
def test_models_give_one_logit_per_event_and_learn(kind):
    torch.manual_seed(0)
    model = CtrModel(kind, n_slots=3, dim=4, n_dense=2, hidden=(8,))
    pooled, dense = torch.randn(64, 3, 4), torch.randn(64, 2)
    labels = (pooled[:, 0, 0] > 0).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(50):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(pooled, {}, dense), labels
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert model(pooled, {}, dense).shape == (64,)
    assert losses[-1] < 0.5 * losses[0]


def test_fm_interactions_are_the_pairwise_dot_products():
    model = CtrModel("fm", n_slots=3, dim=2, n_dense=0)
    torch.nn.init.zeros_(model.linear.weight)
    torch.nn.init.zeros_(model.linear.bias)
    pooled = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]])
    expected = (1 * 2 + 0 * 1) + (1 * 0 + 0 * 3) + (2 * 0 + 1 * 3)
    assert model(pooled, {}, torch.zeros(1, 0)).item() == pytest.approx(expected)


def test_dense_weights_round_trip_through_bytes():
    config = TrainerConfig()
    torch.manual_seed(1)
    trained, fresh = build_model(config.model_spec), build_model(config.model_spec)
    pooled, dense = torch.randn(5, len(config.slots), config.dim), torch.rand(5, 2) * 100
    assert not torch.equal(trained(pooled, {}, dense), fresh(pooled, {}, dense))
    load_dense_state(fresh, dense_state_bytes(trained))
    assert torch.equal(trained(pooled, {}, dense), fresh(pooled, {}, dense))


def test_id_bias_is_column_zero_added_as_is():
    model = CtrModel("fm", n_slots=2, dim=3, n_dense=1, id_bias=True)
    torch.nn.init.zeros_(model.linear.weight)
    torch.nn.init.constant_(model.linear.bias, 0.5)
    # Biases 1.5 and -4; vectors (1, 2) and (3, -1) interact: 1*3 + 2*-1 = 1.
    pooled = torch.tensor([[[1.5, 1.0, 2.0], [-4.0, 3.0, -1.0]]])
    assert model(pooled, {}, torch.ones(1, 1)).item() == pytest.approx(0.5 + 1.5 - 4.0 + 1.0)
    assert model.linear.in_features == 1  # the dense features only
    with pytest.raises(ValueError, match="dim >= 2"):
        CtrModel("lr", n_slots=2, dim=1, n_dense=1, id_bias=True)
