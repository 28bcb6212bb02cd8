"""Errors and drop reasons shared by the data layer.

`DataError` is what users see: it always says which file (or hub id), which row and which field, so a bad
record can be found without a debugger. `RowProblem` is the internal signal a normaliser or check raises for one
row; the loader either counts it under its reason (lenient mode) or turns it into a `DataError` (strict mode).
"""

from __future__ import annotations

# Structural problems: the row does not have the shape its format promises. Strict mode raises on these.
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_ROLE = "unknown_role"
WRONG_ROLE_ORDER = "wrong_role_order"  # turns must go (system) user, assistant, user, ... ; responses begin with one
PROMPT_MISMATCH = "prompt_mismatch"  # chosen and rejected answer different prompts, or disagree with `prompt`
STRUCTURAL_REASONS = (INVALID_JSON, MISSING_FIELD, WRONG_TYPE, UNKNOWN_ROLE, WRONG_ROLE_ORDER, PROMPT_MISMATCH)

# Content filters: the row is well formed but unusable for training. Always dropped and counted.
EMPTY_CONTENT = "empty_content"
NO_ASSISTANT_TURN = "no_assistant_turn"
CHOSEN_EQUALS_REJECTED = "chosen_equals_rejected"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
FULLY_MASKED = "fully_masked"  # truncation to the trainer's max_length would leave no token to train on
FILTER_REASONS = (EMPTY_CONTENT, NO_ASSISTANT_TURN, CHOSEN_EQUALS_REJECTED, TOO_LONG, DUPLICATE, FULLY_MASKED)

DROP_REASONS = STRUCTURAL_REASONS + FILTER_REASONS


class DataError(ValueError):
    """A data source cannot be used as given; the message names the path, the 1-based row and the field."""

    def __init__(self, path: str | None, message: str, row: int | None = None, field: str | None = None,
                 reason: str | None = None):
        self.path, self.row, self.field, self.reason = path, row, field, reason
        where = [str(path) if path is not None else "data"]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {message}")


class RowProblem(Exception):
    """Why one row cannot be used: a drop reason, the field at fault and a human-readable detail."""

    def __init__(self, reason: str, field: str | None, detail: str):
        assert reason in DROP_REASONS, reason
        self.reason, self.field, self.detail = reason, field, detail
        super().__init__(f"{reason} ({field}): {detail}")

    @property
    def structural(self) -> bool:
        return self.reason in STRUCTURAL_REASONS
