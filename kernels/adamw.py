"""One AdamW update of a parameter in one pass: read the parameter, its gradient and both moments once, write the
parameter and the moments once, in float32 arithmetic whatever the stored dtype.

PyTorch's fused AdamW (`torch._fused_adamw_`, what `adamw_torch_fused` runs) does the same arithmetic, and with a
gradient scale (how `align.training.clipping` clips) it also writes each unscaled gradient back: 16 bytes moved per
bfloat16 parameter, where the update needs 14. In full fine-tuning of 12 JetMoE-8B layers on an H200 its kernels
took 25 ms of a ~195 ms DPO step, ~2.4 TB/s. Here the gradient is only read.

The oracle is `torch.optim.AdamW` itself (`tests/test_kernels_adamw.py`).
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch
from .schedule import cdiv, interpreting


@quick_launch
@triton.jit  # N specialised (on divisibility by 16): the mask then holds per vector, and loads are vectorised
def _adamw_kernel(P, G, M, V, GRAD_SCALE, N, decay, beta1, beta2, step_size, bias_correction2_sqrt, eps,
                  HAS_GRAD_SCALE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < N
    param = tl.load(P + offsets, mask=mask).to(tl.float32)
    grad = tl.load(G + offsets, mask=mask).to(tl.float32)
    if HAS_GRAD_SCALE:
        grad = grad / tl.load(GRAD_SCALE)
    exp_avg = tl.load(M + offsets, mask=mask).to(tl.float32)
    exp_avg_sq = tl.load(V + offsets, mask=mask).to(tl.float32)
    param = param - decay * param
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    param = param - step_size * exp_avg / (tl.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps)
    tl.store(P + offsets, param.to(P.dtype.element_ty), mask=mask)
    tl.store(M + offsets, exp_avg.to(M.dtype.element_ty), mask=mask)
    tl.store(V + offsets, exp_avg_sq.to(V.dtype.element_ty), mask=mask)


def adamw_update_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                  step: int, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  grad_scale: torch.Tensor | None = None) -> None:  # fmt: skip
    """AdamW's `step`-th update (counting from 1) of `param` and its moments, in place, as `torch.optim.AdamW`
    makes it (decoupled weight decay, bias-corrected moments); `grad` is divided by `grad_scale` (a float32 scalar
    on the device) as it is read. All four tensors contiguous, of one size; the bias corrections in double
    precision on the host, as PyTorch's fused kernel computes them."""
    n = param.numel()
    if not n:
        return
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    block = 1024 if interpreting() else 4096
    _adamw_kernel[(cdiv(n, block),)](
        param, grad, exp_avg, exp_avg_sq, grad_scale, n, lr * weight_decay, beta1, beta2, lr / bias_correction1,
        bias_correction2_sqrt, eps, HAS_GRAD_SCALE=grad_scale is not None, BLOCK=block, num_warps=8,
    )  # fmt: skip
