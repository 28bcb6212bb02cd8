"""Recipes: YAML files read into typed dataclasses, with `--key value` overrides from the command line.

A stage recipe has four sections:

    model:      ModelArgs     (what to train: a checkpoint, or a random init from config fields)
    tokenizer:  TokenizerArgs (defaults to the model's tokenizer; the chat template to set on it)
    data:       align.data.DataMixture (the sources to mix)
    training:   trl.SFTConfig or trl.DPOConfig fields, under TRL's own names
    lora:       align.lora.arguments.LoraArguments (optional: when present, the stage trains LoRA adapters)
    guard:      align.config.guard_args.GuardArgs (optional: non-finite loss or gradient, SIGTERM)

Overrides use TRL's names for training fields (`--output_dir X --max_steps 3`) and `section.field` for the
others (`--model.moe_backend torch`, `--data.seed 1`). Unknown keys, in a file or on the command line, are errors
that name the key and the file. YAML scalars are converted to the field's type, so `learning_rate: 2e-5` (a string
to YAML) still reads as a float.
"""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..data import DataMixture, DataSource
from ..evaluation.settings import HarnessSettings, MTBenchSettings, PipelineEval
from ..lora.arguments import LoraArguments
from .guard_args import GuardArgs

STAGES = ("sft", "dpo")
SECTIONS = ("model", "tokenizer", "data", "training", "lora", "guard")
# The tracker a recipe reports to unless its training section says otherwise (`report_to: none`, `wandb`, ...):
# TensorBoard event files under {output_dir}/runs/.
DEFAULT_REPORT_TO = "tensorboard"


class RecipeError(ValueError):
    """A recipe cannot be used as written; the message names the file and the key."""


def did_you_mean(name: str, known) -> str:
    """"; did you mean 'max_steps'?" for a misspelt key, or "" when no valid name is close."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(match) for match in close)}?" if close else ""


@dataclass
class ModelArgs:
    """`init: pretrained` loads `name_or_path` (hub id or local directory); `init: random` builds a fresh model from
    `config` (JetMoEConfig fields) on top of `name_or_path`'s config.json when given, seeded by `training.seed`."""

    name_or_path: str | None = None
    init: Literal["pretrained", "random"] = "pretrained"
    config: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    attn_implementation: str | None = "sdpa"
    moe_backend: Literal["auto", "torch", "triton"] = "auto"


@dataclass
class TokenizerArgs:
    name_or_path: str | None = None  # None: the model's
    chat_template: str = "zephyr"  # a name from align.model.chat_template, or a Jinja template


@dataclass
class Recipe:
    stage: str
    path: str
    model: ModelArgs
    tokenizer: TokenizerArgs
    data: DataMixture
    training: Any  # trl.SFTConfig | trl.DPOConfig
    lora: LoraArguments | None = None
    guard: GuardArgs = field(default_factory=GuardArgs)

    @property
    def tokenizer_name_or_path(self) -> str:
        return self.tokenizer.name_or_path or self.model.name_or_path

    def as_dict(self) -> dict:
        """The resolved recipe, as run.json records it."""
        return {
            "stage": self.stage,
            "path": self.path,
            "model": dataclasses.asdict(self.model),
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "data": dataclasses.asdict(self.data),
            "training": self.training.to_dict(),
            "lora": dataclasses.asdict(self.lora) if self.lora else None,
            "guard": dataclasses.asdict(self.guard),
        }


@dataclass
class PipelineRecipe:
    """SFT, then DPO from the SFT output. Stage recipes are paths relative to this file; their outputs go to
    `{output_dir}/sft` and `{output_dir}/dpo`."""

    sft: str
    dpo: str
    output_dir: str
    eval: dict | None = None  # optional: MT-Bench on the DPO output, lm-eval harness tasks (load_pipeline_eval)


def training_config_class(stage: str):
    from trl import DPOConfig, SFTConfig

    return {"sft": SFTConfig, "dpo": DPOConfig}[stage]


# --- reading values ------------------------------------------------------------------------------------------------


