"""The whole model with moe_backend="triton" against "torch" (the oracle): logits, loss and every gradient.

On CPU the Triton kernels run in Triton's interpreter (set up by `kernel_cases`), with the tiny shape of the brief.
"""

import pytest
import torch
from kernel_cases import DEVICE, assert_close

from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_key_value_heads=2, kv_channels=8,
            intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
            output_router_logits=True)  # fmt: skip


def tiny_model(dtype) -> JetMoEForCausalLM:
    torch.manual_seed(0)
    model = JetMoEForCausalLM(JetMoEConfig(**TINY, moe_backend="torch", attn_implementation="sdpa"))
    with torch.no_grad():  # random biases and norms too, so every parameter carries signal
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model.to(device=DEVICE, dtype=dtype).train()


def run(model, backend, ids):
    model.set_moe_backend(backend)
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_backend_matches_torch_backend(dtype):
    model = tiny_model(dtype)
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    logits_t, loss_t, grads_t = run(model, "torch", ids)
    logits, loss, grads = run(model, "triton", ids)

    # bf16: errors compound over two layers; Triton's interpreter also rounds bf16 stores toward zero (twice the
    # rounding error of the GPU's round-to-nearest, and biased: it accumulates in sums such as a bias gradient over
    # every token, 6.2e-2 with Triton 3.9's interpreter), and since norms and rotary are fused too, most stores are
    # ours. On a GPU the factor stays 2.
    factor = 1.0 if dtype == torch.float32 else (2.0 if torch.cuda.is_available() else 4.0)
    assert_close(logits, logits_t, dtype, "logits", factor)
    assert_close(loss, loss_t, dtype, "loss", factor)
    assert grads.keys() == grads_t.keys()
    for name, grad in grads.items():
        assert_close(grad, grads_t[name], dtype, name, factor)


def test_triton_backend_under_gradient_checkpointing():
    """Non-reentrant checkpointing (what the recipes turn on) lets each saved tensor be unpacked once: every kernel's
    backward must read its saved tensors once, and the recomputed forward give the same gradients."""
    model = tiny_model(torch.float32)
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    _, loss, grads = run(model, "triton", ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, loss_ckpt, grads_ckpt = run(model, "triton", ids)
    assert_close(loss_ckpt, loss, torch.float32, "loss")
    for name, grad in grads.items():
        assert_close(grads_ckpt[name], grad, torch.float32, name)
