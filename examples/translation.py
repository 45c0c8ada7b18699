"""Recipe: a small pre-norm encoder/decoder transformer learning a toy translation on CPU.

Task: reverse the source and map each content token through a fixed bijection, so padding
and causal masks both matter. Each concept is its own ``nn.Module`` with plain constructor
arguments kept under the same attribute names, so a replayer can rebuild any layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

PAD, BOS, EOS = 0, 1, 2  # special tokens; content tokens are N_SPECIAL..VOCAB_SIZE-1
N_SPECIAL = 3
VOCAB_SIZE, D_MODEL, N_HEADS, N_LAYERS, D_FF, DROPOUT = 32, 32, 4, 2, 64, 0.1
# Batch 32, not 8: at 8, 100 steps barely separate the reference from a broken attention.
BATCH_SIZE, MIN_SRC_LEN, MAX_SRC_LEN = 32, 3, 8
MAX_LEN = MAX_SRC_LEN + 2  # BOS + reversed source + EOS
SEED = 1234


def _keep_args(module: nn.Module, args: dict[str, object]) -> None:
    """Store constructor arguments under their own names so a recorder can read them back."""
    for name, value in args.items():
        if name not in ("self", "__class__"):
            setattr(module, name, value)


class TokenEmbedding(nn.Module):
    """Token lookup scaled by sqrt(d_model) so it is on the scale of the positional signal."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        with torch.no_grad():  # unit scale after the sqrt(d) factor, so blocks can steer it
            self.embedding.weight.normal_(0.0, d_model**-0.5)[PAD].zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        return self.embedding(tokens) * math.sqrt(self.d_model)


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table (a buffer, so it travels in the state dict)."""

    def __init__(self, d_model: int, max_len: int, dropout: float) -> None:
        super().__init__()
        _keep_args(self, locals())
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(1e4) / d_model))
        angles = position * freq
        self.register_buffer("pe", torch.stack([angles.sin(), angles.cos()], -1).flatten(1))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(x + self.pe[: x.size(1)])


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention; ``softmax`` is a submodule so it can be swapped alone."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.d_head = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.softmax = nn.Softmax(dim=-1)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_head).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """``key_padding_mask`` is (batch, key_len), True where the key is padding."""
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        if causal:
            future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = self.drop(self.softmax(scores))
        out = (weights @ v).transpose(1, 2).reshape(query.shape[0], query.shape[1], self.d_model)
        return self.out_proj(out)


class FeedForward(nn.Module):
    """Position-wise two-layer MLP."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, src_pad: Tensor) -> Tensor:
        h = self.self_attn_norm(x)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=src_pad))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention on the memory, feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.self_attn_norm = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.cross_attn_norm = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, *, tgt_pad: Tensor, src_pad: Tensor) -> Tensor:
        h = self.self_attn_norm(x)
        x = x + self.drop(self.self_attn(h, h, h, key_padding_mask=tgt_pad, causal=True))
        h = self.cross_attn_norm(x)
        attended = self.cross_attn(h, memory, memory, key_padding_mask=src_pad)
        x = x + self.drop(attended)
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class Encoder(nn.Module):
    """A stack of encoder layers with the final norm pre-norm blocks need."""

    def __init__(
        self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float
    ) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, *, src_pad: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, src_pad=src_pad)
        return self.norm(x)


class Decoder(nn.Module):
    """A stack of decoder layers with a final norm."""

    def __init__(
        self, n_layers: int, d_model: int, n_heads: int, d_ff: int, dropout: float
    ) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, memory: Tensor, *, tgt_pad: Tensor, src_pad: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, tgt_pad=tgt_pad, src_pad=src_pad)
        return self.norm(x)


