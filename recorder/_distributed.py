"""Recording under torchrun: one trace per rank, and a trace-set index written by rank 0.

``record_recipe`` calls ``start_distributed`` first: when torchrun's environment says there
is more than one process it brings the process group up *before* ``build_model()`` (so the
recipe can wrap its model in DDP or shard it with FSDP2), points this rank at its own file
``OUT.rank{R}.h5`` and, for ``--device cuda``, at ``cuda:LOCAL_RANK``. ``prepare`` then
decides what ``run_step`` gets: the DDP wrapper when there is one (its backward all-reduces
the gradients), while the recorder's hooks sit on the inner module so paths carry no
``module.`` prefix. A plain model is wrapped in DDP here; a sharded (DTensor) one is left as
it is, and ``attach`` makes the recorder store full tensors for its parameters and gradients.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import tracefmt
from tracefmt._traceset import rank_file_name, write_traceset_index

__all__ = ["DistributedRun", "launched_world", "start_distributed", "distributed_environment"]

_DDP_NAMES = ("DistributedDataParallel",)
_layout: dict[str, str | None] = {"kind": None}  # this process's layout, for the run event


def launched_world() -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` from torchrun's environment; None for one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise tracefmt.UsageError("WORLD_SIZE > 1 but RANK/LOCAL_RANK are missing or not "
                                  "integers; launch with torchrun") from None
    if not 0 <= rank < world:
        raise tracefmt.UsageError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, local, world


def distributed_environment() -> dict[str, Any]:
    """``{"distributed": {...}}`` for the run event when a process group is up, else ``{}``.

    ``layout`` is ``ddp`` or ``fsdp`` when ``record_recipe`` set the model up: the recorded
    parameter gradients are then averages over the ranks, not this rank's own.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return {}
    return {"distributed": {"rank": dist.get_rank(), "world_size": dist.get_world_size(),
                            "backend": str(dist.get_backend()), "layout": _layout["kind"]}}


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "full_tensor")


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to its full value on every rank (a collective); others unchanged."""
    return t.full_tensor().detach() if _is_dtensor(t) else t


class _FullTensorView:
    """Stands in for a sharded model where the recorder reads parameters and gradients.

    The recorder stores a STEP's parameters and a step's PARAM_GRADS from ``named_parameters``;
    for DTensor parameters it gets their gathered full values here, with the gathered
    gradient attached, so the trace holds what a single-process run would have recorded.
    Every rank iterates the same names in the same order, so the gathers line up.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = module

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in self._module.named_parameters(*args, **kwargs):
            if not _is_dtensor(p):
                yield name, p
                continue
            full = _full(p)
            if p.grad is not None:
                full.grad = _full(p.grad)
            yield name, full

    def named_buffers(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        for name, b in self._module.named_buffers(*args, **kwargs):
            yield name, _full(b)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@dataclass
class DistributedRun:
    """This process's part of a distributed recording."""

    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: str
    index_path: Path
    owns_group: bool
    sharded: bool = False

    @property
    def trace_path(self) -> Path:
        return self.index_path.with_name(rank_file_name(self.index_path, self.rank))

    def prepare(self, built: nn.Module, inner: nn.Module) -> nn.Module:
        """The module ``run_step`` gets (DDP, existing or added here); rank 0 writes the index.

        ``built`` is what ``build_model()`` returned, ``inner`` the unwrapped module the
        recorder hooks, already on this rank's device.
        """
        dev = torch.device(self.device)
        runner = built
        inner_of_compiled = getattr(built, "_orig_mod", None)
        if isinstance(inner_of_compiled, nn.Module):
            runner = inner_of_compiled
        self.sharded = any(_is_dtensor(p) for p in inner.parameters())
        if type(runner).__name__ in _DDP_NAMES:
            if runner.device_type != dev.type or (  # type: ignore[union-attr]
                    dev.type == "cuda" and runner.device_ids  # type: ignore[union-attr]
                    and runner.device_ids[0] != dev.index):  # type: ignore[union-attr,index]
                raise tracefmt.UsageError(
                    f"build_model() wrapped a model in DDP on another device than {dev}; move "
                    "it to torch.cuda.current_device() (the recorder sets LOCAL_RANK's) first")
            layout = {"kind": "ddp", "wrapped_by": "recipe"}
        elif self.sharded:
            runner = inner
            layout = {"kind": "fsdp", "placements": _placements(inner)}
        else:
            from torch.nn.parallel import DistributedDataParallel

            runner = DistributedDataParallel(
                inner, device_ids=[dev.index] if dev.type == "cuda" else None)
            layout = {"kind": "ddp", "wrapped_by": "recorder"}
        _layout["kind"] = layout["kind"]
        if self.rank == 0:
            names = [rank_file_name(self.index_path, r) for r in range(self.world_size)]
            write_traceset_index(self.index_path, rank_files=names, backend=self.backend,
                                 layout=layout)
        return runner

    def attach(self, recorder: Any) -> None:
        """Sharded models: the recorder reads full parameters and gradients (gathered)."""
        if self.sharded:
            recorder.model = _FullTensorView(recorder.model)

    def finish(self) -> None:
        """Wait until every rank's file is complete, then end the group if this run began it."""
        dist.barrier()
        _layout["kind"] = None
        if self.owns_group:
            dist.destroy_process_group()


def _placements(module: nn.Module) -> dict[str, str]:
    """DTensor parameters' placements and mesh shape, by full parameter name."""
    out = {}
    for name, p in module.named_parameters():
        if _is_dtensor(p):
            placements = ", ".join(str(x) for x in p.placements)
            out[name] = f"({placements}) on mesh {tuple(p.device_mesh.shape)}"
    return out


def start_distributed(path: str | Path, *, device: str) -> DistributedRun | None:
    """Under torchrun: the process group up and this rank's device and file; else None."""
    world = launched_world()
    if world is None:
        return None
    rank, local, size = world
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise tracefmt.UsageError("--device cuda asked for, but this torch sees no CUDA device")
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    elif dist.get_world_size() != size:
        raise tracefmt.UsageError(f"the process group has {dist.get_world_size()} ranks but "
                                  f"WORLD_SIZE is {size}")
    return DistributedRun(rank, local, size, str(dist.get_backend()), str(dev), Path(path), owns)
