"""Swapping candidates into a live model (splice replay, and the demo's training run)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

import tracefmt
from recorder import derive_constructor_args

from ._candidates import CandidateSet, CandidateSpec

__all__ = ["swap_in_candidates", "FactoryModule"]


class FactoryModule(nn.Module):
    """An nn.Module around a factory candidate: owns the reference weights as parameters."""

    def __init__(self, factory: Any, path: str, type_name: str, reference: nn.Module,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.inner = reference
        weights = dict(reference.named_parameters()) | dict(reference.named_buffers())
        device = next(iter(weights.values())).device if weights else torch.device("cpu")
        spec = CandidateSpec(path, type_name, args, kwargs, weights, device, reference.training)
        self.fn = factory(spec)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def swap_in_candidates(model: nn.Module, candidates: CandidateSet) -> list[str]:
    """Replace every submodule that has a candidate; returns the replaced paths.

    Module candidates are built with the live module's constructor arguments and loaded
    with its state dict (strict). The outermost match wins: children of a replaced module
    are not visited.
    """
    replaced: list[str] = []
    skip: list[str] = []
    for path, module in list(model.named_modules()):
        if not path or any(path == s or path.startswith(s + ".") for s in skip):
            continue
        type_name = f"{type(module).__module__}.{type(module).__qualname__}"
        hit = candidates.match(path, type_name)
        if hit is None:
            continue
        _, cand = hit
        ctor = derive_constructor_args(module)
        args, kwargs = ctor if ctor is not None else ((), {})
        if inspect.isclass(cand) and issubclass(cand, nn.Module):
            if ctor is None:
                raise tracefmt.UsageError(f"cannot rebuild {path}: constructor arguments unknown")
            new = cand(*args, **kwargs)
            new.load_state_dict(module.state_dict(), strict=True)
            new.to(next(module.parameters(), torch.empty(0)).device)
        else:
            new = FactoryModule(cand, path, type_name, module, tuple(args), dict(kwargs))
        new.train(module.training)
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, new)
        replaced.append(path)
        skip.append(path)
    return replaced
