"""A saved chat model put to use: answering with it and exporting it.

    generate  answers to one question, a chat on stdin, or a file of prompts in batches
    export    a LoRA adapter merged into its base, as a full checkpoint

May import: `align.config`, `align.data`, `align.model`, `align.runs`, `align.lora`. Not the stages, evaluation
or the command line.
"""
