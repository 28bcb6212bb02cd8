"""Named errors for malformed model inputs, raised before they turn into an index error deep inside torch.

Positions past `max_position_embeddings` are not an error: RoPE has no table to overrun, scaled RoPE (linear,
dynamic, yarn) exists to serve them, and transformers' JetMoe serves them; unscaled, they get a warning.
"""

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


class JetMoEInputError(ValueError):
    pass


def check_inputs(config, input_ids, inputs_embeds, position_ids, attention_mask, past_length: int,
                 values: bool = True) -> None:
    """Shapes and dtypes first (free), then, with `values`, value ranges with a single host sync (none for inputs
    still on the CPU: `batch_plan.plan_batch` checks them there)."""
    if torch.compiler.is_compiling():
        return
    if input_ids is not None:
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise JetMoEInputError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise JetMoEInputError(f"input_ids must be [batch, sequence], got shape {tuple(input_ids.shape)}")
    batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    if position_ids is not None and position_ids.shape[-1] != length:
        raise JetMoEInputError(f"position_ids has shape {tuple(position_ids.shape)}; the input has {length} positions")
    if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape != (batch, past_length + length):
        raise JetMoEInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(batch, past_length + length)} "
            "(batch, past + new tokens)"
        )
    if position_ids is None and past_length + length > config.max_position_embeddings:
        warn_beyond_trained_length(config)

    if not values:
        return
    ranges = []
    if input_ids is not None and input_ids.numel():
        ranges += [input_ids.min(), input_ids.max()]
    if position_ids is not None and position_ids.numel():
        ranges += [position_ids.min(), position_ids.max()]
    if not ranges:
        return
    values = torch.stack(ranges).tolist()
    if input_ids is not None and input_ids.numel():
        low, high, values = values[0], values[1], values[2:]
        if low < 0 or high >= config.vocab_size:
            raise JetMoEInputError(f"input_ids hold token ids in [{low}, {high}]; vocab_size is {config.vocab_size}")
    if values:
        low, high = values
        if low < 0:
            raise JetMoEInputError(f"position_ids hold negative positions (down to {low})")
        if high >= config.max_position_embeddings:
            warn_beyond_trained_length(config)


def warn_beyond_trained_length(config) -> None:
    if config.rope_parameters.get("rope_type", "default") == "default":
        logger.warning_once(
            f"positions past max_position_embeddings={config.max_position_embeddings} with unscaled RoPE: quality "
            "degrades past the trained length; a rope_parameters scaling (linear, dynamic, yarn) extends it"
        )
