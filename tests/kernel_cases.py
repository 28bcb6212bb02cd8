"""Shared set-up of the kernel tests: Triton's interpreter on CPU-only machines, routings, tolerances.

Imported first by every Triton test module. Triton reads `TRITON_INTERPRET` when a function is decorated with
`@triton.jit`, its own standard library included, and in a full `pytest` run Triton is already imported by then
(`torch._dynamo` imports it, and transformers imports that). So on a machine without a GPU we set the variable and,
if Triton was loaded without it, load Triton's Python modules (and our kernel modules) afresh so that they are
decorated for the interpreter. With a GPU nothing changes and the tests run the compiled kernels.
"""

import os
import sys

import torch


def _use_triton_interpreter() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    schedule = sys.modules.get("jetmoe_kernels.schedule")
    if schedule is not None:  # our host code reads the variable once: read it again
        schedule.interpreting.cache_clear()
    language = sys.modules.get("triton.language")
    if language is None:
        return  # Triton not loaded yet: it will read the variable when it is
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(language.cdiv, InterpretedFunction):
        return
    stale = [name for name in sys.modules if name == "triton" or name.startswith("triton.")]
    stale = [name for name in stale if not name.startswith("triton._C")]  # the compiled extension stays
    ours = [name for name in sys.modules if name.startswith("jetmoe_kernels.")]
    stale += [name for name in ours if hasattr(sys.modules[name], "tl")]
    stale.append("jetmoe_kernels.triton_backend")
    for name in stale:
        sys.modules.pop(name, None)


if not torch.cuda.is_available():
    _use_triton_interpreter()

import jetmoe_kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
# ‖actual - expected‖ / ‖expected‖: float32 sums in another order; bf16 rounds every stored tensor.
REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
ROUTINGS = ["random", "skewed", "one_expert", "empty_expert"]
# Every routing in float32 (tight), the two extremes in bf16 (loose): the interpreter is slow, CI time is short.
CASES = [(kind, torch.float32) for kind in ROUTINGS] + [(kind, torch.bfloat16) for kind in ("random", "one_expert")]
CASE_IDS = [f"{kind}-{str(dtype).removeprefix('torch.')}" for kind, dtype in CASES]


def router_logits(kind: str, num_tokens: int, num_experts: int, seed: int = 0) -> torch.Tensor:
    """Router logits whose top-k gives the named routing pattern."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_tokens, num_experts, generator=generator)
    if kind == "skewed":  # every token's top-2 is experts {0, 1}: the others get no token
        logits[:, :2] += 20.0
    elif kind == "one_expert":  # every token's first choice is expert 2
        logits[:, 2] += 20.0
    elif kind == "empty_expert":  # expert 1 and the last expert are never chosen
        logits[:, 1] -= 20.0
        logits[:, -1] -= 20.0
    elif kind != "random":
        raise ValueError(kind)
    return logits.to(DEVICE)


def make_routing(kind: str, num_tokens: int, num_experts: int, top_k: int, dtype, seed: int = 0, grad=False):
    """`(routing, gates)`; with `grad`, the gates are a leaf so their gradient can be checked directly."""
    routing = jetmoe_kernels.route(router_logits(kind, num_tokens, num_experts, seed), top_k, dtype)
    routing.gates = routing.gates.detach().requires_grad_(grad)
    return routing, routing.gates


def randn(*shape, dtype, seed: int, scale: float = 1.0, grad: bool = True) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tensor = (torch.randn(*shape, generator=generator) * scale).to(device=DEVICE, dtype=dtype)
    return tensor.requires_grad_(grad)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype, name: str = "", factor: float = 1.0):
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    actual, expected = actual.double(), expected.double()
    error = (actual - expected).norm() / expected.norm().clamp_min(1e-12)
    assert error <= REL_TOL[dtype] * factor, f"{name}: relative error {error:.2e} > {REL_TOL[dtype] * factor:.0e}"


def grads(output: torch.Tensor, inputs, seed: int = 7):
    """Gradients of `<output, random>` with respect to `inputs` (a random cotangent checks every element)."""
    cotangent = randn(*output.shape, dtype=output.dtype, seed=seed, grad=False)
    return torch.autograd.grad(output, inputs, cotangent)
