"""Appending keys and values to transformers' cache, without copying a prompt into an empty layer.

`DynamicLayer.update` concatenates onto what the layer holds; for the first chunk (a prompt, or `model(ids)` in
eval mode, which builds a cache by default) that is a `torch.cat` onto nothing: a full copy of every layer's keys
and values, through a slow strided kernel. At the JetMoE-8B shape on an H100 those copies took 5.3 of a forward's
81 ms. Without autograd recording (generation, evaluation) the tensors are ours to hand over, so an empty dynamic
layer takes the keys as they are (the rotary kernel's own output) and the values as one contiguous copy (a view
would keep the whole key/value projection alive: more memory than a copy).
"""

import torch
from transformers.cache_utils import Cache, DynamicLayer


def update_cache(cache: Cache, layer_idx: int, key: torch.Tensor, value: torch.Tensor):
    """`cache.update(key, value, layer_idx)`: the keys and values to attend over, this call's appended."""
    if not isinstance(cache, Cache):  # our decoder's preallocated cache (`jetmoe_model.decoding`)
        return cache.update(key, value, layer_idx)
    layers = cache.layers
    if (
        not torch.is_grad_enabled()
        and not cache.offloading
        and layer_idx < len(layers)
        and type(layers[layer_idx]) is DynamicLayer
        and not layers[layer_idx].is_initialized
    ):
        layer = layers[layer_idx]
        value = value.contiguous()
        layer.lazy_initialization(key, value)
        layer.keys, layer.values = key, value
        return key, value
    return cache.update(key, value, layer_idx)
