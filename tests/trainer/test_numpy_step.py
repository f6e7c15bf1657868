"""The built-in models' numpy training step against torch autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from headrace.model import CtrModel, NumpyCtr, RowPooling, pool_embeddings
from headrace.stream import Batch


def _batch(rng: np.random.Generator, n: int) -> Batch:
    """``user`` one id each, ``tags`` 0-3 ids each, ``hour`` absent."""
    tags = rng.integers(0, 4, n)
    return Batch(
        fids={"user": rng.integers(1, 1 << 40, n), "tags": rng.integers(1, 1 << 40, tags.sum())},
        offsets={"user": np.arange(n + 1), "tags": np.concatenate([[0], np.cumsum(tags)])},
        dense=rng.normal(0, 5, (n, 2)).astype(np.float32),
        dense_names=("price", "age"),
        labels=(rng.random(n) < 0.3).astype(np.float32),
        ts=np.zeros(n),
        request_ids=(None,) * n,
        positions={},
        weights=rng.uniform(0.5, 2, n).astype(np.float32),
    )


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_row_pooling_matches_torch_pooling_and_its_gradient(pooling):
    rng = np.random.default_rng(0)
    batch = _batch(rng, 17)
    slots = ["tags", "user", "hour"]
    values = rng.normal(size=(len(batch.fids["tags"]) + 17, 3)).astype(np.float32)
    rows = torch.from_numpy(values).requires_grad_()
    expected = pool_embeddings(batch, slots, rows, pooling, 3)
    upstream = rng.normal(size=expected.shape).astype(np.float32)
    (expected * torch.from_numpy(upstream)).sum().backward()

    pool = RowPooling(batch, slots, pooling)
    np.testing.assert_allclose(pool.pool(values), expected.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pool.unpool(upstream), rows.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["lr", "fm", "deepfm"])
@pytest.mark.parametrize("id_bias", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
def test_numpy_step_matches_autograd(kind, id_bias, weighted):
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    n, slots, dim = 32, 3, 5
    model = CtrModel(kind, slots, dim, n_dense=2, hidden=(16, 8), id_bias=id_bias)
    pooled = rng.normal(0, 0.5, (n, slots, dim)).astype(np.float32)
    dense = rng.normal(0, 5, (n, 2)).astype(np.float32)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    weights = rng.uniform(0.5, 2, n).astype(np.float32) if weighted else None

    inputs = torch.from_numpy(pooled).requires_grad_()
    logits = model(inputs, {}, torch.from_numpy(dense))
    loss = F.binary_cross_entropy_with_logits(
        logits,
        torch.from_numpy(labels),
        weight=None if weights is None else torch.from_numpy(weights),
    )
    loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}

    for p in model.parameters():
        p.grad.fill_(123.0)  # written, not added to
    got_logits, got_loss, got_grad = NumpyCtr(model).loss_and_gradients(
        pooled, dense, labels, weights
    )
    np.testing.assert_allclose(got_logits, logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert got_loss == pytest.approx(float(loss.detach()), rel=1e-5)
    np.testing.assert_allclose(got_grad, inputs.grad.numpy(), rtol=1e-4, atol=1e-6)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_numpy_step_needs_gradient_tensors():
    with pytest.raises(ValueError, match="grad"):
        NumpyCtr(CtrModel("fm", 2, 3, n_dense=0))
