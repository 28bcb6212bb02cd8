"""JetMoE decoder, base model and causal LM, checkpoint-compatible with transformers' `JetMoeForCausalLM`."""

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.utils import can_return_tuple

from .attention import MoAAttention
from .attention_weights import mask_config
from .batch_plan import padding_free_enabled, padding_free_layout
from .cache_name import CACHE_KEYWORDS, CACHE_NAME, given_cache
from .checkpoint_checks import JetMoECheckpointError, shape_mismatches
from .configuration import MOE_BACKENDS, JetMoEConfig
from .experts import MoAExperts, MoEMLP, ParallelExperts
from .input_checks import check_inputs
from .layers import RMSNorm, RotaryEmbedding
from .output_flags import requested_outputs
from .packing import PackedBatch, packed_positions
from .router_losses import load_balancing_loss, router_z_loss


# What TRL's padding-free collator passes for flash attention's varlen path; a packed forward has its own.
_PACKED_ROW_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


@dataclass
class JetMoECausalLMOutput(MoeCausalLMOutputWithPast):
    """`aux_loss` is the (unweighted) load-balancing loss, as in transformers; `router_loss` is what training adds:
    `aux_loss_coef * aux_loss + router_z_loss_coef * router_z_loss`."""

    router_z_loss: torch.FloatTensor | None = None
    router_loss: torch.FloatTensor | None = None


class JetMoEDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: JetMoEConfig, layer_idx: int):
        super().__init__()
        # transformers' JetMoe builds these two norms with the default eps, not `rms_norm_eps`; so do we.
        self.input_layernorm = RMSNorm(config.hidden_size, backend=config.moe_backend)
        self.self_attention = MoAAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, backend=config.moe_backend)
        self.mlp = MoEMLP(config)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        """Returns the new hidden states, the attention weights (None unless `output_attentions`) and the logits of
        this layer's two routers (MoA, MoE)."""
        attn_out, attn_weights, attn_router_logits = self.self_attention(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask=attention_mask, cache=cache, **kwargs
        )
        hidden_states = hidden_states + attn_out
        mlp_out, mlp_router_logits = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + mlp_out, attn_weights, attn_router_logits, mlp_router_logits


class JetMoEPreTrainedModel(PreTrainedModel):
    config_class = JetMoEConfig
    config: JetMoEConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["JetMoEDecoderLayer"]
    _skip_keys_device_placement = list(CACHE_KEYWORDS)
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ParallelExperts):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, MoAExperts | MoEMLP):
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, with shape mismatches reported by tensor name instead of a bare RuntimeError."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except RuntimeError as error:
            if "mismatched_sizes" not in str(error) or not os.path.isdir(str(pretrained_model_name_or_path)):
                raise
            config = kwargs.get("config") or cls.config_class.from_pretrained(pretrained_model_name_or_path, **{
                key: value for key, value in kwargs.items() if key in cls.config_class.__dataclass_fields__
            })
            mismatches = shape_mismatches(cls, config, str(pretrained_model_name_or_path))
            raise JetMoECheckpointError(
                f"checkpoint {pretrained_model_name_or_path} does not match its config:\n  " + "\n  ".join(mismatches)
            ) from None

    @property
    def is_activation_checkpointing(self) -> bool:
        """transformers' answer (any module's `gradient_checkpointing` flag is set), read where such flags are: the
        backbone and its decoder layers, not all ~1,600 modules of a LoRA-wrapped JetMoE-8B (TRL asks on every DPO
        step, around its reference forward; the walk took ~1.5 ms of host time)."""
        backbone = getattr(self, self.base_model_prefix, self)
        return backbone.gradient_checkpointing or any(layer.gradient_checkpointing for layer in backbone.layers)

    def set_moe_backend(self, backend: str) -> None:
        """Switch every kernel-backed layer (experts, norms, rotary) between "torch", "triton" and "auto"."""
        if backend not in MOE_BACKENDS:
            raise ValueError(f"moe_backend={backend!r}: expected one of {MOE_BACKENDS}")
        self.config.moe_backend = backend
        for module in self.modules():
            if isinstance(module, MoAExperts | MoEMLP | RMSNorm):
                module.backend = backend


@dataclass
class JetMoEModelOutput(MoeModelOutputWithPast):
    pass


