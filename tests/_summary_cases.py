"""Tensors that stress a summary kernel: non-finite values, ties at the maximum, offsets, tiny
spans, narrow dtypes, every rank and rows past the 4096th. Shared by the interpreted kernel
tests and the compiled ones in ``test_cuda.py``, which must not import the former (it turns
the Triton interpreter on)."""

from __future__ import annotations

import torch


def summary_cases() -> dict[str, torch.Tensor]:
    """The cases by name, as CPU tensors built from a fixed seed."""
    g = torch.Generator().manual_seed(0)
    return {
        "randn": torch.randn(6, 50, 7, generator=g),
        "nonfinite": torch.tensor([[1.0, float("nan"), -2.0], [float("inf"), -float("inf"), 0.5]]),
        "relu-zeros": torch.relu(torch.randn(4, 300, generator=g)),
        "many-at-max": torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 1.0]]),
        "large-offset": 1e6 + torch.rand(4, 300, generator=g) / 8,
        "constant": torch.full((3, 7), -2.5),
        "subnormal-span": torch.tensor([0.0, 1e-45, 1e-45, 3e-45]),
        "bfloat16": torch.randn(5, 33, generator=g).bfloat16(),
        "float16": torch.randn(5, 33, generator=g).half(),
        "0-d": torch.tensor(3.25),
        "1-d": torch.randn(5000, generator=g),
        "rows-past-4096": torch.randn(4100, 3, generator=g),
        "long-rows": torch.randn(2, 9000, generator=g),
        "all-nan-row": torch.tensor([[float("nan"), float("nan")], [1.0, 2.0]]),
        "squares-past-float32": torch.randn(3, 400, generator=g) * 1e25,
        "causal-scores": torch.randn(3, 2, 8, 8, generator=g).masked_fill(
            torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf")),
    }