class Generator(nn.Module):
    """Projects decoder states to log-probabilities over the vocabulary."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.proj = nn.Linear(d_model, vocab_size)
        self.log_softmax = nn.LogSoftmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.log_softmax(self.proj(x))


class TranslationModel(nn.Module):
    """Encoder/decoder; ``criterion`` is a submodule so the loss call is recorded too."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int,
        dropout: float,
        max_len: int,
    ) -> None:
        super().__init__()
        _keep_args(self, locals())
        self.src_embed = TokenEmbedding(vocab_size, d_model)
        self.tgt_embed = TokenEmbedding(vocab_size, d_model)
        self.pos_enc = PositionalEncoding(d_model, max_len, dropout)
        self.encoder = Encoder(n_layers, d_model, n_heads, d_ff, dropout)
        self.decoder = Decoder(n_layers, d_model, n_heads, d_ff, dropout)
        self.generator = Generator(d_model, vocab_size)
        self.criterion = nn.NLLLoss(ignore_index=PAD)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Log-probabilities (batch, tgt_len, vocab) of the next target token."""
        src_pad = src == PAD
        tgt_pad = tgt_in == PAD
        memory = self.encoder(self.pos_enc(self.src_embed(src)), src_pad=src_pad)
        x = self.pos_enc(self.tgt_embed(tgt_in))
        x = self.decoder(x, memory, tgt_pad=tgt_pad, src_pad=src_pad)
        return self.generator(x)


def translate_tokens(tokens: Tensor) -> Tensor:
    """The toy 'translation' of content tokens: c -> (3c + 1) mod n_content, a bijection."""
    n_content = VOCAB_SIZE - N_SPECIAL
    return ((tokens - N_SPECIAL) * 3 + 1) % n_content + N_SPECIAL


def make_batch(step: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Source (batch, MAX_SRC_LEN) and target (batch, MAX_LEN) tokens for ``step``, PAD-padded.

    The target is BOS, the reversed translated source, EOS. Element 0 always has the
    longest source and element 1 the shortest, so every batch has a fixed shape and padding.
    """
    gen = torch.Generator().manual_seed(step)
    lengths = torch.randint(MIN_SRC_LEN, MAX_SRC_LEN + 1, (BATCH_SIZE,), generator=gen)
    lengths[0], lengths[1] = MAX_SRC_LEN, MIN_SRC_LEN
    content = torch.randint(N_SPECIAL, VOCAB_SIZE, (BATCH_SIZE, MAX_SRC_LEN), generator=gen)
    src = torch.full((BATCH_SIZE, MAX_SRC_LEN), PAD, dtype=torch.long)
    tgt = torch.full((BATCH_SIZE, MAX_LEN), PAD, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        src[row, :length] = content[row, :length]
        tgt[row, 0] = BOS
        tgt[row, 1 : length + 1] = translate_tokens(content[row, :length].flip(0))
        tgt[row, length + 1] = EOS
    return src.to(device), tgt.to(device)


def build_model() -> TranslationModel:
    """The reference model, identically initialised on every call (seeds torch first)."""
    torch.manual_seed(SEED)
    return TranslationModel(VOCAB_SIZE, D_MODEL, N_HEADS, N_LAYERS, D_FF, DROPOUT, MAX_LEN)


def teacher_forced_loss(model: nn.Module, step: int) -> Tensor:
    """Teacher-forced loss on the batch of ``step``; the caller runs backward."""
    device = next(model.parameters()).device
    src, tgt = make_batch(step, device)
    log_probs = model(src, tgt[:, :-1])
    return model.criterion(log_probs.reshape(-1, log_probs.size(-1)), tgt[:, 1:].reshape(-1))


def run_step(model: nn.Module, step: int) -> Tensor:
    """The recorded step: odd steps are validation steps (eval mode, dropout off), as in a
    training loop with periodic validation, so a trace of two steps holds both modes."""
    if step % 2 == 0:
        return teacher_forced_loss(model, step)
    was_training = model.training
    model.eval()
    try:
        return teacher_forced_loss(model, step)
    finally:
        model.train(was_training)


def train(model: nn.Module, steps: int, *, lr: float = 5e-3) -> list[float]:
    """Plain Adam on steps 0..steps-1; returns the loss of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = teacher_forced_loss(model, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
