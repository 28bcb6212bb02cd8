"""Which optional outputs a forward returns: the argument where given, else the config's (transformers' rule, so
`config.output_hidden_states = True` or `from_pretrained(..., output_attentions=True)` work as with any model)."""


def requested_outputs(config, **flags: bool | None) -> tuple[bool, ...]:
    """`requested_outputs(config, output_attentions=None, ...)`: each flag as passed, else the config's field."""
    return tuple(bool(getattr(config, name, False)) if value is None else bool(value) for name, value in flags.items())
