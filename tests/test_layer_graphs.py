"""CUDA graphs of the decoder layers (`jetmoe_model.layer_graphs`): a batch written into a larger graph's buffers
gives its tokens the eager forward's outputs (CPU, float32, the per-sequence attention reference); on a GPU, forwards
replayed from graphs give the eager logits, a smaller batch reuses a graph and a larger one captures another."""

import copy

import pytest
import torch
from conftest import tiny_config_kwargs

from jetmoe_model import JetMoEConfig, JetMoEForCausalLM
from jetmoe_model.layer_graphs import GraphInputs, LayoutSize, graph_size, holds, layout_size
from jetmoe_model.packing import packed_positions, unpad
from jetmoe_model.pair_packing import shared_prefix_pairs


def tiny_model(device="cpu", dtype=torch.float32, backend="torch") -> JetMoEForCausalLM:
    torch.manual_seed(0)
    shape = dict(hidden_size=64, num_key_value_heads=2, kv_channels=16, intermediate_size=48)
    config = JetMoEConfig(**tiny_config_kwargs("e4k2", **shape, vocab_size=97, max_position_embeddings=256,
                                               moe_backend=backend, output_router_logits=True,
                                               attn_implementation="sdpa"))  # fmt: skip
    model = JetMoEForCausalLM(config)
    with torch.no_grad():  # random biases and norms too, so every parameter carries signal
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.to(device=device, dtype=dtype).train()


