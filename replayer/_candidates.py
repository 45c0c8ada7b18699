"""Candidates files: which implementation replaces which reference module, and building it.

A candidates file is a ``.py`` file or module defining ``CANDIDATES``: a dict from a key to
a candidate. A key is a module-path glob (``decoder.*.self_attn``) or a class qualified name
(``torch.nn.LayerNorm``, ``translation.MultiHeadAttention``); a path glob wins over a class
name, and the more literal of two path globs wins. A candidate is an ``nn.Module`` subclass
(built with the reference's constructor arguments, loaded with its weights strictly) or a
factory ``factory(spec) -> callable``.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tracefmt
from recorder import rebuild_torch, tensor_from_trace
from recorder._recipe import import_user_module

__all__ = [
    "CandidateSet",
    "CandidateSpec",
    "BuiltCandidate",
    "load_candidates",
    "reference_weights",
    "weights_from_npy",
    "load_mapped_weights",
]

_GLOB_CHARS = set("*?[")


@dataclass
class CandidateSpec:
    """What a factory candidate gets: the reference module's identity, arguments and weights."""

    path: str
    type: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    weights: dict[str, torch.Tensor]
    device: torch.device
    training: bool = True


@dataclass
class BuiltCandidate:
    """A callable ready to run, and the tensors whose ``.grad`` are its parameter gradients."""

    fn: Callable[..., Any]
    params: dict[str, torch.Tensor] = field(default_factory=dict)


def _class_matches(key: str, type_name: str) -> bool:
    """``torch.nn.LayerNorm`` matches ``torch.nn.modules.normalization.LayerNorm``."""
    if key == type_name:
        return True
    k_mod, _, k_cls = key.rpartition(".")
    t_mod, _, t_cls = type_name.rpartition(".")
    return bool(k_mod) and k_cls == t_cls and (t_mod == k_mod or t_mod.startswith(k_mod + "."))


def _literal_length(glob: str) -> int:
    return sum(1 for ch in glob if ch not in _GLOB_CHARS)


@dataclass(frozen=True)
class CandidateSet:
    """The loaded ``CANDIDATES`` mapping and where it came from."""

    source: str
    candidates: Mapping[str, Any]

    def match(self, path: str, type_name: str) -> tuple[str, Any] | None:
        """The (key, candidate) for a module, or None."""
        name = path or "<root>"
        by_path = [k for k in self.candidates if fnmatch.fnmatchcase(name, k)]
        if by_path:
            key = max(by_path, key=lambda k: (not (_GLOB_CHARS & set(k)), _literal_length(k)))
            return key, self.candidates[key]
        for key, cand in self.candidates.items():
            if _class_matches(key, type_name):
                return key, cand
        return None


def load_candidates(spec: str) -> CandidateSet:
    """Import a candidates file or module; a missing or malformed CANDIDATES is a UsageError."""
    module = import_user_module(spec, what="candidates")
    unavailable = getattr(module, "UNAVAILABLE", None)
    cands = getattr(module, "CANDIDATES", None)
    if not isinstance(cands, Mapping):
        raise tracefmt.UsageError("candidates file defines no CANDIDATES dict", path=spec)
    if not cands and unavailable:
        raise tracefmt.UsageError(f"candidates unavailable here: {unavailable}", path=spec)
    for key, cand in cands.items():
        if not isinstance(key, str):
            raise tracefmt.UsageError(f"CANDIDATES key {key!r} is not a string", path=spec)
        if not (inspect.isclass(cand) and issubclass(cand, nn.Module)) and not callable(cand):
            raise tracefmt.UsageError(
                f"CANDIDATES[{key!r}] is neither an nn.Module subclass nor a factory", path=spec
            )
    return CandidateSet(str(spec), dict(cands))


