"""The JetMoE report's router losses, applied to every router (MoA and MoE) of every layer.

- Load balancing (Switch Transformer): `E * sum_e f_e * p_e`, with `f_e` the share of routed slots sent to expert
  `e` and `p_e` its mean router probability; 1.0 when perfectly balanced, up to E when collapsed.
- Router z-loss (ST-MoE): mean squared log-sum-exp of the logits; keeps logits small so routing stays stable.
Each loss is averaged over routers, counting only real tokens when a padding mask is given.
"""

import torch


def _token_weights(attention_mask: torch.Tensor | None, num_rows: int, device) -> torch.Tensor:
    """1 for real tokens, 0 for padding, over the `B*L` rows the routers saw."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.ones(num_rows, device=device)
    # With a KV cache the mask also covers past tokens; the routers only saw the last L.
    length = num_rows // attention_mask.shape[0]
    return attention_mask[:, -length:].reshape(-1).to(device=device, dtype=torch.float32)


def _stacked(router_logits: list[torch.Tensor]) -> torch.Tensor:
    """All routers' logits as one float32 `[routers, rows, experts]` tensor, so that each loss is a dozen ops for
    the whole model rather than a dozen per router: JetMoE-8B has 48 routers, and the per-router ops were ~1,300
    launches a training step (forward and backward), several percent of a host-bound DPO step."""
    return torch.stack([logits.float() for logits in router_logits])


def _top_k_one_hot(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """1.0 at each row's `top_k` largest entries, by `top_k` rounds of argmax: `topk` over the last dim of the
    stacked routers (a sort of 1.5M rows of 8 in a 16-pair DPO step) took 4.6 ms of GPU time; these take ~0.1 ms."""
    remaining, chosen = probs.clone(), torch.zeros_like(probs)
    for _ in range(top_k):
        best = remaining.argmax(-1, keepdim=True)
        chosen.scatter_(-1, best, 1.0)
        remaining.scatter_(-1, best, -1.0)  # below every probability
    return chosen


def load_balancing_loss(router_logits: list[torch.Tensor], top_k: int, attention_mask=None) -> torch.Tensor:
    logits = _stacked(router_logits)
    num_experts = logits.shape[-1]
    weights = _token_weights(attention_mask, logits.shape[1], logits.device)[:, None]
    probs = torch.softmax(logits, dim=-1)
    chosen = _top_k_one_hot(probs, top_k)
    denominator = weights.sum().clamp(min=1.0)
    slot_share = (chosen * weights).sum(1) / (denominator * top_k)  # [routers, experts]
    mean_prob = (probs * weights).sum(1) / denominator
    return (num_experts * (slot_share * mean_prob).sum(-1)).mean()


def router_z_loss(router_logits: list[torch.Tensor], attention_mask=None) -> torch.Tensor:
    logits = _stacked(router_logits)
    weights = _token_weights(attention_mask, logits.shape[1], logits.device)
    squared = torch.logsumexp(logits, dim=-1).pow(2)  # [routers, rows]
    return ((squared * weights).sum(-1) / weights.sum().clamp(min=1.0)).mean()