def _type_options(annotation) -> tuple:
    """The plain types a field accepts: `int | None` -> (int, NoneType); `Literal["a"]` -> ("a",)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(option for arg in typing.get_args(annotation) for option in _type_options(arg))
    if origin is Literal:
        return typing.get_args(annotation)
    return (origin or annotation,)


class CommandLineValue(str):
    """A value typed on the command line: kept verbatim for text fields (`--eval_strategy no` stays "no"), read
    as YAML for the others (`--max_steps 3`, `--bf16 false`, `--data.sources "[{path: x}]"`)."""


def _convert(value, annotation, where: str):
    """`value` (from YAML, or from the command line) as the field's type."""
    options = _type_options(annotation)
    if isinstance(value, CommandLineValue):
        if any(isinstance(option, type) and issubclass(option, str) for option in options):
            return str(value)
        value = yaml.safe_load(value) if value.strip() else str(value)
    if value is None and (type(None) in options or Any in options):
        return None
    literals = [option for option in options if not isinstance(option, type) and option is not Any]
    if literals and value in literals:
        return value
    if Any in options:
        return value
    if isinstance(value, bool):
        if bool in options:
            return value
    elif isinstance(value, (int, float, str)):
        if int in options and isinstance(value, int):
            return value
        if float in options:
            try:
                return float(value)
            except ValueError:
                pass
    if isinstance(value, list) and list in options or isinstance(value, dict) and dict in options:
        return value
    if str in options or any(isinstance(option, type) and issubclass(option, str) for option in options):
        return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    expected = " or ".join(repr(o) if not isinstance(o, type) else o.__name__ for o in options)
    raise RecipeError(f"{where}: {value!r} is not a valid value (expected {expected})")


def _build(cls, mapping, where: str):
    """`cls(**mapping)`, rejecting unknown keys by name and converting each value to its field's type; every bad
    key of the mapping is reported, in one `RecipeError`."""
    if not isinstance(mapping, dict):
        raise RecipeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(mapping).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    problems = [f"{where}: unknown key '{key}' (not a {cls.__name__} field){did_you_mean(key, known)}"
                for key in sorted(set(mapping) - known)]
    kwargs = {}
    for key, value in mapping.items():
        if key not in known:
            continue
        try:
            kwargs[key] = _field_value(value, hints[key], f"{where}.{key}")
        except RecipeError as error:
            problems.append(str(error))
    if problems:
        raise RecipeError("; ".join(problems))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        raise RecipeError(f"{where}: {error}") from None


def _field_value(value, annotation, where: str):
    if typing.get_origin(annotation) is list and typing.get_args(annotation) == (DataSource,):
        value = yaml.safe_load(value) if isinstance(value, CommandLineValue) else value
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list of data sources")
        return [_build(DataSource, item, f"{where}[{i}]") for i, item in enumerate(value)]
    return _convert(value, annotation, where)


