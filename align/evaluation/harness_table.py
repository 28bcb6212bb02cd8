"""The harness table: a row per task and metric, a column per model (in the order given: base -> SFT -> DPO shows
what alignment changed), and JetMoE-8B's published number beside the model card's tasks. Read from the results
files lm-eval wrote, so it shows whatever pairs are done. Model-card tasks in percent, as the card; other tasks in
lm-eval's own units.
Where each (model, task)'s results file lies (`result_file`) is said here too: `harness` writes them, the table
reads them."""

import json
from pathlib import Path
from statistics import mean

from .harness_presets import PRESETS, PUBLISHED_AVERAGE

PUBLISHED = "JetMoE-8B (model card)"
_NOT_METRICS = {"alias", "name", "sample_len", " ", ""}


def model_key(model_dir: str) -> str:
    """The directory a model's results go to: its path (or hub id) as lm-eval sanitises model names, so that
    `runs/a/dpo` and `runs/b/dpo` stay apart."""
    from lm_eval.utils import sanitize_model_name

    return sanitize_model_name(str(model_dir).rstrip("/").removeprefix("./"))


def result_file(out: Path, model_dir: str, task: str) -> Path:
    return out / model_key(model_dir) / f"{task}.json"


def _record(out: Path, model_dir: str, task: str) -> dict | None:
    path = result_file(out, model_dir, task)
    return json.loads(path.read_text()) if path.is_file() else None


def _value(record: dict | None, task: str, metric: str) -> float | None:
    if record is None:
        return None
    for section in ("groups", "results"):
        value = record.get(section, {}).get(task, {}).get(metric)
        if isinstance(value, int | float):
            return float(value)
    return None


def _shots(record: dict | None, task: str) -> int | None:
    if record is None:
        return None
    given = record.get("align", {}).get("num_fewshot")
    return given if given is not None else record.get("n-shot", {}).get(task)


def _metrics(records: list[dict | None], task: str) -> list[str]:
    """A preset's metric; for other tasks every metric lm-eval reported (stderrs left out)."""
    if task in PRESETS:
        return [PRESETS[task].metric]
    for record in records:
        if record is not None:
            found = record.get("groups", {}).get(task) or record.get("results", {}).get(task, {})
            return [key for key in found if key.split(",")[0] not in _NOT_METRICS and "_stderr" not in key
                    and isinstance(found[key], int | float)]  # fmt: skip
    return []


def harness_table(out: Path, model_dirs: list[str], tasks: list[str]) -> dict:
    rows = []
    for task in tasks:
        records = [_record(out, model, task) for model in model_dirs]
        preset = PRESETS.get(task)
        scale = 100.0 if preset else 1.0
        given_shots = {shots for record in records if (shots := _shots(record, task)) is not None}
        shots = given_shots.pop() if len(given_shots) == 1 else None
        for metric in _metrics(records, task) or [None]:
            values = [None if metric is None or (v := _value(r, task, metric)) is None else v * scale for r in records]
            rows.append({
                "task": task, "label": preset.label if preset else task, "metric": metric, "shots": shots,
                "percent": bool(preset), "values": values,
                # beside ours only when ours ran as the card did
                "published": preset.published if preset and shots == preset.num_fewshot else None,
                "card_shots": preset.num_fewshot if preset else None,
            })  # fmt: skip
    if all(task in tasks for task in PRESETS):
        preset_rows = [row for row in rows if row["task"] in PRESETS]
        averages = [None if any(row["values"][i] is None for row in preset_rows) else
                    mean(row["values"][i] for row in preset_rows) for i in range(len(model_dirs))]  # fmt: skip
        rows.append({"task": "average", "label": "Average (the six)", "metric": None, "shots": None,
                     "percent": True, "values": averages, "published": PUBLISHED_AVERAGE, "card_shots": None})
    return {"models": list(model_dirs), "rows": rows}


def _cell(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if percent else f"{value:.4g}"


def markdown(table: dict) -> str:
    header = ["task", "shots", "metric", *table["models"], PUBLISHED]
    lines = ["# lm-evaluation-harness", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        metric = "" if row["metric"] is None else row["metric"].replace(",none", "") + (" (%)" if row["percent"] else "")
        published = _cell(row["published"], True)
        if row["published"] is None and row["card_shots"] is not None:
            published = f"- (card: {row['card_shots']}-shot)"
        cells = [row["label"], "" if row["shots"] is None else str(row["shots"]), metric,
                 *(_cell(value, row["percent"]) for value in row["values"]), published]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Model-card tasks in percent (the card's shots and metric); other tasks in lm-eval's units. "
              "\"-\": not evaluated yet (or not reported). Each cell is one lm-eval run: MODEL/TASK.json here."]
    return "\n".join(lines) + "\n"


def write_table(table: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "harness.json").write_text(json.dumps(table, indent=1) + "\n")
    (out / "harness.md").write_text(markdown(table))
    write_chart(table, out / "harness.png")
    return [out / "harness.md", out / "harness.json", out / "harness.png"]


def write_chart(table: dict, path: Path) -> None:
    """One panel per row (tasks differ in scale): a bar per model, the published number hatched."""
    from matplotlib.figure import Figure

    rows = table["rows"]
    columns = min(3, max(1, len(rows)))
    lines = -(-len(rows) // columns)
    names = [*table["models"], PUBLISHED]
    figure = Figure(figsize=(4.2 * columns, 3.2 * lines + 0.8), dpi=100, layout="constrained")
    for index, row in enumerate(rows):
        axes = figure.add_subplot(lines, columns, index + 1)
        values = [*row["values"], row["published"]]
        for position, (name, value) in enumerate(zip(names, values)):
            if value is not None:
                axes.bar(position, value, color=f"C{position}" if name != PUBLISHED else "0.75",
                         hatch="//" if name == PUBLISHED else None, label=name)  # fmt: skip
                axes.annotate(_cell(value, row["percent"]), (position, value), ha="center", va="bottom", fontsize=7)
        axes.set_xticks(range(len(names)), [str(i + 1) if n != PUBLISHED else "card" for i, n in enumerate(names)])
        metric = "" if row["metric"] is None else row["metric"].replace(",none", "")
        axes.set_title(f"{row['label']} {metric}" + (f", {row['shots']}-shot" if row["shots"] is not None else ""),
                       fontsize=9)  # fmt: skip
        axes.margins(y=0.15)
    legend = [f"{i + 1}: {name}" for i, name in enumerate(table["models"])] + [f"card: {PUBLISHED}"]
    figure.suptitle("lm-evaluation-harness: " + "   ".join(legend), fontsize=9)
    figure.savefig(path)
