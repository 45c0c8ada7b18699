"""Swapping candidates into a live model (splice replay, and the demo's training run)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

import tracefmt
from recorder import derive_constructor_args

from ._candidates import CandidateSet
from ._splice import FactoryAdapter

__all__ = ["swap_in_candidates"]


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
            weights = dict(module.named_parameters()) | dict(module.named_buffers())
            new = FactoryAdapter(cand, path, type_name, tuple(args), dict(kwargs), weights,
                                 set(dict(module.named_parameters())))
        new.train(module.training)
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, new)
        replaced.append(path)
        skip.append(path)
    return replaced
