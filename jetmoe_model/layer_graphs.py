"""CUDA graphs of the decoder layers, for packed forwards without autograd (DPO's reference forward).

DPO runs the reference forward every step: every layer, no autograd, about a thousand kernel launches whose host
time exceeds the GPU's time for them (docs/benchmarks.md). Captured once as a CUDA graph, that forward is one
replay, and the host goes on to issue the policy's forward while the GPU runs it.

A graph replays fixed shapes at fixed addresses. Each graph owns input buffers of a `LayoutSize`, and a batch is
written into the smallest graph that holds it (`holds`): its packed tokens first, the graph's spare rows after them
as extra attention sequences of their own, so that they attend only among themselves, and the expert layers treat
every token on its own. The batch's tokens come out as the eager forward computes them. A batch that no graph of its
size class holds (tokens rounded up to `TOKEN_STEP`) gets a new one (`graph_size`): a run captures a graph per size
class in its first steps, then replays them. The graphs share one memory pool: they run one at a time, and their
outputs are copied out before the next replay.
"""

import contextlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .packing import PackedBatch

TOKEN_STEP = 1024  # a new graph's tokens, and its keys beyond them, are rounded up to this
MAX_GRAPHS = 12  # graphs kept per model; the least recently replayed goes first


@dataclass(frozen=True)
class LayoutSize:
    """The sizes a packed layout has, or a graph holds: tokens, attention sequences, longest query sequence; with
    prefix-shared keys (`PackedBatch.key_index`), their number and longest key sequence (else 0)."""

    tokens: int
    sequences: int
    max_length: int
    keys: int = 0
    max_length_k: int = 0


def layout_size(packed: PackedBatch, tokens: int) -> LayoutSize:
    """The sizes of `packed`, a layout of `tokens` packed tokens (its filler included)."""
    sequences = packed.cu_seqlens.shape[0] - 1
    if packed.key_index is None:
        return LayoutSize(tokens, sequences, packed.max_length)
    return LayoutSize(tokens, sequences, packed.max_length, packed.key_index.shape[0], packed.max_length_k)


