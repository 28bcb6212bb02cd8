"""`python -m align export ADAPTER_DIR OUT_DIR`: a LoRA adapter merged into its base, as a full checkpoint.

The base is the one the adapter names (`base_model_name_or_path`), so the adapter directory is all it takes. The
merge is stock PEFT's (`merge_and_unload`), the output the transformers JetMoe format with the tokenizer (the
adapter's, which carries the chat template, else the base's).
"""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ExportError(ValueError):
    """The adapter directory cannot be exported as it is; the message says what is missing."""


def export_merged(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    from transformers import AutoTokenizer

    from jetmoe_model import JetMoEForCausalLM

    from .lora.stage_support import adapter_base, is_adapter_dir, merge_adapter

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise ExportError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter directory)")
    base_path = adapter_base(adapter_dir)
    if not base_path:
        raise ExportError(f"{adapter_dir}/adapter_config.json: base_model_name_or_path is empty")

    merge_adapter(JetMoEForCausalLM.from_pretrained(base_path, dtype="auto"), adapter_dir).save_pretrained(out_dir)
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    AutoTokenizer.from_pretrained(str(adapter_dir) if has_tokenizer else base_path).save_pretrained(out_dir)
    return out_dir


@contextmanager
def full_checkpoint(model_dir: str) -> Iterator[str]:
    """A checkpoint (dir or hub id) as it is; a LoRA adapter dir merged into its base (`export_merged`), in a
    temporary dir removed on leaving, so what is evaluated is the merged model."""
    from .lora.stage_support import is_adapter_dir

    if not is_adapter_dir(model_dir):
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="merged-adapter-") as merged:
        yield str(export_merged(model_dir, merged))
