"""Buggy softmax: the forward is right, the backward only fills batch element 0.

Models a backward kernel launched over the rows of the first batch element only (a grid
sized from ``shape[1:]`` instead of the whole tensor): element 0 gets the exact softmax
gradient, every other batch element gets zeros.

Where a replay must catch it: every attention softmax (``*.self_attn.softmax`` and
``*.cross_attn.softmax``), in the BACKWARD phase only. Forward outputs match the reference
bitwise; the input gradient matches for batch element 0 and is zero, hence wrong, for every
other element of the batch (1..31). In forward call order the first diverging layer is
``encoder.layers.0.self_attn.softmax``; in backward execution order it is
``decoder.layers.1.cross_attn.softmax``. Spliced into training, the attention query/key
projections learn from one sequence in 32: after 100 steps the loss stalls near 2.5 while
the reference reaches about 1.9.
"""

from typing import Any

import torch
from torch import Tensor, nn


class _Batch0GradSoftmax(torch.autograd.Function):
    """Correct softmax forward; backward computed for ``grad[0]`` and left zero elsewhere."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int) -> Tensor:
        y = torch.softmax(x, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        grad_in = torch.zeros_like(grad_out)
        y0, g0 = y[:1], grad_out[:1]
        grad_in[:1] = y0 * (g0 - (g0 * y0).sum(ctx.dim, keepdim=True))
        return grad_in, None


class Batch0GradSoftmax(nn.Module):
    """nn.Softmax's signature around the buggy autograd function."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        dim = (0 if x.dim() in (0, 1, 3) else 1) if self.dim is None else self.dim
        return _Batch0GradSoftmax.apply(x, dim)


CANDIDATES: dict[str, object] = {"torch.nn.Softmax": Batch0GradSoftmax}
