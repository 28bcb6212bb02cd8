"""Micro-batches of about equal tokens, for `train_sampling_strategy: batch_rebalance`.

transformers' `BatchRebalanceSampler` takes each optimizer step's rows (the effective batch, shuffled, the same on
every rank) and deals them into `GPUs * gradient_accumulation_steps` micro-batches of variable row counts. Its
cost model is a padded batch's (`rows * longest`). Our model computes only the real tokens of a batch
(`jetmoe_model.packing`), so we balance those instead: each micro-batch gets about the step's tokens divided by
the number of micro-batches, many short rows or few long ones, and memory follows a token budget, not the longest
row.
"""

from transformers.trainer_pt_utils import BatchRebalanceSampler


class TokenBalancedSampler(BatchRebalanceSampler):
    def _assign(self, indices: list[int], lengths: list[int]) -> list[list[list[int]]]:
        """Longest rows first, each to the micro-batch with the fewest tokens so far; `[rank][slot] -> rows`."""
        groups = [[] for _ in range(self.dp_size * self.grad_accum)]
        tokens = [0] * len(groups)
        for index, length in sorted(zip(indices, lengths), key=lambda row: -row[1]):
            lightest = min(range(len(groups)), key=tokens.__getitem__)
            groups[lightest].append(index)
            tokens[lightest] += length
        return [groups[rank * self.grad_accum : (rank + 1) * self.grad_accum] for rank in range(self.dp_size)]


class TokenBalancedBatchesMixin:
    """Mix in before a transformers trainer: its `batch_rebalance` sampler balances real tokens."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if not isinstance(sampler, BatchRebalanceSampler):
            return sampler
        return TokenBalancedSampler(
            lengths=sampler.lengths, effective_batch_size=sampler.effective_batch_size, dp_size=sampler.dp_size,
            grad_accum=sampler.grad_accum, seed=sampler.seed, rank=sampler.rank, drop_last=sampler.drop_last,
        )  # fmt: skip
