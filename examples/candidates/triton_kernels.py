"""Triton candidates for LayerNorm and Softmax, forward and backward as hand-written kernels.

Each kernel handles a tile of rows (the reduced axis moved last and flattened), computing in
float32. On CUDA the kernels are compiled; without a GPU this file sets TRITON_INTERPRET=1
before importing triton so they run, slowly, in Triton's CPU interpreter (that only works if
triton was not imported earlier in the process). A replay against this file must report no
divergence beyond float32 rounding. Where the kernels cannot run (no triton, or interpreter
mode missed) the file still imports: CANDIDATES is empty and UNAVAILABLE says why.
"""

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_problem() -> str | None:
    """Why the kernels cannot run here even though triton imports, or None if they can.

    The interpreter only works if TRITON_INTERPRET=1 was set before triton was first imported
    (triton's own helpers such as tl.sum are decorated then); creating a torch optimizer
    imports triton, so a process that trains before loading this file can miss it.
    """
    if torch.cuda.is_available():
        return None
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return None
    if isinstance(tl.sum, InterpretedFunction):
        return None
    return (
        "no CUDA device, and triton was imported before TRITON_INTERPRET=1 was set; "
        "export TRITON_INTERPRET=1 before starting Python"
    )


try:
    import triton
    import triton.language as tl
except ImportError as exc:

    class _Absent:
        """Stands in for triton so the kernels below still define; nothing launches them."""

        constexpr = int

        @staticmethod
        def jit(fn: Any) -> Any:
            return fn

    triton = tl = _Absent()  # type: ignore[assignment]
    _MISSING: str | None = f"triton is not importable ({exc}); `pip install triton`"
else:
    _MISSING = _interpreter_problem()
if _MISSING:
    UNAVAILABLE = _MISSING

MAX_ROWS_PER_TILE = 64
TILE_ELEMENTS = 4096


