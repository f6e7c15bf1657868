"""Building a model from its spec (built-in or ``"package.module:Class"``); weights as bytes."""

from __future__ import annotations

import importlib
import inspect
import io
from collections.abc import Callable

import torch
from torch import nn

from headrace.model.builtin import CtrModel, DeepInterestNetwork
from headrace.model.config import ModelSpec
from headrace.model.pooling import SequenceInput

__all__ = ["ModelError", "build_model", "dense_state_bytes", "load_dense_state", "model_class"]

_BUILTIN: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "lr": CtrModel.from_spec,
    "fm": CtrModel.from_spec,
    "deepfm": CtrModel.from_spec,
    "din": DeepInterestNetwork,
}


class ModelError(ValueError):
    """The configured model cannot be built; the message names the class and what is wrong."""


def model_class(kind: str) -> type[nn.Module]:
    """Import the ``torch.nn.Module`` subclass that ``kind`` (``"package.module:Class"``) names.

    Raises
    ------
    ModelError
        When the module or class cannot be imported, or is no ``nn.Module``.

    Examples
    --------
    >>> model_class("torch.nn:Linear")
    <class 'torch.nn.modules.linear.Linear'>
    >>> model_class("torch.nn:relu")
    Traceback (most recent call last):
    ...
    headrace.model.registry.ModelError: model.kind 'torch.nn:relu': torch.nn has no attribute 'relu'
    """
    module_name, _, qualname = kind.partition(":")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(
            f"model.kind {kind!r}: cannot import module {module_name!r} ({exc!r}); "
            "install it or put its directory on PYTHONPATH"
        ) from exc
    where = module_name
    for part in qualname.split("."):
        if not hasattr(found, part):
            raise ModelError(f"model.kind {kind!r}: {where} has no attribute {part!r}")
        found, where = getattr(found, part), f"{where}.{part}"
    if not (inspect.isclass(found) and issubclass(found, nn.Module)):
        raise ModelError(f"model.kind {kind!r}: {where} is not a torch.nn.Module subclass")
    return found


def build_model(spec: ModelSpec) -> nn.Module:
    """The model ``spec`` describes, with fresh weights from torch's RNG.

    A built-in kind builds its class; any other kind is imported and built
    as ``Class(layout=spec, options=dict(spec.model.options))`` and then
    checked against the interface (see :mod:`headrace.model.interface`) on
    two made-up events.

    Raises
    ------
    ModelError
        Naming the class and what is wrong with it.
    """
    kind = spec.model.kind
    if kind in _BUILTIN:
        try:
            return _BUILTIN[kind](spec)
        except ValueError as exc:  # e.g. DIN's options naming a slot that is not there
            raise ModelError(f"model.kind {kind!r}: {exc}") from exc
    cls = model_class(kind)
    try:
        model = cls(spec, dict(spec.model.options))
    except Exception as exc:
        raise ModelError(
            f"model.kind {kind!r}: {cls.__name__}(layout, options) failed: {exc!r}; "
            "a model is built from the slot layout and model.options"
        ) from exc
    _check_interface(kind, model, spec)
    return model


def _check_interface(kind: str, model: nn.Module, spec: ModelSpec) -> None:
    """Feed ``model`` two made-up events; :class:`ModelError` if it does not answer as it must."""
    sequence_slots = getattr(model, "sequence_slots", ())
    if not isinstance(sequence_slots, tuple | list) or not set(sequence_slots) <= set(spec.slots):
        raise ModelError(
            f"model.kind {kind!r}: sequence_slots must be a tuple of slot names among "
            f"{list(spec.slots)}, got {sequence_slots!r}"
        )
    n, dim = 2, spec.dim
    pooled = torch.linspace(-0.1, 0.1, n * len(spec.slots) * dim).view(n, len(spec.slots), dim)
    sequences = {
        slot: SequenceInput(torch.full((3, dim), 0.05), torch.tensor([0, 2, 3]))
        for slot in sequence_slots
    }
    dense = torch.ones(n, len(spec.model.dense_features))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(pooled, sequences, dense)
    except Exception as exc:
        raise ModelError(
            f"model.kind {kind!r}: {type(model).__name__}.forward(pooled, sequences, dense) "
            f"failed on two events: {exc!r}"
        ) from exc
    finally:
        model.train(training)
    if not isinstance(logits, torch.Tensor) or logits.shape != (n,):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(
            f"model.kind {kind!r}: {type(model).__name__}.forward must return logits of shape "
            f"(n,), got {got} for n = {n}"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError(f"model.kind {kind!r}: {type(model).__name__} has no trainable weights")


def dense_state_bytes(model: nn.Module) -> bytes:
    """The model's dense weights (its ``state_dict``) as bytes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def load_dense_state(model: nn.Module, blob: bytes) -> None:
    """Load weights saved by :func:`dense_state_bytes` (tensors only, nothing executed)."""
    model.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