def preference_pairs(prompts: list[int], chosen: list[int], rejected: list[int], seed: int = 0, device="cpu"):
    """TRL's DPO rows, right-padded: prompt + chosen response, then prompt + rejected response, pair by pair."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for responses in (chosen, rejected):
        for prompt, response in zip(prompts, responses):
            rows.append(torch.randint(1, 97, (prompt + response,), generator=generator))
    for pair, prompt in enumerate(prompts):  # the rejected row starts with the chosen row's prompt
        rows[len(prompts) + pair][:prompt] = rows[pair][:prompt]
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids.to(device), mask.to(device)


def stack_inputs(model, ids, packed):
    """The packed embeddings and rotary tables the layers get, as `JetMoEModel.forward` makes them."""
    base = model.model
    embeds = packed.pack(base.embed_tokens(ids))
    positions = packed_positions(packed, None, embeds.device)
    return embeds, base.rotary_emb(embeds, positions)


def assert_spare_rows_read_only_themselves(inputs: GraphInputs, sequences: int, tokens: int):
    """After the batch's own sequences: the spare rows in sequences no longer than the graph's longest, each reading
    its own tokens; then an empty sequence owning the spare keys (the flash kernel reads boundaries as given)."""
    size, cu = inputs.size, inputs.cu_seqlens.tolist()
    assert cu[sequences] == tokens and cu[-2:] == [size.tokens, size.tokens]
    assert all(0 <= end - start <= size.max_length for start, end in zip(cu[sequences:], cu[sequences + 1 :]))
    if not size.keys:
        return
    cu_k, key_index = inputs.cu_seqlens_k.tolist(), inputs.key_index.tolist()
    assert cu_k[-1] == size.keys and all(start <= end for start, end in zip(cu_k, cu_k[1:]))
    for i in range(sequences, size.sequences - 1):
        assert key_index[cu_k[i] : cu_k[i + 1]] == list(range(cu[i], cu[i + 1]))
    assert cu_k[-1] - cu_k[-2] <= size.max_length_k


def assert_same_outputs_in_a_graphs_layout(model, ids, mask, packed, size: LayoutSize):
    embeds, rotary = stack_inputs(model, ids, packed)
    tokens = embeds.shape[1]
    assert holds(size, layout_size(packed, tokens))
    want_hidden, want_logits = model.model._graphable_layers(embeds, rotary, packed, True)
    inputs = GraphInputs(size, embeds, rotary, packed)
    inputs.write(embeds, rotary, packed)
    assert_spare_rows_read_only_themselves(inputs, packed.cu_seqlens.shape[0] - 1, tokens)
    got_hidden, got_logits = model.model._graphable_layers(inputs.hidden, inputs.position_embeddings,
                                                           inputs.packed, True)  # fmt: skip
    torch.testing.assert_close(got_hidden[:, :tokens], want_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_logits[:, :tokens], want_logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_prefix_shared_pairs_in_a_larger_graphs_layout_give_the_eager_outputs():
    model = tiny_model()
    large = preference_pairs([30, 12, 41], [50, 7, 33], [20, 60, 9])
    large_packed = shared_prefix_pairs(*large)
    size = graph_size(layout_size(large_packed, large_packed.pack(large[0]).shape[1]))
    assert size.keys and size.sequences > large_packed.cu_seqlens.shape[0]
    assert_same_outputs_in_a_graphs_layout(model, *large, large_packed, size)
    small = preference_pairs([5, 16], [9, 40], [22, 3], seed=1)  # fewer pairs and tokens: more spare rows
    small_packed = shared_prefix_pairs(*small)
    assert_same_outputs_in_a_graphs_layout(model, *small, small_packed, size)


@torch.no_grad()
def test_unpadded_rows_in_a_graphs_layout_give_the_eager_outputs():
    model = tiny_model()
    ids, mask = preference_pairs([10, 20], [30, 5], [7, 40])
    packed = unpad(mask)  # each row its own sequence, reading its own keys
    size = graph_size(layout_size(packed, packed.pack(ids).shape[1]))
    assert not size.keys
    assert_same_outputs_in_a_graphs_layout(model, ids, mask, packed, size)


def test_a_graph_holds_smaller_layouts_only():
    graph = graph_size(LayoutSize(tokens=3000, sequences=17, max_length=700, keys=4100, max_length_k=900))
    assert graph.tokens % 1024 == 0 and graph.max_length == 1024
    assert holds(graph, LayoutSize(2000, 17, 500, 2900, 800))
    assert not holds(graph, LayoutSize(3000, 17, 1500, 4100, 1500))  # a longer sequence
    assert not holds(graph, LayoutSize(graph.tokens + 64, 17, 500, 4200, 800))  # more tokens
    assert not holds(graph, LayoutSize(3000, 17, 700))  # keys of its own: another kind of layout
    assert not holds(graph, LayoutSize(3000, graph.sequences, 700, 4100, 900))  # no sequences left for spare rows


def test_a_copied_model_captures_its_own_graphs():
    model = tiny_model()
    model.model._layer_graphs.captures = 3
    assert copy.deepcopy(model).model._layer_graphs.captures == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@torch.no_grad()
def test_replayed_reference_forwards_give_the_eager_log_probs():
    model = tiny_model("cuda", torch.bfloat16, backend="triton")
    graphs = model.model._layer_graphs

    def logits(pairs, **kwargs):
        ids, mask = pairs
        return model(input_ids=ids, attention_mask=mask, preference_pairs=True, use_cache=False, **kwargs).logits

    batches = [
        preference_pairs([30, 12, 41], [50, 7, 33], [20, 60, 9], seed=0, device="cuda"),  # warms up, eagerly
        preference_pairs([30, 12, 41], [50, 7, 33], [20, 60, 9], seed=1, device="cuda"),  # captured
        preference_pairs([5, 16], [9, 40], [22, 3], seed=2, device="cuda"),  # smaller: replays the same graph
        preference_pairs([200, 150, 180, 90], [250, 70, 233, 99], [20, 260, 90, 100], seed=3, device="cuda"),
    ]  # the last is larger than the captured graph holds: captures another
    captures = []
    for pairs in batches:
        got = logits(pairs, cuda_graph=True)
        want = logits(pairs)
        real = pairs[1].bool()
        torch.testing.assert_close(got[real].float(), want[real].float(), atol=0, rtol=0)
        captures.append(graphs.captures)
    assert captures == [0, 1, 1, 2]
    with torch.enable_grad():  # autograd: never replayed
        logits(batches[1], cuda_graph=True)
    assert graphs.captures == 2 and len(graphs.graphs) == 2
