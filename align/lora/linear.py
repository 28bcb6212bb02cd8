"""PEFT's LoRA `Linear` (`kv_proj`, `lm_head`), computed in the input's dtype and fused into one matmul's epilogue.

PEFT keeps adapters in float32 on a bfloat16 model and casts the input up to them: for `kv_proj` that is a float32
copy of the layer's input, two float32 matmuls, and float32 `[tokens, 4096]` passes to scale, add and cast the
result back, in the forward and again in the backward of every layer. Here the adapter's small factors are cast to
the input's dtype instead, as the routed expert adapters do (`routed_experts`), and the update is added by the
up projection's matmul itself: `addmm(base(x), A x, B^T, alpha=scaling)`. Same parameters, state-dict keys, merge and
saved adapter as PEFT's `Linear`; in float32 the same numbers. Anything else (several adapters, DoRA and the other
variants, a LoRA bias, merged or disabled adapters, per-sample `adapter_names`) goes through PEFT's own forward.
"""

import torch
from peft.tuners.lora.layer import Linear


class LoraLinear(Linear):
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapters = [name for name in self.active_adapters if name in self.lora_A]
        if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
                or adapters[0] in self.lora_variant or self.lora_bias[adapters[0]]):  # fmt: skip
            return super().forward(x, *args, **kwargs)
        adapter = adapters[0]
        result = self.base_layer(x)
        down = self.lora_A[adapter].weight.to(x.dtype)
        up = self.lora_B[adapter].weight.to(x.dtype)
        low_rank = torch.nn.functional.linear(self.lora_dropout[adapter](x), down)
        updated = torch.addmm(result.reshape(-1, result.shape[-1]), low_rank.reshape(-1, low_rank.shape[-1]), up.t(),
                              alpha=self.scaling[adapter])  # fmt: skip
        return updated.view(result.shape)
