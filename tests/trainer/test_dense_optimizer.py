"""The dense optimizer against torch.optim's fused optimizers, and checkpoints between them."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from headrace.trainer.dense_optimizer import DenseOptimizer

TORCH = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def _through_bytes(state: dict) -> dict:
    """A state_dict as a checkpoint carries it: torch.save, then torch.load."""
    saved = io.BytesIO()
    torch.save(state, saved)
    saved.seek(0)
    return torch.load(saved)


@pytest.mark.parametrize("kind", sorted(TORCH))
@pytest.mark.parametrize("restore", ["ours_from_torch", "torch_from_ours"])
def test_steps_equal_torch_optims_across_a_restore_either_way(kind, restore):
    torch.manual_seed(0)
    mine = torch.nn.Parameter(torch.randn(300))
    theirs = torch.nn.Parameter(mine.detach().clone())
    mine_opt = DenseOptimizer(kind, mine, lr=1e-2)
    their_opt = TORCH[kind]([theirs], lr=1e-2, fused=True)
    for step in range(20):
        if step == 10 and restore == "ours_from_torch":  # a checkpoint of older headrace
            mine_opt.load_state_dict(_through_bytes(their_opt.state_dict()))
        if step == 10 and restore == "torch_from_ours":
            their_opt.load_state_dict(_through_bytes(mine_opt.state_dict()))
        grad = torch.randn(300)
        mine.grad, theirs.grad = grad.clone(), grad.clone()
        mine_opt.step()
        their_opt.step()
    assert torch.equal(mine, theirs)
    for name, tensor in their_opt.state[theirs].items():
        assert torch.equal(mine_opt.state[name], tensor), name


def test_the_state_of_another_kind_is_refused_naming_the_setting():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.ones(4)
    adam = DenseOptimizer("adam", p, lr=0.1)
    adam.step()
    with pytest.raises(ValueError, match=r"dense_optimizer\.kind"):
        DenseOptimizer("adagrad", p, lr=0.1).load_state_dict(adam.state_dict())


def test_a_fresh_torch_optimizer_state_loads_as_a_fresh_start():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = DenseOptimizer("adam", p, lr=0.1)
    opt.load_state_dict(torch.optim.Adam([torch.nn.Parameter(torch.zeros(4))]).state_dict())
    assert float(opt.state["step"]) == 0


def test_building_a_trainer_does_not_import_torch_dynamo(tmp_path):
    # torch.optim's optimizers import torch._dynamo when built: 1.3 s of every trainer's start.
    code = (
        "import sys\n"
        "from headrace.stream import FileSource\n"
        "from headrace.trainer import Trainer, TrainerConfig\n"
        f"open({str(tmp_path / 'e.jsonl')!r}, 'w').close()\n"
        f"with Trainer.open(TrainerConfig(), {str(tmp_path / 'd')!r}, "
        f"FileSource({str(tmp_path / 'e.jsonl')!r})) as t:\n"
        "    t.checkpoint()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
