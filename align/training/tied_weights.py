"""Resuming without a false alarm about the tied output embedding.

A checkpoint of a model whose `lm_head` is tied to the input embedding does not store `lm_head.weight` (it is the
same tensor). `Trainer` loads a checkpoint non-strictly and warns "There were missing keys in the checkpoint model
loaded: ['lm_head.weight']" unless the model lists the key in `_keys_to_ignore_on_save`, which reads like a
corrupt checkpoint. Loading the embedding fills the shared tensor, so nothing is missing: such keys are dropped
from the report, and any key really missing is still reported.
"""


def tied_parameter_names(model) -> set[str]:
    """Names under which a parameter already named earlier appears again (`lm_head.weight` when tied)."""
    seen, tied = set(), set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.add(id(parameter))
    return tied


class TiedWeightsResumeMixin:
    """Mix in before a transformers trainer."""

    def _issue_warnings_after_load(self, load_result):
        tied = tied_parameter_names(self.accelerator.unwrap_model(self.model))
        missing = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))
