"""A named error for checkpoints whose tensor shapes do not fit the config they are loaded with."""

import os

import torch
from safetensors import safe_open


class JetMoECheckpointError(ValueError):
    pass


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a local safetensors checkpoint directory, read from the file headers only."""
    shapes = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), framework="pt") as f:
                shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


def shape_mismatches(model_class, config, path: str) -> list[str]:
    with torch.device("meta"):
        expected = {name: tuple(p.shape) for name, p in model_class(config).state_dict().items()}
    found = checkpoint_shapes(path)
    return [
        f"{key}: checkpoint {found[key]} vs config {expected[key]}"
        for key in sorted(found.keys() & expected.keys())
        if found[key] != expected[key]
    ]