def _module_state_names(reader: tracefmt.TraceReader, path: str) -> dict[str, str]:
    """Local state-dict name (relative to ``path``) -> full name in the step record."""
    out: dict[str, str] = {}
    prefix = f"{path}." if path else ""
    for m in reader.modules:
        if m.path != path and not m.path.startswith(prefix):
            continue
        rel = m.path[len(prefix) :] if m.path != path else ""
        for local in (*m.params, *m.buffers):
            out[f"{rel}.{local}" if rel else local] = m.full_name(local)
    return out


def reference_weights(
    reader: tracefmt.TraceReader, path: str, step: int, *, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers at the start of ``step``, by state-dict name."""
    rec = reader.step_record(step)
    ids = {**rec.buffers, **rec.params}
    out = {}
    for local, full in _module_state_names(reader, path).items():
        if full in ids:
            out[local] = tensor_from_trace(reader, ids[full], device=device)
    return out


def weights_from_npy(directory: str | Path) -> dict[str, torch.Tensor]:
    """``name.npy`` files of a directory as tensors (numpy's safe loader, no pickle)."""
    out = {}
    for f in sorted(Path(directory).glob("*.npy")):
        out[f.stem] = torch.from_numpy(np.load(f, allow_pickle=False))
    return out


def load_mapped_weights(
    module: nn.Module,
    weights: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str | Callable[[Mapping[str, torch.Tensor]], torch.Tensor]],
    *,
    strict: bool = True,
) -> None:
    """Load reference weights into a candidate whose names differ.

    ``mapping`` maps each candidate state-dict name to a reference name or to a function of
    all reference weights (e.g. concatenating q/k/v into one fused matrix). It loads through
    ``nn.Module.load_state_dict`` itself, so a candidate may call it from its own
    ``load_state_dict`` override (which is what the replayer calls with reference weights).
    """
    state = {}
    for name, source in mapping.items():
        state[name] = source(weights) if callable(source) else weights[source]
    nn.Module.load_state_dict(module, state, strict=strict)


def build_candidate(
    candidate: Any, reader: tracefmt.TraceReader, call: tracefmt.CallRecord, *, device: torch.device
) -> BuiltCandidate:
    """Instantiate a candidate for one reference module at one step."""
    info = reader.module_info(call.module)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if info.ctor is not None:
        args = tuple(rebuild_torch(info.ctor.get("args", {"$": "tuple", "items": []}), reader))
        kwargs = dict(rebuild_torch(info.ctor.get("kwargs", {"$": "dict", "items": []}), reader))
    weights = reference_weights(reader, call.module, call.step, device=device)
    if inspect.isclass(candidate) and issubclass(candidate, nn.Module):
        if info.ctor is None:
            raise tracefmt.UsageError(
                f"constructor arguments of {call.module or '<root>'} were not recorded; "
                "use a factory candidate"
            )
        # built on the device: its initial values are overwritten at once, and building on
        # the host would copy the recorded weights there and back on every call
        with torch.device(device):
            module = candidate(*args, **kwargs)
        module.load_state_dict(weights, strict=True)
        module.to(device)
        module.train(call.training)
        return BuiltCandidate(module, dict(module.named_parameters()))
    params = {}
    for name, t in weights.items():
        if t.is_floating_point() and name in parameter_names(reader, call.module):
            t.requires_grad_(True)
            params[name] = t
    spec = CandidateSpec(call.module, call.type, args, kwargs, weights, device, call.training)
    fn = candidate(spec)
    if not callable(fn):
        raise TypeError(f"factory {candidate!r} returned {type(fn).__name__}, not a callable")
    if isinstance(fn, nn.Module):
        fn.train(call.training)
    return BuiltCandidate(fn, params)


def parameter_names(reader: tracefmt.TraceReader, path: str) -> set[str]:
    """State-dict names (relative to ``path``) of the parameters of the module at ``path``."""
    prefix = f"{path}." if path else ""
    names = set()
    for m in reader.modules:
        if m.path == path or m.path.startswith(prefix):
            rel = m.path[len(prefix) :] if m.path != path else ""
            names.update(f"{rel}.{p}" if rel else p for p in m.params)
    return names
