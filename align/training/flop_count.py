"""transformers' FLOP count (`total_flos`) with the model's parameters counted once, not on every step.

`Trainer.floating_point_ops` is `6 x input tokens x model.num_parameters(exclude_embeddings=True)` (its docstring
invites an override), and `num_parameters` walks every module for the embeddings, then every parameter, on each
training step: 2.7 ms a step on a CI core for JetMoE-8B with LoRA (~1,600 modules), in a step whose host time paces
the GPU. A trainer's model keeps its parameters while it trains.
"""


class CountParametersOnceMixin:
    """Mix in before a transformers `Trainer`."""

    _counted_parameters: int | None = None

    def floating_point_ops(self, inputs) -> int:
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return super().floating_point_ops(inputs)
        if self._counted_parameters is None:
            self._counted_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._counted_parameters
