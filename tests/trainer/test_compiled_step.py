"""The built-in models' compiled training step against torch autograd."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from headrace.model import CtrModel, batch_fids, pool_embeddings
from headrace.model.compiled_ctr import CompiledCtr, RowLayout
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


@pytest.mark.parametrize("kind", ["lr", "fm", "deepfm"])
@pytest.mark.parametrize("id_bias", [True, False])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("hidden", [(16, 8), ()])
def test_compiled_step_matches_autograd(kind, id_bias, weighted, pooling, hidden):
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    n, dim = 32, 5
    batch = _batch(rng, n)
    # Model order differs from the batch's; "hour" has no ids in this batch.
    slots = ["tags", "user", "hour"]
    model = CtrModel(kind, len(slots), dim, n_dense=2, hidden=hidden, id_bias=id_bias)
    sizes = sum(len(f) for f in batch_fids(batch, slots).values())
    values = rng.normal(0, 0.5, (sizes, dim)).astype(np.float32)
    weights = batch.weights if weighted else None
    events = 40  # the loss is a mean over more events (other ranks' too)

    rows = torch.from_numpy(values).requires_grad_()
    pooled = pool_embeddings(batch, slots, rows, pooling, dim)
    logits = model(pooled, {}, torch.from_numpy(batch.dense))
    loss = F.binary_cross_entropy_with_logits(
        logits,
        torch.from_numpy(batch.labels),
        weight=None if weights is None else torch.from_numpy(weights),
        reduction="sum",
    ).div(events)
    loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}

    for p in model.parameters():
        p.grad.fill_(123.0)  # written, not added to
    got_logits, got_loss, got_grad = CompiledCtr(model, pooling).loss_and_gradients(
        values, RowLayout.of(batch, slots), batch.dense, batch.labels, weights, events
    )
    np.testing.assert_allclose(got_logits, logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert got_loss == pytest.approx(float(loss.detach()), rel=1e-5)
    np.testing.assert_allclose(got_grad, rows.grad.numpy(), rtol=1e-4, atol=1e-6)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_compiled_step_needs_gradient_tensors():
    with pytest.raises(ValueError, match="grad"):
        CompiledCtr(CtrModel("fm", 2, 3, n_dense=0), "sum")


_KERNELS_LOADED_ONCE = """
import sys, tempfile
import numba
import torch
from headrace.model import build_model
from headrace.embedding_store import _kernels as store
from headrace.model import _kernels as model
from headrace.trainer import Trainer, TrainerConfig, _kernels as trainer
from headrace.trainer.sources import open_source

def signatures():
    return {
        f"{module.__name__}.{name}": len(kernel.signatures)
        for module in (store, model, trainer)
        for name, kernel in vars(module).items()
        if isinstance(kernel, numba.core.registry.CPUDispatcher) and not name.startswith("_")
    }

assert not any(signatures().values())
config = TrainerConfig(batch_size=32, model={"hidden": [16, 8]})
with tempfile.TemporaryDirectory() as d:
    with Trainer.open(config, d, open_source("synthetic://?events=400&seed=3")) as t:
        loaded = signatures()
        # The warm-up draws nothing from torch's generator.
        torch.manual_seed(config.seed)
        fresh = build_model(config.model_spec).state_dict()
        assert all(torch.equal(fresh[k], v) for k, v in t.model.state_dict().items())
        t.run()
after = signatures()
assert after == loaded, (loaded, after)
assert all(count == 1 for count in loaded.values()), loaded
print(len(loaded))
"""


def test_a_trainer_loads_every_kernel_of_its_steps_before_the_first():
    """Each kernel is loaded once, by the warm-up, with the types the steps pass.

    And the warm-up (which may run on a thread while the trainer seeds torch)
    leaves the model's initial weights as the seed makes them.
    """
    done = subprocess.run(
        [sys.executable, "-c", _KERNELS_LOADED_ONCE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 10
