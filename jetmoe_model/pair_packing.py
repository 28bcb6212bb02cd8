"""Prefix-shared preference pairs: DPO's prompt computed once per pair instead of once per response.

TRL's DPO batch holds each pair as two right-padded rows, `i` = prompt + chosen and `B + i` = prompt + rejected. A
token's hidden states depend only on the tokens before it, so the rows' common prefix (the prompt) has the same
hidden states in both: it is packed once. A pair is laid out `[shared | chosen rest | rejected rest]` as two
attention sequences: shared + chosen rest (plain causal), and the rejected rest, whose keys are the shared part
followed by itself. Flash attention's varlen kernel aligns the causal mask of a query sequence shorter than its
keys to their end (bottom right), which is exactly "the shared part, then causal within the rest"; the per-sequence
reference (`varlen_attention.reference_varlen_attention`) builds that mask explicitly. Positions of the rejected
rest continue from the shared part's end, as in its own row. Outputs are gathered back into both rows
(`PackedBatch.unpack`), so log-probs, TRL's losses and the router losses see the padded batch's values, and the
backward sums both rows' gradients into the shared tokens.

The shared part is the longest common prefix of the two rows' tokens: the prompt, and any first response tokens
the two have in common. Pairs whose prompts TRL cut differently (`truncation_mode: keep_end`) share what still
matches, possibly nothing; the result is exact either way.
"""

import torch

from .packing import PackedBatch, _round_up


def _ranges(starts: list[int], lengths: list[int]) -> torch.Tensor:
    """`cat(arange(s, s + n) for s, n in zip(starts, lengths))`, in three ops."""
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    offsets = lengths_t.cumsum(0) - lengths_t
    total = int(lengths_t.sum()) if lengths else 0
    return torch.repeat_interleave(torch.tensor(starts, dtype=torch.long) - offsets, lengths_t) + torch.arange(total)


def _key_sources(key_index: torch.Tensor, rows: int) -> torch.Tensor:
    """`[rows, copies]` int32: the positions in `key_index` of each packed token, ascending, padded with -1 (a
    prompt token is read by both responses: two copies). The backward of the key gather sums them without atomics
    (`jetmoe_kernels.gather_rows`)."""
    order = torch.sort(key_index, stable=True).indices
    counts = torch.bincount(key_index, minlength=rows)
    rank = torch.arange(key_index.shape[0]) - (counts.cumsum(0) - counts).repeat_interleave(counts)
    sources = torch.full((rows, max(int(counts.max()), 1)), -1, dtype=torch.int32)
    sources[key_index[order], rank] = order.to(torch.int32)
    return sources


def _cumulative(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)


def shared_prefix_pairs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedBatch | None:
    """The prefix-shared packing of `2B` rows (row `i` the chosen and row `B + i` the rejected response of pair
    `i`); None when some row is not right-padded (its real tokens not first), where the plain unpadding applies."""
    rows, width = attention_mask.shape
    if rows % 2:
        raise ValueError(f"preference_pairs: expected chosen rows then rejected rows, got an odd number ({rows})")
    pairs = rows // 2
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    right_padded = (mask.int().cumprod(1).sum(1) == lengths).all()
    common = (input_ids[:pairs] == input_ids[pairs:]) & mask[:pairs] & mask[pairs:]
    shared = common.int().cumprod(1).sum(1)
    *counts, is_right_padded = torch.cat((lengths, shared, right_padded.view(1).long())).tolist()  # one device sync
    if not is_right_padded:
        return None
    chosen, rejected, shared = counts[:pairs], counts[pairs:rows], counts[rows:]

    token_starts, token_lengths = [], []  # packed tokens, as runs of padded flat positions
    alias_starts, alias_packed, alias_lengths = [], [], []  # rejected rows' shared positions -> the chosen row's
    query_lengths, key_lengths, key_starts, key_runs = [], [], [], []  # attention sequences and their keys
    real = 0
    for pair, (n_chosen, n_rejected, n_shared) in enumerate(zip(chosen, rejected, shared)):
        rest = n_rejected - n_shared
        token_starts += [pair * width, (pairs + pair) * width + n_shared]
        token_lengths += [n_chosen, rest]
        alias_starts.append((pairs + pair) * width)
        alias_packed.append(real)
        alias_lengths.append(n_shared)
        if n_chosen:  # shared + chosen rest, its own keys
            query_lengths.append(n_chosen)
            key_lengths.append(n_chosen)
            key_starts.append(real)
            key_runs.append(n_chosen)
        if rest:  # the rejected rest, reading the shared part, then itself
            query_lengths.append(rest)
            key_lengths.append(n_shared + rest)
            key_starts += [real, real + n_chosen]
            key_runs += [n_shared, rest]
        real += n_chosen + rest
    if not real:
        return None
    filler = _round_up(real) - real
    if filler:
        query_lengths.append(filler)
        key_lengths.append(filler)
        key_starts.append(real)
        key_runs.append(filler)

    token_index = _ranges(token_starts, token_lengths)
    padded_index = torch.full((rows * width,), real, dtype=torch.long)
    padded_index[token_index] = torch.arange(real)
    padded_index[_ranges(alias_starts, alias_lengths)] = _ranges(alias_packed, alias_lengths)
    key_index = _ranges(key_starts, key_runs)
    device = attention_mask.device
    return PackedBatch(
        cu_seqlens=_cumulative(query_lengths).to(device), max_length=max(query_lengths), real_tokens=real,
        padded_shape=(rows, width), token_index=token_index.to(device),
        key_index=key_index.to(device), cu_seqlens_k=_cumulative(key_lengths).to(device),
        max_length_k=max(key_lengths), key_sources=_key_sources(key_index, real + filler).to(device),
        padded_index=padded_index.to(device),
    )  # fmt: skip
