"""The benchmark model: a pre-norm transformer built from plain torch.nn leaves.

Every concept is its own module and every leaf is a torch.nn built-in (Embedding, Linear,
LayerNorm, Softmax, Dropout, GELU), so the recorder sees realistic call trees and the replay
benchmark can map each leaf class to itself. ``n_enc == 0`` gives a decoder-only LM (no
cross-attention); otherwise an encoder/decoder. One training step is forward, cross-entropy
loss and backward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["BenchConfig", "SIZES", "BenchTransformer", "build", "make_batch", "train_step",
           "describe", "leaf_classes"]


@dataclass(frozen=True)
class BenchConfig:
    """Model and batch shape; ``n_enc == 0`` means decoder-only."""

    vocab: int
    d_model: int
    n_heads: int
    d_ff: int
    n_enc: int
    n_dec: int
    batch: int
    seq: int
    dropout: float = 0.1


# tiny: a smoke test; small: the CPU default (about 1 s a step on 2 cores); medium: the GPU model's shape at a
# CPU-sized batch; gpu: the issue's reference step (12 layers, d=512, 32x128, vocab 16k);
# skeleton: the gpu model's 211 module calls at toy width, so a step is the recorder's per-call
# Python cost with next to no compute.
SIZES: dict[str, BenchConfig] = {
    "tiny": BenchConfig(vocab=512, d_model=64, n_heads=4, d_ff=128, n_enc=1, n_dec=1,
                        batch=4, seq=16),
    "small": BenchConfig(vocab=8000, d_model=256, n_heads=4, d_ff=1024, n_enc=4, n_dec=4,
                         batch=16, seq=64),
    "medium": BenchConfig(vocab=16000, d_model=512, n_heads=8, d_ff=2048, n_enc=0, n_dec=12,
                          batch=4, seq=128),
    "gpu": BenchConfig(vocab=16000, d_model=512, n_heads=8, d_ff=2048, n_enc=0, n_dec=12,
                       batch=32, seq=128),
    "skeleton": BenchConfig(vocab=64, d_model=16, n_heads=4, d_ff=32, n_enc=0, n_dec=12,
                            batch=2, seq=8),
}


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with the softmax as its own module, as ports swap it."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.softmax = nn.Softmax(dim=-1)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, query: Tensor, memory: Tensor, *, causal: bool = False) -> Tensor:
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(memory))
        v = self._split(self.v_proj(memory))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        if causal:
            n_q, n_k = scores.shape[-2:]
            future = torch.ones(n_q, n_k, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = self.drop(self.softmax(scores))
        out = (weights @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], self.d_model)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Position-wise MLP."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.d_model, self.d_ff, self.dropout = d_model, d_ff, dropout
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, *, causal: bool,
                 cross: bool) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.d_ff, self.dropout = d_model, n_heads, d_ff, dropout
        self.causal, self.cross = causal, cross
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout)
        if cross:
            self.cross_norm = nn.LayerNorm(d_model)
            self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        h = self.attn_norm(x)
        x = x + self.drop(self.attn(h, h, causal=self.causal))
        if self.cross:
            assert memory is not None
            x = x + self.drop(self.cross_attn(self.cross_norm(x), memory))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class Embed(nn.Module):
    """Token plus learned position embeddings."""

    def __init__(self, vocab: int, d_model: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.vocab, self.d_model, self.max_len, self.dropout = vocab, d_model, max_len, dropout
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.drop(self.tok(tokens) * math.sqrt(self.d_model) + self.pos(positions))


class BenchTransformer(nn.Module):
    """Encoder/decoder (``n_enc > 0``) or decoder-only LM returning vocabulary logits."""

    def __init__(self, cfg: BenchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, ff, p = cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.dropout
        cross = cfg.n_enc > 0
        if cross:
            self.src_embed = Embed(cfg.vocab, d, cfg.seq, p)
            self.encoder = nn.ModuleList(
                Block(d, h, ff, p, causal=False, cross=False) for _ in range(cfg.n_enc))
            self.enc_norm = nn.LayerNorm(d)
        self.tgt_embed = Embed(cfg.vocab, d, cfg.seq, p)
        self.decoder = nn.ModuleList(
            Block(d, h, ff, p, causal=True, cross=cross) for _ in range(cfg.n_dec))
        self.dec_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab)

    def forward(self, src: Tensor | None, tgt: Tensor) -> Tensor:
        memory = None
        if self.cfg.n_enc:
            assert src is not None
            memory = self.src_embed(src)
            for block in self.encoder:
                memory = block(memory)
            memory = self.enc_norm(memory)
        x = self.tgt_embed(tgt)
        for block in self.decoder:
            x = block(x, memory)
        return self.head(self.dec_norm(x))


def build(cfg: BenchConfig, device: str | torch.device = "cpu", seed: int = 0) -> BenchTransformer:
    """The model in training mode, seeded so every benchmark process builds the same weights."""
    torch.manual_seed(seed)
    return BenchTransformer(cfg).to(device).train()


def make_batch(cfg: BenchConfig, device: str | torch.device = "cpu",
               seed: int = 1) -> tuple[Tensor | None, Tensor, Tensor]:
    """Random (src, tgt_in, tgt_out) token batches; src is None for a decoder-only model."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), generator=g) if cfg.n_enc else None
    tgt = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq + 1), generator=g)
    dev = torch.device(device)
    return (None if src is None else src.to(dev)), tgt[:, :-1].to(dev), tgt[:, 1:].to(dev)


def loss_of(model: nn.Module, batch: tuple[Tensor | None, Tensor, Tensor]) -> Tensor:
    """Forward and cross-entropy, the part a forward-only tool sees."""
    src, tgt_in, tgt_out = batch
    logits = model(src, tgt_in)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1))


def train_step(model: nn.Module, batch: tuple[Tensor | None, Tensor, Tensor]) -> float:
    """One training step: zero grads, forward, loss, backward. Returns the loss."""
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, batch)
    loss.backward()
    return float(loss.detach())


def leaf_classes(model: nn.Module) -> list[type[nn.Module]]:
    """The distinct classes of the model's leaf modules, in first-seen order."""
    out: list[type[nn.Module]] = []
    for m in model.modules():
        if not any(True for _ in m.children()) and type(m) not in out:
            out.append(type(m))
    return out


def describe(cfg: BenchConfig, model: nn.Module | None = None) -> str:
    """One line naming the model's shape and parameter count."""
    kind = f"enc/dec {cfg.n_enc}+{cfg.n_dec}" if cfg.n_enc else f"decoder-only {cfg.n_dec}"
    n = sum(p.numel() for p in (model or BenchTransformer(cfg)).parameters())
    fields = asdict(cfg)
    return (f"{kind} layers, d={fields['d_model']}, heads={fields['n_heads']}, "
            f"ff={fields['d_ff']}, vocab={fields['vocab']}, batch {cfg.batch}x{cfg.seq}, "
            f"dropout {cfg.dropout}, {n / 1e6:.1f}M params")
