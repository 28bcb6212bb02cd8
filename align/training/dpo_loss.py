"""TRL's DPO loss and its logged metrics, computed without the host waiting for the GPU.

TRL 1.16's `DPOTrainer._compute_loss` makes a Python number of each metric as soon as it has it (`.item()`, `if
tensor > 0`, boolean-mask indexing): ~20 waits for the GPU between the policy forward and the backward. In a
host-paced LoRA DPO step on an H200 the host waited there for the GPU to finish the forward (~15 ms of a ~290 ms
step), and the GPU then waited for the backward's first kernels. Here the same loss and metrics are GPU tensors,
appended to TRL's metric lists (`align.training.deferred_metrics` makes numbers of them when the trainer logs).

Only TRL's default objective is taken over: `loss_type: sigmoid` (with any `loss_weights`), `f_divergence_type:
reverse_kl`, no `ld_alpha`, no WPO weighting (`use_weighting`), no Mixtral-style aux loss (ours is added by
`router_loss`), reference log-probs in the batch (our trainer computes them first, `dpo.ReferenceFirstMixin`), and
no `return_outputs`. Anything else runs TRL's own `_compute_loss`. `tests/test_prefix_shared_dpo.py` holds the loss,
gradients and logged metrics to TRL's on the same pairs.
"""

import torch
import torch.nn.functional as F

NOT_MODEL_INPUTS = ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")  # batch keys the model does not take


def completion_labels(batch: dict) -> torch.Tensor:
    """TRL's DPO labels: the input ids, -100 outside the completions (what the fused head scores)."""
    return batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)


def completion_logps(log_probs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's summed completion log-probs `(chosen, rejected)` from the fused head's per-position log-probs
    (zero outside the completions), over the positions TRL scores: all but the first."""
    return log_probs[:, 1 - batch["input_ids"].shape[1]:].sum(dim=1).chunk(2)


def forward_inputs(batch: dict) -> dict:
    """A pair batch's keywords for a policy or reference forward through TRL's fused LM head, as TRL passes them."""
    model_inputs = {key: value for key, value in batch.items() if key not in NOT_MODEL_INPUTS}
    return {**model_inputs, "use_cache": False, "labels": completion_labels(batch), "fused_lm_head": True}


class DPOLossWithoutWaitsMixin:
    """Mix in right before `trl.DPOTrainer`."""

    def _loss_without_waits_applies(self, inputs: dict, return_outputs: bool) -> bool:
        return (
            not return_outputs
            and list(self.loss_types) == ["sigmoid"]
            and self.f_divergence_type == "reverse_kl"
            and self.ld_alpha is None
            and not self.use_weighting
            and not self.aux_loss_enabled
            and "ref_chosen_logps" in inputs
        )

    def _compute_loss(self, model, inputs, return_outputs):
        if not self._loss_without_waits_applies(inputs, return_outputs):
            return super()._compute_loss(model, inputs, return_outputs)
        outputs = model(**forward_inputs(inputs))
        scored = inputs["completion_mask"][..., 1:]  # the tokens whose log-probs the head returns
        length = scored.shape[1]
        chosen_logps, rejected_logps = completion_logps(outputs.log_probs, inputs)
        chosen_logratios = chosen_logps - inputs["ref_chosen_logps"]
        rejected_logratios = rejected_logps - inputs["ref_rejected_logps"]
        loss = -F.logsigmoid(self.beta * (chosen_logratios - rejected_logratios)).mean() * self.loss_weights[0]

        metrics = self._metrics["train" if self.model.training else "eval"]
        self._record_token_metrics(metrics, outputs, scored, inputs["attention_mask"], length)
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        gather = self.accelerator.gather
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean())
        return loss

    def _record_token_metrics(self, metrics, outputs, scored, attention_mask, length: int) -> None:
        """Entropy, mean logits and top-1 accuracy over the scored tokens, and the running token count: each a ratio
        of sums over all processes, as TRL forms them (0 where nothing was scored)."""
        total = self.accelerator.gather_for_metrics

        def ratio(numerator, denominator):
            numerator, denominator = total(numerator).sum().double(), total(denominator).sum().double()
            return torch.where(denominator > 0, numerator / denominator.clamp(min=1), 0.0)

        scored_bool = scored.bool()
        entropy = outputs.entropy[:, -length:].detach()
        metrics["entropy"].append(ratio((entropy * scored).sum(), scored.sum()))
        if self.model.training:
            tokens = total(attention_mask.sum()).sum()
            self._total_train_tokens = self._total_train_tokens + tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

        mean_logits = outputs.mean_logits[:, -length:].detach()
        for side, logits, mask in zip(("chosen", "rejected"), mean_logits.chunk(2), scored_bool.chunk(2)):
            metrics[f"logits/{side}"].append(ratio(torch.where(mask, logits, 0).sum(), mask.sum()))
        chosen_is_top1, chosen_scored = outputs.is_top1[:, -length:].chunk(2)[0], scored_bool.chunk(2)[0]
        metrics["mean_token_accuracy"].append(ratio((chosen_is_top1 & chosen_scored).sum(), chosen_scored.sum()))
