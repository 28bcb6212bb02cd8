"""Fused RMSNorm, forward and backward, with the semantics of `jetmoe_model.layers.RMSNorm`.

`y = weight * (x32 * rsqrt(mean(x32^2) + eps)).to(x.dtype)` with `x32 = x.float()`. Unfused, PyTorch runs it as
about seven kernels forward and more backward, each a pass over a float32 copy of the activations; a profile of the
JetMoE-8B training step put such glue at a third of the step (docs/benchmarks.md). Here: one pass forward, one
backward (plus a small sum of per-program weight-gradient partials).
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch
from .schedule import cdiv, interpreting, next_power_of_2


@quick_launch
@triton.jit
def _rmsnorm_fwd_kernel(X, W, Y, RSTD, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    normed = (x * rstd).to(X.dtype.element_ty).to(tl.float32)  # rounded to x's dtype, as the reference does
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * N + cols, (w * normed).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@quick_launch
@triton.jit(do_not_specialize=["M", "rows_per_program"])  # batch-dependent sizes: no recompiles as they change
def _rmsnorm_bwd_kernel(X, W, DY, DX, RSTD, DW_PARTIAL, M, N, rows_per_program, BLOCK_N: tl.constexpr):
    """Each program takes a run of rows: their input gradients, and the sum of their weight gradients."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    first = pid * rows_per_program
    for row in range(first, tl.minimum(first + rows_per_program, M)):
        offs = row * N + cols  # int32: the launcher checks rows * N < 2**31
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        x_hat = x * rstd
        dw += dy * x_hat.to(X.dtype.element_ty).to(tl.float32)
        dn = dy * w
        dx = rstd * (dn - x_hat * (tl.sum(dn * x_hat, axis=0) / N))
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_PARTIAL + pid.to(tl.int64) * N + cols, dw, mask=mask)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        rows, n = x2.shape
        y = torch.empty(rows, n, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
        rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
        _rmsnorm_fwd_kernel[(rows,)](x2, weight, y, rstd, n, eps, BLOCK_N=next_power_of_2(n))
        ctx.save_for_backward(x2, weight, rstd)
        ctx.shape = shape
        return y.view(*shape[:-1], n)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        rows, n = x2.shape
        dy = dy.reshape(rows, n).contiguous()
        dx = torch.empty_like(x2)
        assert rows * n < 2**31, "row offsets are int32 in the backward kernel"
        sms = 1 if interpreting() else torch.cuda.get_device_properties(x2.device).multi_processor_count
        programs = min(rows, 4 * sms)
        per_program = cdiv(rows, programs)
        programs = cdiv(rows, per_program)
        partial = torch.empty(programs, n, device=x2.device, dtype=torch.float32)
        _rmsnorm_bwd_kernel[(programs,)](
            x2, weight, dy, dx, rstd, partial, rows, n, per_program, BLOCK_N=next_power_of_2(n)
        )
        return dx.view(ctx.shape), partial.sum(0).to(weight.dtype), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return RMSNormFunction.apply(x, weight, eps)
