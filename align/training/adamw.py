"""transformers' default optimizer (`optim: adamw_torch_fused`) with its update made by `jetmoe_kernels.adamw` on a
GPU: the same arithmetic and state as `torch.optim.AdamW(fused=True)`, and ~12% less memory traffic (PyTorch's
kernel also writes each gradient back when given a gradient scale, which our clipping gives it).

`TritonAdamW` is that `torch.optim.AdamW`: its state (`step`, `exp_avg`, `exp_avg_sq`) is made by torch's own code
and saved as torch saves it, so checkpoints load in either; its step runs torch's where the kernel does not apply
(parameters off the GPU, AMSGrad, `maximize`, a tensor learning rate). DeepSpeed and FSDP runs keep their own.
"""

import torch
from torch.optim.adamw import adamw as torch_adamw
from transformers import Trainer

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_runs_on(tensor: torch.Tensor) -> bool:
    """Where the Triton kernel updates: CUDA devices (the tests add Triton's CPU interpreter)."""
    return tensor.is_cuda


def kernel_update(*args) -> None:
    """`jetmoe_kernels.adamw.adamw_update_`, Triton loaded only where it runs (as `jetmoe_kernels` loads it)."""
    from jetmoe_kernels.adamw import adamw_update_

    adamw_update_(*args)


class TritonAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW(fused=True)` whose update runs one Triton kernel per large parameter. Each launch costs
    the host tens of microseconds: parameters under `kernel_min_elements` (LoRA's adapters, norms, routers), whose
    update is short anyway, go to torch's fused kernel together, in a few launches."""

    kernel_min_elements = 1 << 23  # 8M: ~28 us of the update's memory traffic in bf16 on an H200

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._host_steps = {}  # parameter -> (its `step` tensor, that count on the host): bias corrections need it

    @torch.no_grad()
    def step(self, closure=None):
        if not self._kernel_applies():
            self._host_steps.clear()  # torch's step moves the counts on without us
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)  # where torch's AdamW reads it (mixed precision, clipping)
        for group in self.param_groups:
            lists = [], [], [], [], []  # params, grads, exp_avgs, exp_avg_sqs, steps
            self._init_group(group, *lists[:4], [], lists[4])
            is_large = [param.numel() >= self.kernel_min_elements for param in lists[0]]
            small = [[x for x, keep in zip(values, is_large) if not keep] for values in lists]
            large = [[x for x, keep in zip(values, is_large) if keep] for values in lists]
            beta1, beta2 = group["betas"]
            if small[0]:
                torch_adamw(*small[:4], [], small[4], fused=True, grad_scale=grad_scale, amsgrad=False, beta1=beta1,
                            beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                            maximize=False)  # fmt: skip
            if not large[0]:
                continue
            params, grads, exp_avgs, exp_avg_sqs, steps = large
            counts = self._step_counts(params, steps)
            torch._foreach_add_(steps, 1)  # the state's counts, as torch keeps them
            for param, grad, exp_avg, exp_avg_sq, count in zip(params, grads, exp_avgs, exp_avg_sqs, counts):
                kernel_update(param, grad, exp_avg, exp_avg_sq, count, group["lr"], beta1, beta2, group["eps"],
                              group["weight_decay"], grad_scale)  # fmt: skip
        return loss

    def _step_counts(self, params, steps) -> list[int]:
        """Each parameter's update count after this step, counted on the host; read from the state once (one
        device sync) where the host does not know it: the first step, and after a checkpoint's state is loaded."""
        unknown = [(param, step) for param, step in zip(params, steps)
                   if self._host_steps.get(param, (None,))[0] is not step]  # fmt: skip
        if unknown:
            read = torch.stack([step for _, step in unknown]).tolist()
            self._host_steps.update((param, (step, int(count))) for (param, step), count in zip(unknown, read))
        counts = []
        for param in params:
            step, count = self._host_steps[param]
            self._host_steps[param] = step, count + 1
            counts.append(count + 1)
        return counts

    def _kernel_applies(self) -> bool:
        for group in self.param_groups:
            if (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]
                    or isinstance(group["lr"], torch.Tensor)):  # fmt: skip
                return False
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                if not kernel_runs_on(param) or param.dtype not in KERNEL_DTYPES:
                    return False
                if grad.dtype != param.dtype or not (param.is_contiguous() and grad.is_contiguous()):
                    return False
        return True


class TritonAdamWMixin:
    """Mix in before a transformers `Trainer`: `adamw_torch_fused` builds a `TritonAdamW`."""

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        if optimizer_cls is torch.optim.AdamW and kwargs.get("fused") and not (args.deepspeed or args.fsdp):
            return TritonAdamW, kwargs
        return optimizer_cls, kwargs
