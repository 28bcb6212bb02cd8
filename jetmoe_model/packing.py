"""Padding-free forwards: a batch's sequences laid end to end in one row, attention kept inside each sequence by
their boundaries, so that no compute goes to padding tokens.

Two ways in, one representation:
- a padded batch with an attention mask (DPO's chosen and rejected rows, SFT without packing) is unpadded here,
  and the outputs are put back in the padded layout (zeros at padding), so callers see no difference;
- a batch TRL's padding-free collator already packed into one row (`cu_seq_lens_q` and friends, or position ids
  that restart at 0) is used as it is.

A third way in (`jetmoe_model.pair_packing`): DPO's chosen and rejected rows of the same pairs, each pair's common
prefix (the prompt) packed once and read by both responses; outputs go back to both rows.

Either way the packed row is rounded up to a multiple of `PACK_MULTIPLE` tokens by one filler sequence. Training
then sees few distinct shapes, each divisible by 16: Triton specialises kernels on that, and a new specialisation
compiled in the middle of training stalls a step for seconds.
"""

from dataclasses import dataclass, fields, replace

import torch

PACK_MULTIPLE = 64


class HostPlan:
    """A dataclass worked out on the host for one batch, whose tensors travel with the batch: pinned by a DataLoader
    that pins, copied to the GPU as the batch is (accelerate calls `to`)."""

    def to(self, device, non_blocking: bool = False):
        """The same plan with its tensors on `device`."""
        return self._with_tensors(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        """Page-locked copies (a non-blocking copy to the GPU needs them)."""
        return self._with_tensors(torch.Tensor.pin_memory)

    def _with_tensors(self, change):
        return replace(self, **{field.name: change(value) for field in fields(self)
                                if isinstance(value := getattr(self, field.name), torch.Tensor)})


@dataclass
class PackedBatch(HostPlan):
    """Where the tokens of a packed row come from and how to put outputs back."""

    cu_seqlens: torch.Tensor  # int32 [sequences + 1] on the model's device: boundaries, the filler's (if any) last
    max_length: int  # longest sequence (the filler included)
    real_tokens: int  # tokens before the filler
    padded_shape: tuple[int, int] | None = None  # (batch, length) of an unpadded input; None: it came packed
    token_index: torch.Tensor | None = None  # [real_tokens]: each packed token's flat index in the padded batch
    # Sequences whose keys are not just their own tokens (prefix-shared pairs): which packed tokens each reads.
    key_index: torch.Tensor | None = None  # [key tokens]: the keys of each sequence in turn, as packed positions
    cu_seqlens_k: torch.Tensor | None = None  # boundaries of each sequence's keys in `key_index`
    max_length_k: int | None = None
    key_sources: torch.Tensor | None = None  # [T', copies] int32: the positions in `key_index` of each packed token
    # A packed token some padded positions share (a pair's prompt): each padded position's packed token, or
    # `real_tokens` (a zero row) at padding. None: each packed token has one padded position, `token_index`.
    padded_index: torch.Tensor | None = None  # [batch * length]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, L, ...]` (or `[B, L]`) in the input's layout -> `[1, T', ...]`, the filler's rows zeros."""
        rows = x.flatten(0, 1)
        if self.token_index is not None:
            rows = rows.index_select(0, self.token_index)
        else:
            rows = rows[: self.real_tokens]
        fill = rows.new_zeros(_round_up(self.real_tokens) - self.real_tokens, *rows.shape[1:])
        return torch.cat((rows, fill)).unsqueeze(0)

    def unpack(self, x: torch.Tensor, flat: bool = False) -> torch.Tensor:
        """`[1, T', ...]` -> the input's layout (`[B, L, ...]`, or `[B*L, ...]` with `flat`), zeros at padding."""
        rows = x[0, : self.real_tokens]
        if self.padded_index is not None:  # a gather: a shared token goes to every position that reads it
            batch, length = self.padded_shape
            rows = torch.cat((rows, rows.new_zeros(1, *rows.shape[1:]))).index_select(0, self.padded_index)
            return rows if flat else rows.view(batch, length, *rows.shape[1:])
        if self.token_index is not None:
            batch, length = self.padded_shape
            rows = rows.new_zeros(batch * length, *rows.shape[1:]).index_copy(0, self.token_index, rows)
            return rows if flat else rows.view(batch, length, *rows.shape[1:])
        return rows if flat else rows.unsqueeze(0)


    def attention_keys(self, key: torch.Tensor, value: torch.Tensor, backend: str = "torch"):
        """Keys and values `[T, heads, D]` as each sequence reads them, with their boundaries and longest: the
        packed row itself (boundaries None: the queries'), or (prefix-shared pairs) gathered so that a response's
        keys follow its prompt's; on Triton by one kernel each way (`jetmoe_kernels.gather_rows`)."""
        if self.key_index is None:
            return key, value, None, None
        if backend == "triton" and _powers_of_two(*key.shape[1:]):
            from jetmoe_kernels.gather_rows import gather_keys_values

            key, value = gather_keys_values(key, value, self.key_index, self.key_sources)
        else:
            key, value = key.index_select(0, self.key_index), value.index_select(0, self.key_index)
        return key, value, self.cu_seqlens_k, self.max_length_k


def _powers_of_two(*sizes: int) -> bool:
    return all(size & (size - 1) == 0 for size in sizes)


def _round_up(tokens: int) -> int:
    return -(-tokens // PACK_MULTIPLE) * PACK_MULTIPLE


def _boundaries(lengths: list[int], device) -> tuple[torch.Tensor, int]:
    """cu_seqlens for `lengths` plus the filler that rounds their total up, and the longest."""
    total = sum(lengths)
    filler = _round_up(total) - total
    lengths = lengths + [filler] if filler else lengths
    ends = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return ends.to(device, non_blocking=True), max(lengths)


def unpad(attention_mask: torch.Tensor) -> PackedBatch:
    """The real tokens of a padded `[B, L]` batch (any padding side), row by row."""
    lengths = attention_mask.sum(1).tolist()
    cu_seqlens, max_length = _boundaries([n for n in lengths if n], attention_mask.device)
    token_index = attention_mask.flatten().nonzero().squeeze(1)
    return PackedBatch(cu_seqlens, max_length, sum(lengths), tuple(attention_mask.shape), token_index)


def from_packed_row(position_ids: torch.Tensor, cu_seq_lens: torch.Tensor | None = None) -> PackedBatch:
    """A row `[1, T]` of sequences laid end to end: boundaries from the collator's `cu_seq_lens`, else where the
    position ids restart at 0."""
    length = position_ids.shape[1]
    if cu_seq_lens is None:
        starts = (position_ids[0] == 0).nonzero().squeeze(1).tolist()
        ends = starts[1:] + [length]
    else:
        ends = cu_seq_lens.tolist()
        starts, ends = ends[:-1], ends[1:]
    cu_seqlens, max_length = _boundaries([end - start for start, end in zip(starts, ends)], position_ids.device)
    return PackedBatch(cu_seqlens, max_length, length)


def packed_positions(batch: PackedBatch, position_ids: torch.Tensor | None, device) -> torch.Tensor:
    """Each packed token's position (as the padded forward would give it), the filler counting from 0."""
    if position_ids is None:
        batch_size, length = batch.padded_shape
        position_ids = torch.arange(length, device=device).expand(batch_size, length)
    packed = batch.pack(position_ids.expand(*(batch.padded_shape or position_ids.shape)))
    filler = _round_up(batch.real_tokens) - batch.real_tokens
    if filler:
        packed[0, batch.real_tokens:] = torch.arange(filler, device=device)
    return packed
