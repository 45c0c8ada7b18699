"""recorder — record a working PyTorch model into a tensortrace trace.

``with recorder.record(model, "ref.h5") as rec:`` around your own loop (``rec.step()``
between steps), or ``tensortrace record RECIPE -o ref.h5`` on the command line. Names load
on first use (PEP 562), so registering the CLI's subcommands does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "capture_constructor_args": "_ctor",
    "derive_constructor_args": "_ctor",
    "Recipe": "_recipe",
    "load_recipe": "_recipe",
    "record_recipe": "_recipe",
    "Recorder": "_recorder",
    "RecordOptions": "_recorder",
    "record": "_recorder",
    "dtype_name": "_torchio",
    "rebuild_torch": "_torchio",
    "tensor_from_trace": "_torchio",
    "torch_dtype": "_torchio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'recorder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
