"""TRL's fused LM head on positions planned on the host, so that no forward makes the host wait for the GPU.

TRL 1.16's fused head (`trl.trainer.utils.add_fused_lm_head`) projects only the positions whose next token is a
label. It finds them by boolean-mask indexing on the GPU (`hidden_states[mask]`, `labels[mask]`) and puts the results
back with `masked_scatter`; each reads the mask's count back to the host, and their gradients read it again at the
start of the backward. So every forward ends with the host waiting until the GPU has run all it was given. A DPO
step's reference forward starts while the GPU still runs the previous step's backward and optimizer: the wait at
its end gave that overlap back, and the host then issued the policy forward to an idle GPU.

The data collator has the labels on the CPU: it plans the scored positions there (`plan_scored_tokens`), and the
head below gathers and scatters by those indices, with the same kernel (`trl.kernels.ChunkedLogProbFunction`), so
the same values, and no wait. Forwards given no plan, and what the plan does not cover (pre-shifted labels, TRL's
own MoE loss, FSDP2's sharded head), go to TRL's head.
"""

import functools
import types
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

from jetmoe_model.packing import HostPlan

VOCAB_CHUNK = 32768  # vocabulary columns per projection tile, as TRL's head (JetMoE's 32k vocabulary: one tile)


@dataclass
class ScoredTokens(HostPlan):
    """The positions a fused head scores, for labels `[B, L]`: each predicts the label after it."""

    hidden_rows: torch.Tensor  # [N] int64: the row of the `[B * L]` hidden states that predicts each scored token
    output_index: torch.Tensor  # [N] int64: its position in the `[B * (L - 1)]` per-token outputs
    targets: torch.Tensor  # [N] int64: the scored tokens
    label_mask: torch.Tensor  # [B, L - 1] bool: which positions are scored (TRL's `label_mask`)


def plan_scored_tokens(labels: torch.Tensor) -> ScoredTokens:
    """`labels` `[B, L]` on the CPU, -100 where nothing is scored, as the head will be given them."""
    shifted = labels[:, 1:]
    label_mask = shifted != -100
    output_index = label_mask.flatten().nonzero().squeeze(1)
    return ScoredTokens(hidden_rows=output_index + output_index // shifted.shape[1], output_index=output_index,
                        targets=shifted.flatten()[output_index], label_mask=label_mask)  # fmt: skip


def install_planned_lm_head(model, outputs: tuple[str, ...]) -> None:
    """On a model TRL gave its fused head: forwards with `fused_lm_head=True` and a `scored_tokens` plan score the
    planned positions; `outputs`, the per-token fields TRL's head was asked for (`add_fused_lm_head`)."""
    trl_forward = model.forward

    @functools.wraps(type(model).forward)  # `generate` checks its keywords against the signature, as on TRL's head
    def forward(self, *args, fused_lm_head=False, scored_tokens=None, **kwargs):
        if fused_lm_head and scored_tokens is not None and _plan_covers(self, kwargs):
            return _score_planned(self, scored_tokens, outputs, *args, **kwargs)
        return trl_forward(*args, fused_lm_head=fused_lm_head, **kwargs)

    model.forward = types.MethodType(forward, model)


def _plan_covers(model, kwargs) -> bool:
    return (kwargs.get("shift_labels") is None and not kwargs.get("output_router_logits")
            and not isinstance(model.get_output_embeddings().weight, DTensor))  # fmt: skip


def _score_planned(model, scored: ScoredTokens, outputs, *args, labels=None, num_items_in_batch=None, **kwargs):
    if labels is None or (labels.shape[0], labels.shape[1] - 1) != tuple(scored.label_mask.shape):
        raise ValueError(f"scored_tokens were planned for labels of shape {tuple(scored.label_mask.shape)} after the "
                         f"shift; this forward got labels {None if labels is None else tuple(labels.shape)}")
    hidden = model.base_model(*args, **{**kwargs, "use_cache": False}).last_hidden_state
    rows = hidden.flatten(0, 1).index_select(0, scored.hidden_rows)
    head = model.get_output_embeddings()
    with maybe_gather_lm_head_ctx(head.weight, head.bias):
        per_token = ChunkedLogProbFunction.apply(rows, head.weight, head.bias, scored.targets, 1.0, VOCAB_CHUNK,
                                                 None, 1.0, outputs)  # fmt: skip
    log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (
        None if values is None else _at_positions(values, scored) for values in per_token
    )
    scored_count = max(scored.targets.shape[0], 1)
    loss = -log_probs.sum() / (scored_count if num_items_in_batch is None else num_items_in_batch)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, log_sum_sq_probs=log_sum_sq_probs,
                               mean_logits=mean_logits, is_top1=is_top1, label_mask=scored.label_mask)  # fmt: skip


def _at_positions(values: torch.Tensor, scored: ScoredTokens) -> torch.Tensor:
    """`[N]` scored values -> `[B, L - 1]`, zeros elsewhere (differentiable, as TRL's `masked_scatter`)."""
    spread = values.new_zeros(scored.label_mask.numel()).index_copy(0, scored.output_index, values)
    return spread.view(scored.label_mask.shape)
