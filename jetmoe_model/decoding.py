"""Batched generation with our JetMoE: the prompts fill a preallocated KV cache, then every decode step (one new
token per row) is one CUDA graph replay.

Why: transformers' `generate` launches each of a step's ~800 kernels from Python and grows its cache by copying it,
every step. At the JetMoE-8B shape, batch 80, that took ~100 ms a step on an H200, where reading the weights once
takes ~4 ms. On the Triton backend routing never waits on the host, so a decode step can be recorded once and
replayed: the host then spends microseconds a step. Attention reads the cache only up to the next multiple of
`SPAN` columns, so one graph serves `SPAN` steps and short prompts do not pay for the longest one.

Outputs follow transformers' `generate` on the same model: greedy picks the arg-max, sampling draws from the
softmax at the row's temperature (after top-p), a row that has produced an end-of-sequence token continues with
padding, and generation ends once every row has ended.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .layers import apply_rotary_pair, resolve_backend

SPAN = 256  # cache columns attention reads: a multiple of this, one CUDA graph for each
CHECK_EVERY = 16  # steps between looks (a host sync) at whether every row has ended


class DecodeCache:
    """Every layer's keys and values, `[batch, kv_heads, capacity, head_dim]`, allocated once. As a cache given to
    the model's forward it takes the prompt (an empty cache: attention runs over the prompt itself) and stores it."""

    def __init__(self, config, batch: int, capacity: int, dtype: torch.dtype, device):
        shape = (batch, config.num_key_value_heads, capacity, config.kv_channels)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # the model's forward asks before the prompt: nothing earlier is cached

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int):
        length = key.shape[2]
        self.keys[layer_idx][:, :, :length].copy_(key)
        self.values[layer_idx][:, :, :length].copy_(value)
        return key, value


def _attend_one_token(attention, x, rope, cache: DecodeCache, layer_idx: int, slot, visible):
    """`MoAAttention` for one new token a row at cache column `slot` (a 0-dim tensor), over the `visible` columns
    `[batch, span]`: the same math as its forward, with the key/value heads read once for the k query experts."""
    batch = x.shape[0]
    heads, top_k, dim = attention.num_key_value_heads, attention.top_k, attention.head_dim
    queries, routing, _ = attention.experts.map(x)  # [B, 1, k, heads*dim]
    query = queries.view(batch, 1, top_k, heads, dim).permute(0, 3, 2, 1, 4)  # [B, heads, k, 1, dim]
    kv = attention.kv_proj(x).view(batch, 1, 2, heads, dim)
    key, value = (half.transpose(1, 2) for half in kv.unbind(2))  # [B, heads, 1, dim]
    cos, sin = rope
    backend = attention.experts.backend
    query, key = apply_rotary_pair(query, key, cos, sin, backend)
    query = query.view(batch, heads, top_k, dim)
    keys, values = cache.keys[layer_idx], cache.values[layer_idx]
    keys.index_copy_(2, slot.view(1), key)
    values.index_copy_(2, slot.view(1), value)
    span = visible.shape[1]
    # A kv head's k query heads are k query rows against its keys (no causal mask among them): SDPA reads each
    # key/value head once and keeps the scores in float32, as the prompt's attention does.
    out = F.scaled_dot_product_attention(
        query, keys[:, :, :span], values[:, :, :span], attn_mask=visible[:, None, None, :], scale=attention.scaling
    )  # [B, heads, k, dim]
    return attention.experts.reduce(out.transpose(1, 2).reshape(batch, 1, top_k, heads * dim), routing)


def decode_logits(model, cache: DecodeCache, ids, slot, starts, span: int) -> torch.Tensor:
    """Next-token logits `[batch, vocab]` after `ids` `[batch, 1]`, which sit at cache column `slot` (a 0-dim
    tensor); row b's first real column is `starts[b]` (left padding). No host sync: it can be captured."""
    core = model.model
    columns = torch.arange(span, device=ids.device)
    visible = (columns[None] >= starts[:, None]) & (columns[None] <= slot)
    hidden = core.embed_tokens(ids)
    rope = core.rotary_emb(hidden, (slot - starts)[:, None])
    for index, layer in enumerate(core.layers):
        hidden = hidden + _attend_one_token(
            layer.self_attention, layer.input_layernorm(hidden), rope, cache, index, slot, visible
        )
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))[0]
    return model.lm_head(core.norm(hidden))[:, -1]


