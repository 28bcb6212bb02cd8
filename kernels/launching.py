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

import inspect

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
        # Triton's interpreter decorates with an `InterpretedFunction`, launched as it is: decided at decoration, as
        # Triton decides it.
        self.interpreted = interpreting()
        if not self.interpreted:
            self.bind = _binder(kernel)

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
        # Triton's own launch asks for launch metadata only for its launch hook (it returns None without one).
        metadata = None if hooks.launch_enter_hook is None else compiled.launch_metadata(grid[:3], stream, *values)
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, metadata,
                     hooks.launch_enter_hook, hooks.launch_exit_hook, *values)  # fmt: skip
        return compiled

    def key(self, args: tuple, kwargs: dict, device: int) -> tuple[tuple | None, tuple]:
        """The call's key and its argument values in the kernel's order; key None where it cannot be keyed
        (a missing or unknown argument, or one of a kind the key does not know: Triton's own call then decides)."""
        try:
            return self.bind(device, *args, **kwargs)
        except (TypeError, _Unkeyable):
            return None, args


class _Unkeyable(Exception):
    """An argument of a kind the key does not know."""


def _keyed(value, unspecialised: bool):
    """What Triton specialises on in one argument that is not a constexpr, taken finer than Triton takes it: a
    tensor's dtype and 16-byte alignment, an integer's exact value (do-not-specialise ones: whether it fits 32 bits),
    a host TMA descriptor's tensor, shape, strides and tiles."""
    value_type = type(value)
    if value is None or value_type is bool:
        return value
    if value_type is torch.Tensor or value_type is torch.nn.Parameter:
        return value.dtype, value.data_ptr() % 16 == 0
    if value_type is int:
        return ("int32" if -(2**31) <= value < 2**31 else "int64") if unspecialised else value
    if value_type is float:
        return float
    if value_type.__name__ == "TensorDescriptor":  # the host TMA descriptor: tensor, shape, strides, tiles
        return (value.base.dtype, value.base.data_ptr() % 16 == 0, tuple(value.shape), tuple(value.strides),
                tuple(value.block_shape), getattr(value, "padding", None))  # fmt: skip
    raise _Unkeyable


def _binder(kernel):
    """`bind(device, *args, **kwargs) -> (key, values)` for `kernel`, generated from its parameters.

    Runs on every launch (~1,600 a LoRA DPO step, ~45 arguments for the expert matmul), so the work is done where
    Python is fastest: the arguments are bound to the kernel's parameters by a `def` with its signature, and the key
    is one tuple display. Tensors and integers, most of the arguments, are keyed inline; the rest by `_keyed`.
    Launch options (`num_warps`, ...) are the keyword arguments that are not parameters.
    """
    names, fields, defaults = [], [], {}
    for param in kernel.params:
        name = param.name
        names.append(name)
        if param.default is not inspect.Parameter.empty:
            defaults[name] = param.default
        if param.is_constexpr:
            fields.append(name)
        elif param.do_not_specialize:
            fields.append(f"_keyed({name}, True)")
        else:
            fields.append(f"(({name}.dtype, {name}.data_ptr() % 16 == 0) if type({name}) is _Tensor else "
                          f"{name} if type({name}) is int else _keyed({name}, False))")  # fmt: skip
    signature = ", ".join(f"{name}=_defaults[{name!r}]" if name in defaults else name for name in names)
    source = (
        f"def bind(_device, {signature}, **_options):\n"
        f"    _key = (_device, tuple(sorted(_options.items())) if _options else (), {', '.join(fields)},)\n"
        f"    return _key, ({', '.join(names)},)\n"
    )
    scope = {"_Tensor": torch.Tensor, "_keyed": _keyed, "_defaults": defaults}
    exec(compile(source, f"<quick launch key of {kernel.fn.__name__}>", "exec"), scope)
    return scope["bind"]


def quick_launch(kernel) -> QuickLaunch:
    """Decorate a `@triton.jit` kernel (outermost) so that repeated launches skip Triton's argument binding."""
    return QuickLaunch(kernel)
