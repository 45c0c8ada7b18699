"""Buggy softmax: exp(x) / sum(exp(x)) in float16, without subtracting the row maximum.

float16 overflows once exp(x) > 65504, i.e. for logits above about 11.1 (or sums of a few
logits near 9), giving inf and then NaN; below that it loses precision (10 bits of
mantissa).

Where a replay must catch it on this model: the FORWARD of the first attention softmax,
``encoder.layers.0.self_attn.softmax``. On the freshly built model the attention logits stay
below about 1.5, so nothing overflows; the divergence there is float16 rounding, a max abs
error of about 4e-4 on the attention weights, far beyond float32 tolerance. Logits grow with
training: after about 300 steps ``decoder.layers.1.cross_attn.softmax`` sees logits near 13
and returns inf/NaN. Any logits above 11.1 overflow outright.
"""

import torch
from torch import Tensor, nn


class NoMaxHalfSoftmax(nn.Module):
    """nn.Softmax's signature; unshifted exponentials accumulated in float16."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        dim = (0 if x.dim() in (0, 1, 3) else 1) if self.dim is None else self.dim
        e = torch.exp(x.to(torch.float16))
        return (e / e.sum(dim, keepdim=True)).to(x.dtype)


CANDIDATES: dict[str, object] = {"torch.nn.Softmax": NoMaxHalfSoftmax}