@triton.jit
def _softmax_fwd_kernel(x_ptr, y_ptr, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offsets = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x = tl.where(cols[None, :] < n_cols, x, -float("inf"))  # rows past the end stay finite
    num = tl.exp(x - tl.max(x, axis=1)[:, None])
    tl.store(y_ptr + offsets, num / tl.sum(num, axis=1)[:, None], mask=mask)


@triton.jit
def _softmax_bwd_kernel(
    y_ptr, dy_ptr, dx_ptr, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offsets = rows[:, None] * n_cols + cols[None, :]
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dx = y * (dy - tl.sum(y * dy, axis=1)[:, None])
    tl.store(dx_ptr + offsets, dx, mask=mask)


@triton.jit
def _layernorm_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    n_rows,
    n_cols,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / n_cols
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / n_cols + eps)
    y = centred * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offsets, y, mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_ok)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _layernorm_bwd_kernel(
    x_ptr,
    dy_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dw_rows_ptr,
    n_rows,
    n_cols,
    HAS_WEIGHT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dx per row; per-row dw terms (dy * xhat) go to a buffer that a column sum reduces."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    wdy = dy
    if HAS_WEIGHT:
        wdy = dy * tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    c1 = tl.sum(xhat * wdy, axis=1) / n_cols
    c2 = tl.sum(wdy, axis=1) / n_cols
    dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
    tl.store(dx_ptr + offsets, dx, mask=mask)
    tl.store(dw_rows_ptr + offsets, dy * xhat, mask=mask)


@triton.jit
def _column_sum_kernel(
    src_ptr, out_ptr, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < n_cols
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, n_rows, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        mask = (rows[:, None] < n_rows) & col_ok[None, :]
        tile = tl.load(src_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
        acc += tl.sum(tile.to(tl.float32), axis=0)
    tl.store(out_ptr + cols, acc, mask=col_ok)


def _tiling(n_rows: int, n_cols: int) -> tuple[tuple[int], dict[str, int]]:
    """Grid and tile shape: whole rows per tile, as many as fit in TILE_ELEMENTS (at least 1)."""
    block_c = triton.next_power_of_2(n_cols)
    block_r = max(1, min(MAX_ROWS_PER_TILE, TILE_ELEMENTS // block_c))
    return (triton.cdiv(n_rows, block_r),), {"BLOCK_R": block_r, "BLOCK_C": block_c}


def _column_sum(rows: Tensor, dtype: torch.dtype) -> Tensor:
    """Sum a (n_rows, n_cols) float32 buffer over rows with the Triton reduction kernel."""
    n_rows, n_cols = rows.shape
    out = torch.empty(n_cols, dtype=torch.float32, device=rows.device)
    block_c = min(triton.next_power_of_2(n_cols), 128)
    _column_sum_kernel[(triton.cdiv(n_cols, block_c),)](
        rows, out, n_rows, n_cols, BLOCK_R=MAX_ROWS_PER_TILE, BLOCK_C=block_c
    )
    return out.to(dtype)


class _SoftmaxFunction(torch.autograd.Function):
    """Softmax over ``dim``: that axis is moved last so each kernel row is one distribution."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int) -> Tensor:
        x_rows = x.movedim(dim, -1).contiguous()
        y_rows = torch.empty_like(x_rows)
        n_cols = x_rows.shape[-1]
        n_rows = x_rows.numel() // n_cols if n_cols else 0
        if n_rows:
            grid, tile = _tiling(n_rows, n_cols)
            _softmax_fwd_kernel[grid](x_rows, y_rows, n_rows, n_cols, **tile)
        ctx.save_for_backward(y_rows)
        ctx.dim = dim
        return y_rows.movedim(-1, dim)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (y_rows,) = ctx.saved_tensors
        dy_rows = grad_out.movedim(ctx.dim, -1).contiguous()
        dx_rows = torch.empty_like(y_rows)
        n_cols = y_rows.shape[-1]
        n_rows = y_rows.numel() // n_cols if n_cols else 0
        if n_rows:
            grid, tile = _tiling(n_rows, n_cols)
            _softmax_bwd_kernel[grid](y_rows, dy_rows, dx_rows, n_rows, n_cols, **tile)
        return dx_rows.movedim(-1, ctx.dim), None


class _LayerNormFunction(torch.autograd.Function):
    """LayerNorm over the trailing ``n_cols`` elements; saves per-row mean and 1/std."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, n_cols: int, eps: float
    ) -> Tensor:
        x_rows = x.reshape(-1, n_cols).contiguous()
        n_rows = x_rows.shape[0]
        y_rows = torch.empty_like(x_rows)
        mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        if n_rows:
            grid, tile = _tiling(n_rows, n_cols)
            _layernorm_fwd_kernel[grid](
                x_rows,
                x_rows if weight is None else weight.contiguous(),
                x_rows if bias is None else bias.contiguous(),
                y_rows,
                mean,
                rstd,
                n_rows,
                n_cols,
                eps,
                HAS_WEIGHT=weight is not None,
                HAS_BIAS=bias is not None,
                **tile,
            )
        ctx.save_for_backward(x_rows, weight, mean, rstd)
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return y_rows.view(x.shape)

    @staticmethod
    def backward(
        ctx: Any, grad_out: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None, None, None]:
        x_rows, weight, mean, rstd = ctx.saved_tensors
        n_rows, n_cols = x_rows.shape
        dy_rows = grad_out.reshape(n_rows, n_cols).contiguous()
        dx_rows = torch.empty_like(x_rows)
        dw_rows = torch.empty(n_rows, n_cols, dtype=torch.float32, device=x_rows.device)
        if n_rows:
            grid, tile = _tiling(n_rows, n_cols)
            _layernorm_bwd_kernel[grid](
                x_rows,
                dy_rows,
                x_rows if weight is None else weight.contiguous(),
                mean,
                rstd,
                dx_rows,
                dw_rows,
                n_rows,
                n_cols,
                HAS_WEIGHT=weight is not None,
                **tile,
            )
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = _column_sum(dw_rows, weight.dtype).view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = _column_sum(dy_rows, weight.dtype).view(weight.shape)
        return dx_rows.view(ctx.x_shape), grad_weight, grad_bias, None, None


class TritonSoftmax(nn.Module):
    """nn.Softmax's signature, backed by the Triton forward and backward kernels."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 0:
            return self(x.reshape(1)).reshape(())
        dim = (0 if x.dim() in (1, 3) else 1) if self.dim is None else self.dim
        return _SoftmaxFunction.apply(x, dim % x.dim())


class TritonLayerNorm(nn.Module):
    """nn.LayerNorm's signature and parameter names, backed by the Triton kernels."""

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
        if tuple(x.shape[x.dim() - len(self.normalized_shape) :]) != self.normalized_shape:
            raise ValueError(f"input {tuple(x.shape)} does not end in {self.normalized_shape}")
        n_cols = 1
        for size in self.normalized_shape:
            n_cols *= size
        return _LayerNormFunction.apply(x, self.weight, self.bias, n_cols, self.eps)


CANDIDATES: dict[str, object] = (
    {} if _MISSING else {"torch.nn.LayerNorm": TritonLayerNorm, "torch.nn.Softmax": TritonSoftmax}
)