class DecodeSteps:
    """Runs decode steps: eagerly, or (CUDA) as one CUDA graph per span of cache columns, captured on first use."""

    def __init__(self, model, cache: DecodeCache, starts: torch.Tensor, cuda_graphs: bool):
        self.model, self.cache, self.starts, self.cuda_graphs = model, cache, starts, cuda_graphs
        self.ids = torch.zeros(starts.shape[0], 1, dtype=torch.long, device=starts.device)
        self.slot = torch.zeros((), dtype=torch.long, device=starts.device)
        self.graph = self.graph_span = self.logits = None

    def __call__(self, tokens: torch.Tensor, slot: int) -> torch.Tensor:
        self.ids.copy_(tokens[:, None])
        self.slot.fill_(slot)
        span = min(math.ceil((slot + 1) / SPAN) * SPAN, self.cache.capacity)
        if not self.cuda_graphs:
            return self._step(span)
        if span != self.graph_span:
            self._capture(span)
        self.graph.replay()
        return self.logits

    def _step(self, span: int) -> torch.Tensor:
        return decode_logits(self.model, self.cache, self.ids, self.slot, self.starts, span)

    def _capture(self, span: int) -> None:
        self.graph = self.logits = None  # the previous span's graph and memory are done with
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # a first eager run: kernels compiled and tuned, workspaces allocated
            self._step(span)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._step(span)
        self.graph, self.graph_span = graph, span


def next_tokens(logits: torch.Tensor, temperatures: torch.Tensor, top_p: float, sampling: bool) -> torch.Tensor:
    """Each row's next token: the arg-max where its temperature is 0, else a draw from softmax(logits / t) cut to
    the smallest set of top tokens whose mass reaches `top_p` (transformers' order: temperature, then top-p)."""
    greedy = logits.argmax(-1)
    if not sampling:
        return greedy
    probs = (logits.float() / temperatures.clamp(min=1e-5)[:, None]).softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before it already reaches top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    drawn = torch.multinomial(probs, 1).squeeze(1)
    return torch.where(temperatures > 0, drawn, greedy)


def left_padding_starts(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token; raises unless every row is padded on the left only."""
    starts = (attention_mask == 0).sum(1)
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), columns[None] >= starts[:, None]):
        raise ValueError("jetmoe_model.decoding.generate needs left-padded prompts (padding_side='left')")
    return starts


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 64,
    temperature: float | Sequence[float] = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    cuda_graphs: bool | None = None,
) -> torch.Tensor:
    """`[batch, prompt + new]` token ids, as `model.generate` returns them: the prompts (left-padded), then up to
    `max_new_tokens` new tokens a row. `temperature` is one for all rows or one a row (0: greedy).
    `cuda_graphs` defaults to on for CUDA models on the Triton kernels (the PyTorch reference reads expert counts
    on the host) whose positions need no host-side rescaling (RoPE types other than dynamic and longrope)."""
    batch, prompt_length = input_ids.shape
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    starts = left_padding_starts(attention_mask)
    temperatures = torch.as_tensor(
        [temperature] * batch if isinstance(temperature, int | float) else list(temperature), dtype=torch.float32
    )
    if temperatures.shape != (batch,) or bool((temperatures < 0).any()):
        raise ValueError(f"temperature: one value >= 0, or one a row ({batch}); got {temperature!r}")
    sampling = bool((temperatures > 0).any())
    temperatures = temperatures.to(device)
    eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, dtype=torch.long, device=device).view(-1)
    pad = pad_token_id if pad_token_id is not None else int(eos[0]) if len(eos) else 0
    rope_type = model.config.rope_parameters.get("rope_type", "default")
    if cuda_graphs is None:
        on_triton = resolve_backend(model.config.moe_backend, device) == "triton"
        cuda_graphs = device.type == "cuda" and on_triton and "dynamic" not in rope_type and rope_type != "longrope"

    cache = DecodeCache(model.config, batch, prompt_length + max_new_tokens, model.dtype, device)
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # as generate's
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]  # fmt: skip
    steps = DecodeSteps(model, cache, starts, cuda_graphs)
    new = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
    ended = torch.zeros(batch, dtype=torch.bool, device=device)
    made = 0
    for step in range(max_new_tokens):
        tokens = torch.where(ended, pad, next_tokens(logits, temperatures, top_p, sampling))
        new[:, step] = tokens
        ended |= torch.isin(tokens, eos)
        made = step + 1
        if made == max_new_tokens or (len(eos) and made % CHECK_EVERY == 0 and bool(ended.all())):
            break
        logits = steps(tokens, prompt_length + step)
    new = new[:, :made]
    if len(eos) and bool(ended.all()):  # generate stops at the step the last row ended: drop the columns after it
        made = int(torch.isin(new, eos).int().argmax(1).max()) + 1
        new = new[:, :made]
    return torch.cat([input_ids, new], dim=1)
