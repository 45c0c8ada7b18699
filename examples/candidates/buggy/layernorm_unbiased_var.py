"""Buggy LayerNorm: divides by the unbiased variance (N - 1 denominator) instead of N.

With d_model = 32 every normalised value is scaled by sqrt(31/32), about 1.6 % too small.

Where a replay must catch it: the FORWARD of the first LayerNorm called,
``encoder.layers.0.self_attn_norm`` (then every other LayerNorm, forward and backward).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class UnbiasedVarLayerNorm(nn.Module):
    """nn.LayerNorm's signature and parameter names; the variance uses Bessel's correction."""

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        self.weight = (
            nn.Parameter(torch.ones(self.normalized_shape, **factory))
            if elementwise_affine
            else None
        )
        self.bias = (
            nn.Parameter(torch.zeros(self.normalized_shape, **factory))
            if elementwise_affine and bias
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(-len(self.normalized_shape), 0))
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, keepdim=True, correction=1)
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y


CANDIDATES: dict[str, object] = {"torch.nn.LayerNorm": UnbiasedVarLayerNorm}
