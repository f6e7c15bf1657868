"""Sparse optimizers against torch on dense tensors."""

import numpy as np
import pytest
import torch

from headrace.embedding_store import FTRL, SGD, Adagrad, Initializer, SlotConfig

N_IDS, DIM, STEPS = 12, 5, 25


def _ftrl_reference(
    opt: FTRL, initial: torch.Tensor, grads_per_step: list[torch.Tensor]
) -> torch.Tensor:
    """FTRL-Proximal on a dense tensor, from McMahan et al. (2013), Algorithm 1.

    As in TensorFlow's ApplyFtrl, ``sigma * w`` uses the current weight, which
    before the first step is the row's initial value.
    """
    z = torch.zeros(N_IDS, DIM, dtype=torch.float64)
    n = torch.zeros(N_IDS, DIM, dtype=torch.float64)
    w = initial.double()
    for g in grads_per_step:
        g = g.double()
        touched = (g != 0).any(dim=1)
        sigma = ((n + g * g).sqrt() - n.sqrt()) / opt.alpha
        z = torch.where(touched[:, None], z + g - sigma * w, z)
        n = torch.where(touched[:, None], n + g * g, n)
        new_w = -(z - z.sign() * opt.l1) / ((opt.beta + n.sqrt()) / opt.alpha + opt.l2)
        new_w = torch.where(z.abs() <= opt.l1, torch.zeros_like(w), new_w)
        w = torch.where(touched[:, None], new_w, w)
    return w.float()


@pytest.mark.parametrize(
    "optimizer",
    [
        SGD(lr=0.3),
        Adagrad(lr=0.2, initial_accumulator_value=0.1, eps=1e-10),
        Adagrad(lr=0.05),
        FTRL(alpha=0.1, beta=1.0, l1=0.01, l2=0.1),
    ],
    ids=["sgd", "adagrad", "adagrad-zero-acc", "ftrl"],
)
def test_sparse_updates_match_dense_torch(open_store, optimizer):
    # torch steps once on the summed gradient of a duplicated id.
    slot = SlotConfig(
        name="item",
        dim=DIM,
        optimizer=optimizer,
        initializer=Initializer(kind="normal", scale=0.5),
        repeats="sum",
    )
    store = open_store([slot])
    rng = np.random.default_rng(3)
    all_ids = np.arange(100, 100 + N_IDS, dtype=np.int64)
    store.lookup_for_training("item", all_ids, event_time=0.0)  # admit every id
    initial = torch.from_numpy(store.lookup("item", all_ids))
    param = torch.nn.Parameter(initial.clone())
    if isinstance(optimizer, SGD):
        reference = torch.optim.SGD([param], lr=optimizer.lr)
    elif isinstance(optimizer, Adagrad):
        reference = torch.optim.Adagrad(
            [param],
            lr=optimizer.lr,
            initial_accumulator_value=optimizer.initial_accumulator_value,
            eps=optimizer.eps,
        )
    dense_grads = []
    for _ in range(STEPS):
        # A batch with duplicates: their gradients must be summed first.
        positions = rng.integers(0, N_IDS, size=20)
        grads = rng.normal(size=(20, DIM)).astype(np.float32)
        lookup = store.lookup_for_training("item", all_ids[positions], event_time=1.0)
        store.apply_gradients(lookup, grads)
        dense = torch.zeros(N_IDS, DIM).index_add_(
            0, torch.from_numpy(positions), torch.from_numpy(grads)
        )
        dense_grads.append(dense)
        if not isinstance(optimizer, FTRL):
            # torch's sparse semantics: untouched rows take no step.
            param.grad = dense
            touched = (dense != 0).any(dim=1)
            before = param.detach().clone()
            reference.step()
            with torch.no_grad():
                if isinstance(optimizer, SGD):
                    param[~touched] = before[~touched]
    expected = (
        _ftrl_reference(optimizer, initial, dense_grads) if isinstance(optimizer, FTRL) else param
    )
    np.testing.assert_allclose(
        store.lookup("item", all_ids), expected.detach().numpy(), rtol=1e-6, atol=1e-6
    )
