"""What `python -m align sft|dpo|pipeline --help` says: the recipe's sections and how to override any field from
the command line; `--help-fields` lists every field a recipe (or an override) can set, with its type and default,
read from the dataclasses the recipe is loaded into, so the list cannot drift from what is accepted."""

import argparse
import dataclasses
import re
import typing

from ..config.recipes import DEFAULT_REPORT_TO, PipelineRecipe, section_classes

SECTIONS = """\
recipe sections (YAML):
  model:      what to train: name_or_path (hub id or local dir), or init: random + config: {JetMoEConfig fields};
              dtype, attn_implementation, moe_backend (auto | torch | triton)
  tokenizer:  name_or_path (default: the model's), chat_template (default: zephyr)
  data:       the mixture: kind (sft | preference), sources [{path, train_split, test_split, weight}], seed, ...
  training:   trl.SFTConfig / trl.DPOConfig fields under TRL's own names
  lora:       optional: train LoRA adapters instead of the whole model (docs/lora.md)
  guard:      optional: nonfinite (stop | skip), max_skipped_steps, sigterm_grace (docs/pipeline.md)"""

OVERRIDES = """\
overrides: any recipe field after the recipe, --key value or --key=value (a bare --flag means true):
  --max_steps 3 --learning_rate 1e-5 --output_dir runs/x   training fields, under TRL's names
  --model.moe_backend torch --data.seed 1                  other sections as --section.field
  --model.config.hidden_size 32                            a key inside a mapping field
  --data.sources "[{path: data/samples/ultrachat}]"        values are read as YAML: --bf16 false, lists, maps
  --report_to wandb                                        trackers (default tensorboard, under output_dir/runs)"""

PIPELINE_OVERRIDES = """\
  on a pipeline: --output_dir moves both stages ({output_dir}/sft, {output_dir}/dpo); --sft.KEY v / --dpo.KEY v
  reach one stage; any other key reaches every stage that has it (--beta 0.2: DPO only)"""

MORE = """\
A misspelt key ends with one line naming it and the closest valid names (exit status 2).
--help-fields lists every field with its type and default; docs/pipeline.md explains the recipes."""


def epilog(command: str) -> str:
    overrides = OVERRIDES + ("\n" + PIPELINE_OVERRIDES if command == "pipeline" else "")
    return "\n\n".join((SECTIONS, overrides, MORE))


def _type_name(annotation) -> str:
    """`int`, `str | None`, `SchedulerType | str`: annotations without their module paths."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", text)


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    if field.default_factory is not dataclasses.MISSING:
        return repr(field.default_factory())
    return "(required)"


def field_lines(cls, prefix: str, defaults: dict | None = None) -> list[str]:
    """One line per field of `cls`: its key (after `prefix`), type and default."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    lines = []
    for field in dataclasses.fields(cls):
        if field.init:
            default = repr(defaults[field.name]) if field.name in defaults else _default_text(field)
            lines.append(f"  {prefix + field.name:<44} {_type_name(hints[field.name])} = {default}")
    return lines


def fields_help(command: str) -> str:
    from ..data import DataSource

    stages = ("sft", "dpo") if command == "pipeline" else (command,)
    blocks = []
    if command == "pipeline":
        blocks.append(["pipeline file (PipelineRecipe):", *field_lines(PipelineRecipe, "")])
    for section, cls in section_classes(stages[0]).items():
        if section == "training":
            for stage in stages:
                training = section_classes(stage)["training"]
                blocks.append([f"training ({training.__module__.split('.')[0]}.{training.__name__}; "
                               f"{stage} stage):",
                               *field_lines(training, "--", {"report_to": DEFAULT_REPORT_TO})])
            continue
        blocks.append([f"{section} ({cls.__name__}):", *field_lines(cls, f"--{section}.")])
        if section == "data":
            blocks.append(["each entry of data.sources (DataSource), in YAML or as a YAML list on the command line:",
                           *field_lines(DataSource, "")])
    return "\n\n".join("\n".join(block) for block in blocks)


class FieldsHelpAction(argparse.Action):
    """`--help-fields`: print every field of the command's recipe, then exit like --help."""

    def __init__(self, option_strings, dest, command: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="list every recipe field with its type and default",
                         **kwargs)
        self.command = command

    def __call__(self, parser, namespace, values, option_string=None):
        print(fields_help(self.command))
        parser.exit()


def add_accept_changes_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--resume_accept_changes", action="store_true",
                         help="with --resume: continue although the recipe changes what the checkpoint was trained "
                              "with (data, seeds, model, batch shape, optimizer, schedule); run.json records both")


def add_stage_command(commands, name: str) -> argparse.ArgumentParser:
    """The `sft`, `dpo` or `pipeline` subcommand, with the help that explains recipes and overrides."""
    what = {"sft": "run SFT from a recipe", "dpo": "run DPO from a recipe",
            "pipeline": "run SFT, then DPO from the SFT output, from a pipeline recipe"}[name]
    command = commands.add_parser(name, help=f"{what}; extra --key value pairs override it",
                                  description=f"{what[0].upper()}{what[1:]}; extra --key value pairs override it.",
                                  epilog=epilog(name), formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument("recipe", help="the YAML recipe" + (" (pipeline: sft, dpo, output_dir)"
                                                             if name == "pipeline" else ""))
    command.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    add_accept_changes_argument(command)
    command.add_argument("--help-fields", action=FieldsHelpAction, command=name)
    return command
