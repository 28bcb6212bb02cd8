"""Launching a Triton kernel again without Triton's per-call argument binding.

A JetMoE-8B LoRA DPO step launches ~1,700 Triton kernels, and the step is limited by the host, not the GPU
(`bench/step_phases.py`: the GPU finishes each phase as soon as the host has issued it). Triton's `kernel[grid](...)`
binds, specialises and hashes every argument in Python on every call (the expert matmul has ~40); under cProfile
that was a fifth of the step's host time. `quick_launch` keeps each compiled kernel under a key of what Triton
specialises on, taken finer than Triton takes it: each tensor's dtype and 16-byte alignment, each specialised
integer's exact value (do-not-specialise ones by whether they fit 32 bits), each constexpr and launch option. A
call whose key was seen before goes straight to the compiled kernel's launcher, with the arguments in the order
Triton's own `run` passes them; any other call (first of its kind, a callable grid, an argument of a kind not
keyed here, Triton's CPU interpreter) goes through `kernel[grid](...)` as before.
"""

import torch

from .schedule import interpreting

_DRIVER = {}


def _current_stream(device: int):
    if not _DRIVER:
        from triton import knobs
        from triton.runtime import driver

        _DRIVER.update(stream=driver.active.get_current_stream, knobs=knobs)
    return _DRIVER["stream"](device)


class QuickLaunch:
    """A `@triton.jit` kernel launched as `kernel[grid](*args, **kwargs)`, its compiled forms kept by key."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled = {}
        # Triton's interpreter decorates with an `InterpretedFunction`, launched as it is. Decided once: reading the
        # environment on each of a step's ~1,600 launches cost ~1 us each.
        self.interpreted = interpreting()
        if self.interpreted:
            return
        self.names = list(kernel.arg_names)
        self.name_set = frozenset(self.names)
        self.kinds = [_CONSTEXPR if param.is_constexpr else _UNSPECIALISED if param.do_not_specialize else _VALUE
                      for param in kernel.params]  # fmt: skip

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid, args: tuple, kwargs: dict):
        if self.interpreted or callable(grid):
            return self.kernel[grid](*args, **kwargs)
        device = torch.cuda.current_device()
        key, values = self.key(args, kwargs, device)
        try:
            compiled = self.compiled.get(key) if key is not None else None
        except TypeError:  # an unhashable constexpr: Triton's own call
            key, compiled = None, None
        if compiled is None:
            compiled = self.kernel[grid](*args, **kwargs)
            if key is not None:
                self.compiled[key] = compiled
            return compiled
        stream = _current_stream(device)
        hooks = _DRIVER["knobs"].runtime
        grid = (*grid, 1, 1)
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata,
                     compiled.launch_metadata(grid[:3], stream, *values), hooks.launch_enter_hook,
                     hooks.launch_exit_hook, *values)  # fmt: skip
        return compiled

    def key(self, args: tuple, kwargs: dict, device: int) -> tuple[tuple | None, list]:
        """The call's key and its argument values in the kernel's order; key None where it cannot be keyed.

        Runs on every launch (~1,300 a DPO step), hence one pass over the arguments and exact-type dispatch."""
        values = list(args)
        try:
            values += [kwargs[name] for name in self.names[len(args):]]
        except KeyError:  # a missing argument: Triton's own call reports it
            return None, values
        options = tuple(sorted((name, kwargs[name]) for name in kwargs.keys() - self.name_set))
        parts = [device, options]
        append = parts.append
        for value, kind in zip(values, self.kinds):
            value_type = type(value)
            if kind is _CONSTEXPR or value is None or value_type is bool:
                append(value)
            elif value_type is torch.Tensor or value_type is torch.nn.Parameter:
                append((value.dtype, value.data_ptr() % 16 == 0))
            elif value_type is int:
                append(("int32" if -(2**31) <= value < 2**31 else "int64") if kind is _UNSPECIALISED else value)
            elif value_type is float:
                append(float)
            elif value_type.__name__ == "TensorDescriptor":  # the host TMA descriptor: tensor, shape, strides, tiles
                append((value.base.dtype, value.base.data_ptr() % 16 == 0, tuple(value.shape), tuple(value.strides),
                        tuple(value.block_shape), getattr(value, "padding", None)))  # fmt: skip
            else:
                return None, values
        return tuple(parts), values


_CONSTEXPR, _UNSPECIALISED, _VALUE = "constexpr", "unspecialised", "value"


def quick_launch(kernel) -> QuickLaunch:
    """Decorate a `@triton.jit` kernel (outermost) so that repeated launches skip Triton's argument binding."""
    return QuickLaunch(kernel)