class JetMoEModel(JetMoEPreTrainedModel):
    def __init__(self, config: JetMoEConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(JetMoEDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, backend=config.moe_backend)
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        output_router_logits=None,
        past_key_values=None,
        preference_pairs: bool = False,
        packed_batch: PackedBatch | None = None,
        **kwargs,
    ) -> JetMoEModelOutput:
        """The cache comes as `cache` (transformers >= 5.24) or `past_key_values` (<= 5.23, and older callers) and
        is returned in the output field the installed transformers reads (`cache_name.CACHE_NAME`).

        `preference_pairs`: the batch is TRL's DPO layout, the first half of the rows the chosen responses and the
        second half the rejected ones of the same pairs; with `config.share_pair_prefix` each pair's common prefix
        (its prompt) is computed once (`jetmoe_model.pair_packing`). Outputs are the same either way.

        `packed_batch`: this batch's padding-free layout, worked out on the host by `batch_plan.plan_batch` (which
        also checked the input values): used instead of deciding it here, which needs host syncs."""
        cache = given_cache(cache, past_key_values)
        output_attentions, output_hidden_states, output_router_logits = requested_outputs(
            self.config,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of `input_ids` and `inputs_embeds`")
        if use_cache is None:  # a cache is for generation: training steps never build one unasked
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training:
            use_cache = False
            if torch.is_grad_enabled():  # the backward's recompute would append to a given cache a second time
                cache = None
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        check_inputs(self.config, input_ids, inputs_embeds, position_ids, attention_mask, past_length,
                     values=packed_batch is None)

        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        packed = None
        if self._runs_padding_free(cache, output_attentions):
            packed = packed_batch if packed_batch is not None else padding_free_layout(
                self.config, attention_mask, position_ids, kwargs.get("cu_seq_lens_q"),
                input_ids if preference_pairs else None)  # fmt: skip
        if packed is not None:  # one row of real tokens: no mask, attention kept apart by the boundaries
            position_ids = packed_positions(packed, position_ids, inputs_embeds.device)
            inputs_embeds = packed.pack(inputs_embeds)
            mask = None
            kwargs = {key: value for key, value in kwargs.items() if key not in _PACKED_ROW_KWARGS}
        else:
            if position_ids is None:
                length = inputs_embeds.shape[1]
                position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)[None]
            # With padding_free off and no attention mask, positions restarting at 0 still start a new sequence:
            # create_causal_mask keeps packed sequences apart (as a mask, slowly). It only looks for packed rows when
            # there is no cache, and an empty cache changes nothing else in the mask. The cache goes in by position:
            # the parameter is `past_key_values` up to transformers 5.23, `cache` from 5.24.
            mask = create_causal_mask(
                mask_config(self.config, output_attentions),
                inputs_embeds,
                attention_mask,
                cache if past_length else None,
                position_ids=position_ids,
            )
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        all_hidden_states = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        router_logits = []
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states, attn_weights, attn_logits, mlp_logits = layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=mask,
                cache=cache,
                position_ids=position_ids,
                output_attentions=output_attentions,
                packed=packed,
                **kwargs,
            )
            if all_attentions is not None:
                all_attentions.append(attn_weights)
            router_logits += [attn_logits, mlp_logits]
        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        if packed is not None:  # back to the caller's layout
            hidden_states = packed.unpack(hidden_states)
            if output_router_logits:
                router_logits = [packed.unpack(logits.unsqueeze(0), flat=True) for logits in router_logits]
            if all_hidden_states is not None:
                all_hidden_states = [packed.unpack(states) for states in all_hidden_states]

        return JetMoEModelOutput(
            last_hidden_state=hidden_states,
            **{CACHE_NAME: cache if use_cache else None},
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
            router_logits=tuple(router_logits) if output_router_logits else None,
        )


    def _runs_padding_free(self, cache, output_attentions) -> bool:
        """With `config.padding_free` and SDPA or flash attention, only without a cache (training, scoring) and no
        attention weights asked for (those come from eager attention in the padded layout); exported and compiled
        graphs stay padded (the sizes depend on the data)."""
        return (padding_free_enabled(self.config) and cache is None and not output_attentions
                and not torch.compiler.is_compiling())  # fmt: skip


class JetMoEForCausalLM(JetMoEPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: JetMoEConfig):
        super().__init__(config)
        self.model = JetMoEModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep: int | torch.Tensor = 0,
        output_router_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        past_key_values=None,
        preference_pairs: bool = False,
        packed_batch: PackedBatch | None = None,
        **kwargs,
    ) -> JetMoECausalLMOutput:
        """The cache comes as `cache` or `past_key_values`; `preference_pairs` and `packed_batch` mean what they
        mean to `JetMoEModel.forward`."""
        (output_router_logits,) = requested_outputs(self.config, output_router_logits=output_router_logits)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=given_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
            return_dict=True,
            preference_pairs=preference_pairs,
            packed_batch=packed_batch,
            **kwargs,
        )
        # logits_to_keep: an int keeps the last n positions (0 keeps all), a tensor selects positions.
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)

        aux_loss = z_loss = router_loss = None
        if output_router_logits:
            aux_loss = load_balancing_loss(outputs.router_logits, self.config.num_experts_per_tok, attention_mask)
            z_loss = router_z_loss(outputs.router_logits, attention_mask)
            router_loss = self.config.aux_loss_coef * aux_loss + self.config.router_z_loss_coef * z_loss
            if loss is not None:
                loss = loss + router_loss.to(loss.device)

        return JetMoECausalLMOutput(
            loss=loss,
            aux_loss=aux_loss,
            router_z_loss=z_loss,
            router_loss=router_loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            router_logits=outputs.router_logits if output_router_logits else None,
        )
