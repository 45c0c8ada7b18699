"""Buggy Linear: multiplies by ``weight`` instead of ``weight.T``.

The bug only runs without a shape error when the weight is square, so it is keyed by a path
glob over the self-attention query projections (32 x 32), not by the Linear class.

Where a replay must catch it: the FORWARD of ``encoder.layers.0.self_attn.q_proj``, the
first call matching ``*.self_attn.q_proj``; every other Linear is left to the reference.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class TransposedWeightLinear(nn.Module):
    """nn.Linear's signature and parameter names; computes x @ W + b."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        nn.init.normal_(self.weight, std=in_features**-0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.t(), self.bias)


CANDIDATES: dict[str, object] = {"*.self_attn.q_proj": TransposedWeightLinear}
