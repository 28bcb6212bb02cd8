"""`jetmoe_kernels.launching`: the key under which a compiled kernel is launched again must change whenever
Triton would compile another variant (else a call would run a kernel specialised for other arguments). The launch
itself needs a GPU (the kernel tests run through it there); the key is plain Python, checked here against the
kernel parameters Triton reports."""

import kernel_cases  # noqa: F401  (Triton's interpreter on CPU machines, set before Triton loads)
import torch
import triton
import triton.language as tl

from jetmoe_kernels import launching
from jetmoe_kernels.launching import QuickLaunch


def _kernel(X, Y, n, m, scale, BLOCK: tl.constexpr):
    pass


def quick(monkeypatch) -> QuickLaunch:
    """A `QuickLaunch` of a compiled-mode `@triton.jit` kernel (`m` not specialised), interpreter or not."""
    monkeypatch.setattr(launching, "interpreting", lambda: False)
    kernel = triton.runtime.jit.JITFunction(_kernel, do_not_specialize=["m"])
    return QuickLaunch(kernel)


def key(launcher, x, y, n=64, m=5, scale=1.0, block=16, **options):
    return launcher.key((x, y, n, m, scale), {"BLOCK": block, **options}, 0)[0]


def test_the_key_changes_with_what_triton_specialises_on(monkeypatch):
    launcher = quick(monkeypatch)
    x, y = torch.zeros(64), torch.zeros(64)
    base = key(launcher, x, y)
    assert base is not None
    assert key(launcher, torch.ones(64), torch.ones(64), m=7, scale=2.0) == base  # values, not variants
    assert key(launcher, torch.nn.Parameter(x), y) == base  # a parameter is keyed as its tensor
    changed = [
        key(launcher, x.double(), y),  # dtype
        key(launcher, torch.zeros(65)[1:], y),  # 4-byte offset: not 16-byte aligned
        key(launcher, x, y, n=65),  # a specialised integer
        key(launcher, x, y, m=2**31),  # past 32 bits, even unspecialised
        key(launcher, x, y, block=32),  # a constexpr
        key(launcher, x, y, num_warps=8),  # a launch option
    ]
    assert None not in changed and len({base, *changed}) == len(changed) + 1


def test_calls_it_cannot_key_take_tritons_path(monkeypatch):
    launcher = quick(monkeypatch)
    x = torch.zeros(8)
    assert launcher.key((x, x, 8, 8, 1.0), {}, 0)[0] is None  # BLOCK missing: Triton's own error
    assert key(launcher, x, [1, 2]) is None  # an argument of a kind the key does not know
