"""Buggy softmax: an off-by-one when turning a negative ``dim`` into a positive axis.

``dim=-1`` on the (batch, heads, query, key) attention scores becomes axis 2, so the weights
are normalised over the queries instead of the keys.

Where a replay must catch it: the FORWARD of the first attention softmax,
``encoder.layers.0.self_attn.softmax``. Its rows no longer sum to 1, and the columns of
padded keys (all -inf) become NaN. Backward is wrong too, but forward diverges first.
"""

import torch
from torch import Tensor, nn


class WrongDimSoftmax(nn.Module):
    """nn.Softmax's signature; normalises over ``ndim - 1 + dim`` for negative ``dim``."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        dim = (0 if x.dim() in (0, 1, 3) else 1) if self.dim is None else self.dim
        if dim < 0:
            dim = x.dim() - 1 + dim
        return torch.softmax(x, dim)


CANDIDATES: dict[str, object] = {"torch.nn.Softmax": WrongDimSoftmax}
