"""JetMoE's router losses inside TRL's SFT and DPO training losses.

TRL 1.16 computes both losses through its fused LM head, which calls the backbone (`JetMoEModel`) directly and so
never runs `JetMoEForCausalLM.forward`, where our weighted `router_loss` lives. TRL's own MoE term would be
Mixtral's load balancing only, weighted by a `router_aux_loss_coef` that JetMoE's config does not have, so it stays
off. Instead hooks on the backbone ask it for the router logits (it returns them only when asked) and keep those of
the policy's forward, and `compute_loss` adds `aux_loss_coef * load_balancing + router_z_loss_coef * z_loss` (the
report's α=0.01, β=0.001; the same functions and mask as the model's own forward) and logs both parts as `aux_loss`
and `router_z_loss`.
"""

from jetmoe_model import JetMoEModel
from jetmoe_model.router_losses import load_balancing_loss, router_z_loss


class RouterLossMixin:
    """Mix in before a TRL trainer: `class JetMoESFTTrainer(RouterLossMixin, SFTTrainer)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.router_aux_loss_coef:
            raise ValueError(
                "router_aux_loss_coef: JetMoE's router losses are weighted by the model config's aux_loss_coef and "
                "router_z_loss_coef (set them under model.config)"
            )
        backbones = [module for module in self.model.modules() if isinstance(module, JetMoEModel)]
        if len(backbones) != 1:
            raise TypeError(f"{type(self).__name__} trains a JetMoE model, got {type(self.model).__name__}")
        self._backbone_config = backbones[0].config
        # Router logits come from the hook; asking the forward for them would switch on TRL's Mixtral-style term.
        self._backbone_config.output_router_logits = False
        self._captured = None
        backbones[0].register_forward_pre_hook(self._ask_for_router_logits, with_kwargs=True)
        backbones[0].register_forward_hook(self._capture_router_logits, with_kwargs=True)

    _reference_pass = False  # our DPO trainer's reference forward runs meanwhile (`dpo.ReferenceFirstMixin`)

    def _ask_for_router_logits(self, module, args, kwargs):
        if self._reference_pass:  # the reference's router logits are never read
            return args, kwargs
        return args, {**kwargs, "output_router_logits": True}

    def _capture_router_logits(self, module, args, kwargs, output):
        # The policy's forward: the first backbone forward of a `compute_loss` that is not the reference's.
        if self._captured is None and not self._reference_pass:
            self._captured = (output.router_logits, kwargs.get("attention_mask"))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._captured = None
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        router_logits, attention_mask = self._captured
        self._captured = None
        config = self._backbone_config
        aux = load_balancing_loss(router_logits, config.num_experts_per_tok, attention_mask)
        z_loss = router_z_loss(router_logits, attention_mask)
        router_loss = config.aux_loss_coef * aux + config.router_z_loss_coef * z_loss
        loss = loss + router_loss.to(loss.device) / self._accumulation_divisor(num_items_in_batch)

        mode = "train" if self.model.training else "eval"
        for name, value in (("aux_loss", aux), ("router_z_loss", z_loss)):
            # a tensor: made a number when logged (`deferred_metrics`), not here, where it would wait for the GPU
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value.detach()).mean())
        return (loss, outputs) if return_outputs else loss

    def _accumulation_divisor(self, num_items_in_batch) -> int:
        """The router loss is a per-micro-batch mean: when the trainer's loss is already divided for gradient
        accumulation (SFT's token-count normalisation), divide ours too; otherwise `Trainer` divides the sum."""
        if not self.model.training:
            return 1
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        return self.current_gradient_accumulation_steps if scaled else 1

