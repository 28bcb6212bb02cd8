"""`python -m align export ADAPTER_DIR OUT_DIR`: a LoRA adapter merged into its base, as a full checkpoint.

The base is the one the adapter names (`base_model_name_or_path`), so the adapter directory is all it takes. The
merge is stock PEFT's (`merge_and_unload`), the output the transformers JetMoe format with the tokenizer (the
adapter's, which carries the chat template, else the base's).

The target is checked before anything loads: an existing non-empty one is refused unless `overwrite` (a merge
written over a finished run would sit beside its old run.json and checkpoints), and the adapter's own inputs,
the adapter directory and the base it names, are never written over (a merge into the base would be merged again
by the next export). The merge is written beside the target and renamed into place when complete, so a failed
export leaves the target as it was.
"""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ExportError(ValueError):
    """The adapter directory cannot be exported as it is, or not to that target; the message says why."""


def export_merged(adapter_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    from transformers import AutoTokenizer

    from jetmoe_model import JetMoEForCausalLM

    from ..lora.stage_support import adapter_base, is_adapter_dir, merge_adapter
    from ..model.tokenizer import TOKENIZER_FILES, has_tokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise ExportError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter directory)")
    base_path = adapter_base(adapter_dir)
    if not base_path:
        raise ExportError(f"{adapter_dir}/adapter_config.json: base_model_name_or_path is empty")
    check_target(adapter_dir, base_path, out_dir, overwrite)
    tokenizer_source = str(adapter_dir) if has_tokenizer(adapter_dir) else base_path
    if Path(tokenizer_source).is_dir() and not has_tokenizer(tokenizer_source):
        raise ExportError(f"{adapter_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) in the adapter directory "
                          f"or its base {base_path}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    try:
        merged = merge_adapter(JetMoEForCausalLM.from_pretrained(base_path, dtype="auto"), adapter_dir)
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(staging)
        _replace(out_dir, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def check_target(adapter_dir: Path, base_path: str, out_dir: Path, overwrite: bool) -> None:
    """`ExportError` when `out_dir` would write over the adapter or its base (always), or over anything else
    (unless `overwrite`)."""
    target, adapter = out_dir.resolve(), adapter_dir.resolve()
    inputs = [("the adapter directory", adapter, False)]
    if Path(base_path).exists():
        inputs.append(("the adapter's base model", Path(base_path).resolve(), True))
    for what, path, inside_too in inputs:
        if target == path or target in path.parents or inside_too and path in target.parents:
            raise ExportError(f"{out_dir}: would write over {what} ({path}); choose another output directory")
    if overwrite:
        return
    if adapter in target.parents:
        raise ExportError(f"{out_dir}: inside the adapter directory {adapter_dir}; choose another output directory "
                          "or pass --overwrite")
    if out_dir.is_file() or out_dir.is_dir() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir}: already exists and is not empty; choose another output directory or pass "
                          "--overwrite to replace it")


def _replace(out_dir: Path, staged: Path) -> None:
    """Put the complete merge at `out_dir`, replacing what is there (which `check_target` allowed)."""
    if out_dir.is_dir() and not out_dir.is_symlink():
        old = staged.with_name(staged.name + ".old")
        out_dir.rename(old)
        staged.rename(out_dir)
        shutil.rmtree(old)
        return
    if out_dir.exists() or out_dir.is_symlink():
        out_dir.unlink()
    staged.rename(out_dir)


@contextmanager
def full_checkpoint(model_dir: str) -> Iterator[str]:
    """A checkpoint (dir or hub id) as it is; a LoRA adapter dir merged into its base (`export_merged`), in a
    temporary dir removed on leaving, so what is evaluated is the merged model."""
    from ..lora.stage_support import is_adapter_dir

    if not is_adapter_dir(model_dir):
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="merged-adapter-") as merged:
        yield str(export_merged(model_dir, merged))