# --- files and overrides -------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{line}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(content, dict):
        raise RecipeError(f"{path}: expected a mapping of sections at the top level")
    return content


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`["--max_steps", "3", "--model.dtype", "float32", "--bf16"]` -> {"max_steps": "3", "model.dtype": "float32",
    "bf16": "true"}, as `CommandLineValue`s that each field converts to its type; a flag with no value means
    true."""
    overrides, i = {}, 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise RecipeError(f"command line: expected --key value, got {token!r}")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            else:
                value = "true"
        overrides[key.replace("-", "_")] = CommandLineValue(value)
        i += 1
    return overrides


def _section_and_name(key: str) -> tuple[str, str]:
    section, dot, name = key.partition(".")
    return (section, name) if dot else ("training", key)


def _apply_overrides(sections: dict, overrides: dict, path: str) -> None:
    """Write each `--key value` into its section; `model.config.hidden_size` reaches into mapping fields."""
    for key, value in overrides.items():
        section, name = _section_and_name(key)
        if section not in SECTIONS:
            raise RecipeError(f"command line: unknown section in '--{key}' for {path} (sections are {SECTIONS})"
                              f"{did_you_mean(section, SECTIONS)}")
        target = sections.setdefault(section, {}) or {}
        sections[section] = target
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise RecipeError(f"command line: '--{key}' for {path}: {parent} is not a mapping")
        # Inside a mapping field (model.config) there is no declared type to go by: read the value as YAML.
        target[leaf] = yaml.safe_load(value) if parents and isinstance(value, CommandLineValue) else value


def load_recipe(path: str | Path, stage: str, overrides: dict | None = None) -> Recipe:
    """Read a stage recipe, apply command-line overrides, and check every key and value."""
    path = str(path)
    sections = read_yaml(path)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise RecipeError(f"{path}: unknown key '{unknown[0]}' (sections are {', '.join(SECTIONS)})"
                          f"{did_you_mean(unknown[0], SECTIONS)}")
    config_class = training_config_class(stage)
    _apply_overrides(sections, overrides or {}, path)
    if not sections.get("data"):
        raise RecipeError(f"{path}: a recipe needs a data section")
    # The step guard stops on a non-finite loss; transformers' filter would read every micro-batch's loss back to
    # the host to hide it (align.training.step_guard).
    defaults = {"training": {"report_to": DEFAULT_REPORT_TO, "logging_nan_inf_filter": False}}
    problems, built = [], {}
    for name, cls in (("model", ModelArgs), ("tokenizer", TokenizerArgs), ("data", DataMixture),
                      ("training", config_class), ("lora", LoraArguments), ("guard", GuardArgs)):
        if name == "lora" and "lora" not in sections:
            continue
        try:
            mapping = {**defaults.get(name, {}), **(sections.get(name) or {})}
            built[name] = _build(cls, mapping, f"{path}: {name}")
        except RecipeError as error:  # every section is checked, so one run reports every mistake
            problems.append(str(error))
    if problems:
        raise RecipeError("; ".join(problems))
    recipe = Recipe(stage=stage, path=path, **built)
    if recipe.model.init == "pretrained" and not recipe.model.name_or_path:
        raise RecipeError(f"{path}: model.name_or_path is required unless model.init is random")
    if not recipe.tokenizer_name_or_path:
        raise RecipeError(f"{path}: tokenizer.name_or_path is required when the model has no name_or_path")
    return recipe


def load_pipeline(path: str | Path, overrides: dict | None = None) -> tuple[Recipe, Recipe]:
    """The SFT and DPO recipes of a pipeline, DPO starting from the SFT output.

    `--output_dir` moves the whole pipeline; `--sft.KEY v` / `--dpo.KEY v` reach one stage; any other `--KEY v`
    goes to every stage that has that key (`--max_steps 3` to both, `--beta 0.1` to DPO)."""
    path = Path(path)
    pipeline = _build(PipelineRecipe, read_yaml(path), str(path))
    overrides = dict(overrides or {})
    output_dir = overrides.pop("output_dir", pipeline.output_dir)
    per_stage = {stage: {} for stage in STAGES}
    for key, value in overrides.items():
        stage, dot, rest = key.partition(".")
        if dot and stage in STAGES:
            per_stage[stage][rest] = value
            continue
        targets = [s for s in STAGES if _stage_has_key(s, key)]
        if not targets:
            known = {name for stage in STAGES for name in override_keys(stage)}
            raise RecipeError(f"command line: unknown key '--{key}' for {path}{did_you_mean(key, known)}")
        for stage in targets:
            per_stage[stage][key] = value
    recipes = []
    for stage in STAGES:
        stage_overrides = {"output_dir": str(Path(output_dir) / stage), **per_stage[stage]}
        if stage == "dpo":
            stage_overrides.update({"model.name_or_path": recipes[0].training.output_dir, "model.init": "pretrained"})
        recipes.append(load_recipe(path.parent / getattr(pipeline, stage), stage, stage_overrides))
    return recipes[0], recipes[1]


def load_pipeline_eval(path: str | Path) -> PipelineEval | None:
    """The pipeline's `eval:` section, checked before anything trains; None without one. MT-Bench's fields (as
    before), or `mt_bench:` and/or `harness:` sections (`HarnessSettings`: lm-eval tasks on base, SFT and DPO)."""
    section = _build(PipelineRecipe, read_yaml(path), str(path)).eval
    if section is None:
        return None
    if not isinstance(section, dict) or not {"mt_bench", "harness"} & set(section):
        return PipelineEval(mt_bench=_build(MTBenchSettings, section, f"{path}: eval"))
    extra = sorted(set(section) - {"mt_bench", "harness"})
    if extra:
        raise RecipeError(f"{path}: eval: with mt_bench: or harness: sections, MT-Bench's fields go under mt_bench: "
                          f"(found {', '.join(extra)})")
    mt_bench, harness = section.get("mt_bench"), section.get("harness")
    return PipelineEval(
        mt_bench=None if mt_bench is None else _build(MTBenchSettings, mt_bench, f"{path}: eval.mt_bench"),
        harness=None if harness is None else _build(HarnessSettings, harness, f"{path}: eval.harness"),
    )


def section_classes(stage: str) -> dict[str, type]:
    """The dataclass each section of a stage recipe is read into."""
    return {"model": ModelArgs, "tokenizer": TokenizerArgs, "data": DataMixture,
            "training": training_config_class(stage), "lora": LoraArguments, "guard": GuardArgs}


def override_keys(stage: str) -> list[str]:
    """Every `--key` a stage takes: training fields by name, the other sections' as `section.field`."""
    return [field.name if section == "training" else f"{section}.{field.name}"
            for section, cls in section_classes(stage).items() for field in dataclasses.fields(cls) if field.init]


def _stage_has_key(stage: str, key: str) -> bool:
    section, name = _section_and_name(key)
    cls = section_classes(stage).get(section)
    return cls is not None and name.split(".")[0] in {f.name for f in dataclasses.fields(cls)}
