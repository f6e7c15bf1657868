"""The dense weights' optimizer: torch's fused Adam, Adagrad or SGD kernel on one flat tensor.

The trainer keeps all dense weights in one flat parameter (see
``_flat_parameters`` in :mod:`headrace.trainer.loop`), so an optimizer
steps one tensor. ``torch.optim``'s optimizers would do, but building one
imports ``torch._dynamo`` (1.3 s of CPU, a third of a trainer's start, paid
again by every rank and restart), and their ``step`` wraps the kernel in
bookkeeping that cost about as much as the kernel at batch 32. This calls
the same fused kernels ``torch.optim.X(fused=True)`` calls, on the same
state, and reads and writes ``torch.optim``'s ``state_dict`` layout, so
checkpoints written by either load in the other.

Each kind is a :class:`Rule`: the state it starts from and one update
function of one signature, ``(param, grad, state, lr) -> None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# torch.optim's defaults for the hyperparameters the config does not expose.
_BETAS, _ADAM_EPS, _ADAGRAD_EPS = (0.9, 0.999), 1e-8, 1e-10


def _adam(param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], lr: float):
    state["step"].add_(1)
    torch._fused_adam_(
        [param],
        [grad],
        [state["exp_avg"]],
        [state["exp_avg_sq"]],
        [],
        [state["step"]],
        amsgrad=False,
        lr=lr,
        beta1=_BETAS[0],
        beta2=_BETAS[1],
        weight_decay=0.0,
        eps=_ADAM_EPS,
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


def _adagrad(param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], lr: float):
    state["step"].add_(1)
    torch._fused_adagrad_(
        [param],
        [grad],
        [state["sum"]],
        [state["step"]],
        lr=lr,
        lr_decay=0.0,
        weight_decay=0.0,
        eps=_ADAGRAD_EPS,
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


def _sgd(param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], lr: float):
    torch._fused_sgd_(
        [param],
        [grad],
        [],
        weight_decay=0.0,
        momentum=0.0,
        lr=lr,
        dampening=0.0,
        nesterov=False,
        maximize=False,
        is_first_step=False,
        grad_scale=None,
        found_inf=None,
    )


@dataclass(frozen=True)
class Rule:
    """One optimizer kind.

    Parameters
    ----------
    update
        ``(param, grad, state, lr)``: one step, in place on ``param`` and ``state``.
    state
        The kind's state for a parameter: name -> a function of the parameter.
    group
        The kind's hyperparameters in ``torch.optim``'s ``param_groups`` layout.
    """

    update: Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], float], None]
    state: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    group: dict[str, Any]


_FLAGS = {"maximize": False, "foreach": None, "differentiable": False, "fused": True}
RULES = {
    "adam": Rule(
        _adam,
        {
            "step": lambda _: torch.tensor(0.0),
            "exp_avg": torch.zeros_like,
            "exp_avg_sq": torch.zeros_like,
        },
        {
            "betas": _BETAS,
            "eps": _ADAM_EPS,
            "weight_decay": 0.0,
            "amsgrad": False,
            "capturable": False,
            "decoupled_weight_decay": False,
            **_FLAGS,
        },
    ),
    "adagrad": Rule(
        _adagrad,
        {"step": lambda _: torch.tensor(0.0), "sum": torch.zeros_like},
        {
            "lr_decay": 0.0,
            "eps": _ADAGRAD_EPS,
            "weight_decay": 0.0,
            "initial_accumulator_value": 0.0,
            **_FLAGS,
        },
    ),
    "sgd": Rule(
        _sgd,
        {},
        {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, **_FLAGS},
    ),
}


class DenseOptimizer:
    """``kind`` with learning rate ``lr`` on one parameter; its gradient is ``param.grad``.

    Examples
    --------
    >>> p = torch.nn.Parameter(torch.ones(3))
    >>> p.grad = torch.full((3,), 0.5)
    >>> opt = DenseOptimizer("sgd", p, lr=0.1)
    >>> opt.step()
    >>> p.detach().tolist()
    [0.949999988079071, 0.949999988079071, 0.949999988079071]
    """

    def __init__(self, kind: str, param: torch.nn.Parameter, lr: float) -> None:
        if kind not in RULES:
            raise ValueError(f"unknown dense optimizer {kind!r}; choose one of {sorted(RULES)}")
        self.kind, self.param, self.lr = kind, param, lr
        self._rule = RULES[kind]
        # The kernels update this view of ``param``'s storage: as a tensor
        # outside autograd it needs no ``torch.no_grad()`` context at each step.
        self._weights = param.detach()
        self.state = {name: make(self._weights) for name, make in self._rule.state.items()}

    def step(self) -> None:
        """One update of ``param`` from ``param.grad``."""
        self._rule.update(self._weights, self.param.grad, self.state, self.lr)

    def state_dict(self) -> dict[str, Any]:
        """The state in ``torch.optim``'s layout: one group, one parameter (index 0)."""
        group = {"lr": self.lr, **self._rule.group, "params": [0]}
        return {"state": {0: dict(self.state)} if self.state else {}, "param_groups": [group]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Take the state of :meth:`state_dict`, or of ``torch.optim``'s optimizer of this kind.

        The learning rate stays this optimizer's: it may change between runs.
        ``ValueError`` when the state is another kind's or another shape's.
        """
        # torch.optim keeps no state for a parameter it has not stepped yet.
        state = saved.get("state", {}).get(0, {})
        if state and set(state) != set(self._rule.state):
            raise ValueError(
                f"the saved dense optimizer state holds {sorted(state)}, "
                f"{self.kind} keeps {sorted(self._rule.state)}: "
                "was dense_optimizer.kind changed?"
            )
        for name, tensor in state.items():
            if name != "step" and tensor.shape != self.param.shape:
                raise ValueError(
                    f"the saved dense optimizer state {name!r} has shape {tuple(tensor.shape)}, "
                    f"the weights {tuple(self.param.shape)}"
                )
            self.state[name] = tensor.to(torch.float32).clone()
