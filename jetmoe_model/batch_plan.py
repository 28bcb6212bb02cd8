"""How a batch runs padding-free, decided from its masks and positions, on whichever device they are.

The forward can decide it from the tensors it is given (`padding_free_layout`); on a GPU that reads the sequence
lengths back to the host, a host sync at the start of every forward, and the input checks add one. While the host
waits there, it cannot queue the step's work ahead of the GPU, which is still finishing the previous step's
backward. A data collator has the batch on the CPU: `plan_batch` checks the inputs and works out the layout there,
and the forward, given the result as `packed_batch`, does neither again.
"""

from collections.abc import Mapping

import torch

from .input_checks import check_inputs
from .packing import PackedBatch, from_packed_row, unpad
from .pair_packing import shared_prefix_pairs


def padding_free_enabled(config) -> bool:
    return config.padding_free and config._attn_implementation in ("sdpa", "flash_attention_2")


def padding_free_layout(config, attention_mask, position_ids, cu_seq_lens=None, pair_ids=None) -> PackedBatch | None:
    """The packing of a batch with no cache and no attention weights asked for, or None to run it padded. With
    `config.padding_free` and SDPA or flash attention: preference pairs (`pair_ids`, their input ids) share their
    prompts; a padded batch is unpadded; one row of sequences packed end to end (TRL's padding-free collator,
    `cu_seq_lens` its boundaries) is taken as it comes."""
    if not padding_free_enabled(config):
        return None
    if pair_ids is not None and config.share_pair_prefix and position_ids is None:
        if attention_mask is None:
            attention_mask = torch.ones_like(pair_ids)
        if attention_mask.dim() == 2:
            packed = shared_prefix_pairs(pair_ids, attention_mask)
            if packed is not None:
                return packed
    if attention_mask is not None:
        if attention_mask.dim() != 2 or bool(attention_mask.all()):
            return None
        return unpad(attention_mask)
    if position_ids is None or position_ids.shape[0] != 1:
        return None
    packed = from_packed_row(position_ids, cu_seq_lens)
    return packed if len(packed.cu_seqlens) > 2 else None  # several sequences, or one and a filler


def plan_batch(config, batch: Mapping, preference_pairs: bool = False) -> PackedBatch | None:
    """`batch` (a collator's output, on the CPU) checked as the forward checks its inputs, and its padding-free
    layout, or None; `preference_pairs`: TRL's DPO rows, chosen then rejected (`JetMoEModel.forward`)."""
    input_ids, attention_mask, position_ids = (batch.get(key) for key in ("input_ids", "attention_mask",
                                                                          "position_ids"))  # fmt: skip
    if input_ids is None:
        return None
    check_inputs(config, input_ids, None, position_ids, attention_mask, past_length=0)
    return padding_free_layout(config, attention_mask, position_ids, batch.get("cu_seq_lens_q"),
                               input_ids if preference_pairs else None)  # fmt: skip
