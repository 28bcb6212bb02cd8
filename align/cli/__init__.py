"""The command line, `python -m align COMMAND ...` (also installed as `jetmoe-align`), on top of everything.

    commands   the commands and their arguments, each run with its user errors said in one line (exit 2)
    help_text  what `--help` and `--help-fields` say about recipes

May import any package of `align`; nothing in `align` imports it.
"""

from .commands import main

__all__ = ["main"]
