"""Buggy attention: applies ``key_padding_mask`` the wrong way round.

The mask is True at padding; this candidate masks where it is False, so queries attend only
to padding keys, and rows with no padding at all (batch element 0 always has a full-length
source) are entirely -inf and come out NaN. The causal mask is handled correctly.

Where a replay must catch it: the FORWARD of the first attention call,
``encoder.layers.0.self_attn`` (keyed on the recipe class ``translation.MultiHeadAttention``,
so all six attention modules are replaced).
"""

import math

import torch
from torch import Tensor, nn


class InvertedMaskAttention(nn.Module):
    """``translation.MultiHeadAttention``'s signature and parameter names; inverted mask."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        q, k, v = (
            self._split(self.q_proj(query)),
            self._split(self.k_proj(key)),
            self._split(self.v_proj(value)),
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        if causal:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = self.drop(torch.softmax(scores, dim=-1))
        return self.out_proj((weights @ v).transpose(1, 2).flatten(2))


CANDIDATES: dict[str, object] = {"translation.MultiHeadAttention": InvertedMaskAttention}