def _spare_sequences(graph: LayoutSize, tokens: int) -> int:
    """Sequences the spare rows after `tokens` take, each at most `graph.max_length` long, plus one empty sequence
    that owns the spare keys."""
    return -(-(graph.tokens - tokens) // graph.max_length) + 1


def holds(graph: LayoutSize, size: LayoutSize) -> bool:
    """Whether a graph of `graph`'s sizes can run a batch of `size`."""
    if graph.tokens < size.tokens or graph.max_length < size.max_length or bool(graph.keys) != bool(size.keys):
        return False
    if graph.sequences < size.sequences + _spare_sequences(graph, size.tokens):
        return False
    if not size.keys:
        return True
    spare_tokens = graph.tokens - size.tokens
    spare_keys = graph.keys - size.keys - spare_tokens
    return spare_keys >= 0 and graph.max_length_k >= max(size.max_length_k, graph.max_length, spare_keys)


def _power_of_two(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def graph_size(size: LayoutSize) -> LayoutSize:
    """A new graph's sizes for a batch of `size` that no graph holds: rounded up, so that later batches a little
    larger fit too, and with sequences enough for smaller ones."""
    tokens = _round_up(size.tokens, TOKEN_STEP)
    max_length = _power_of_two(size.max_length)
    sequences = _round_up(size.sequences + tokens // max_length + 2, 16)  # room for any smaller batch's spare rows
    if not size.keys:
        return LayoutSize(tokens, sequences, max_length)
    keys = tokens + _round_up(size.keys - size.tokens, TOKEN_STEP)
    max_length_k = _power_of_two(max(size.max_length_k, max_length, keys - tokens))
    return LayoutSize(tokens, sequences, max_length, keys, max_length_k)


class GraphInputs:
    """A graph's input buffers, and how a batch is written into them (also used on the CPU, by the tests)."""

    def __init__(self, size: LayoutSize, hidden: torch.Tensor, position_embeddings: tuple, packed: PackedBatch):
        self.size = size
        device = hidden.device
        self.hidden = hidden.new_zeros(1, size.tokens, hidden.shape[-1])
        self.position_embeddings = tuple(x.new_zeros(1, size.tokens, x.shape[-1]) for x in position_embeddings)
        cu_dtype = packed.cu_seqlens.dtype
        self.cu_seqlens = torch.zeros(size.sequences + 1, dtype=cu_dtype, device=device)
        # the ends of the spare sequences, before adding where the batch's tokens end
        self.spare_ends = torch.arange(1, size.sequences + 1, dtype=cu_dtype, device=device) * size.max_length
        self.key_index = self.cu_seqlens_k = self.token_positions = None
        if size.keys:
            self.key_index = torch.zeros(size.keys, dtype=packed.key_index.dtype, device=device)
            self.cu_seqlens_k = torch.zeros(size.sequences + 1, dtype=cu_dtype, device=device)
            self.token_positions = torch.arange(size.tokens, dtype=packed.key_index.dtype, device=device)
        self.packed = PackedBatch(
            cu_seqlens=self.cu_seqlens, max_length=size.max_length, real_tokens=size.tokens,
            key_index=self.key_index, cu_seqlens_k=self.cu_seqlens_k,
            max_length_k=size.max_length_k if size.keys else None,
        )  # fmt: skip

    def write(self, hidden: torch.Tensor, position_embeddings: tuple, packed: PackedBatch) -> None:
        """The batch's packed rows first; the spare rows zeros, in sequences of at most `max_length` tokens, each
        reading only its own tokens; spare keys (gathered from the last row) owned by a last, empty sequence."""
        size, tokens = self.size, hidden.shape[1]
        sequences = packed.cu_seqlens.shape[0] - 1
        for buffer, given in ((self.hidden, hidden), *zip(self.position_embeddings, position_embeddings)):
            buffer[:, :tokens].copy_(given)
            buffer[:, tokens:].zero_()
        self.cu_seqlens[: sequences + 1].copy_(packed.cu_seqlens)
        spare = self.cu_seqlens[sequences + 1 :]
        torch.add(self.spare_ends[: spare.shape[0]], tokens, out=spare).clamp_(max=size.tokens)
        if not size.keys:
            return
        keys, spare_tokens = packed.key_index.shape[0], size.tokens - tokens
        self.key_index[:keys].copy_(packed.key_index)
        torch.add(self.token_positions[:spare_tokens], tokens, out=self.key_index[keys : keys + spare_tokens])
        self.key_index[keys + spare_tokens :].fill_(size.tokens - 1)
        self.cu_seqlens_k[: sequences + 1].copy_(packed.cu_seqlens_k)
        torch.add(spare, keys - tokens, out=self.cu_seqlens_k[sequences + 1 :])
        self.cu_seqlens_k[-1:].fill_(size.keys)


class _Graph:
    def __init__(self, inputs: GraphInputs, graph, hidden: torch.Tensor, router_logits: torch.Tensor | None):
        self.inputs, self.graph, self.hidden, self.router_logits = inputs, graph, hidden, router_logits


class LayerGraphs:
    """The CUDA graphs of one model's decoder stack, captured on demand and replayed (see the module's docstring).

    Called with `run_layers(hidden, position_embeddings, packed, keep_router_logits)`, the model's eager stack, which
    returns the final hidden states `[1, T, hidden]` and the router logits stacked `[2 * layers, T, experts]` (or
    None). A caller asks for graphs only where every call runs the same modules (the weights may change in place): a
    graph replays what ran when it was captured. The model's training mode is part of a graph's key."""

    def __init__(self):
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.stream = None
        self.pool = None
        self.captures = 0

    def __deepcopy__(self, memo) -> "LayerGraphs":
        return LayerGraphs()  # a copied model captures its own graphs (these replay the original's weights)

    def __call__(self, run_layers, hidden, position_embeddings, packed: PackedBatch, keep_router_logits: bool,
                 training: bool):  # fmt: skip
        """`(hidden, router_logits)` for the batch's `T` packed tokens, new tensors (not the graph's buffers)."""
        if self.stream is None:  # the first call runs eagerly on the capture stream: lazy set-up happens outside
            return self._warm_up(run_layers, hidden, position_embeddings, packed, keep_router_logits)
        tokens = hidden.shape[1]
        size = layout_size(packed, tokens)
        signature = (hidden.dtype, hidden.device, keep_router_logits, training, torch.is_autocast_enabled("cuda"))
        graph = self._smallest_holding(signature, size)
        if graph is None:
            graph = self._capture(run_layers, (signature, graph_size(size)), hidden, position_embeddings, packed,
                                  keep_router_logits)  # fmt: skip
        graph.inputs.write(hidden, position_embeddings, packed)
        graph.graph.replay()
        router_logits = graph.router_logits[:, :tokens].clone() if keep_router_logits else None
        return graph.hidden[:, :tokens].clone(), router_logits

    def _smallest_holding(self, signature: tuple, size: LayoutSize) -> _Graph | None:
        """The smallest graph that holds the batch, if it is no larger than a new one would be: the spare rows cost
        GPU time, which matters where the GPU, not the host, sets the pace (full fine-tuning)."""
        largest = graph_size(size).tokens
        fitting = [key for key in self.graphs
                   if key[0] == signature and key[1].tokens <= largest and holds(key[1], size)]  # fmt: skip
        if not fitting:
            return None
        key = min(fitting, key=lambda key: (key[1].tokens, key[1].keys))
        self.graphs.move_to_end(key)
        return self.graphs[key]

    def _warm_up(self, run_layers, hidden, position_embeddings, packed, keep_router_logits):
        self.stream = torch.cuda.Stream(hidden.device)
        current = torch.cuda.current_stream(hidden.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            outputs = run_layers(hidden, position_embeddings, packed, keep_router_logits)
        current.wait_stream(self.stream)
        for output in outputs:
            if output is not None:
                output.record_stream(current)
        return outputs

    def _capture(self, run_layers, key, hidden, position_embeddings, packed, keep_router_logits) -> _Graph:
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        inputs = GraphInputs(key[1], hidden, position_embeddings, packed)
        inputs.write(hidden, position_embeddings, packed)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        current = torch.cuda.current_stream(hidden.device)
        self.stream.wait_stream(current)
        # Autocast's cache of cast weights would hand the graph tensors freed when the autocast region ends.
        uncached = torch.autocast("cuda", enabled=torch.is_autocast_enabled("cuda"),
                                  dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)  # fmt: skip
        with torch.cuda.stream(self.stream), uncached:
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                out_hidden, router_logits = run_layers(
                    inputs.hidden, inputs.position_embeddings, inputs.packed, keep_router_logits
                )
            except BaseException:
                with contextlib.suppress(RuntimeError):  # the capture is void; its own error would hide the cause
                    graph.capture_end()
                raise
            graph.capture_end()
        current.wait_stream(self.stream)
        self.captures += 1
        self.graphs[key] = _Graph(inputs, graph, out_hidden, router_logits)
        return self.graphs[key]
