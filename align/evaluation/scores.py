"""The MT-Bench score table (per category and overall: turn 1, turn 2, their average, on the judge's 1-10 scale)
and its chart, from the judgments file. Failed and unparseable judgments are counted and listed, not averaged;
math, reasoning and coding judgments made without a reference answer (the general prompt) are counted: FastChat's
published scores grade those with references."""

import json
from pathlib import Path
from statistics import mean

from .judge import judged
from .questions import NEEDS_REFERENCE, PUBLISHED_JETMOE_8B_CHAT, TEMPERATURE, Question


def _row(scores: dict[int, list[float]]) -> dict:
    both = scores[1] + scores[2]
    return {"turn_1": mean(scores[1]) if scores[1] else None, "turn_2": mean(scores[2]) if scores[2] else None,
            "average": mean(both) if both else None, "judged": len(both)}


def score_table(questions: list[Question], judgment_file: Path) -> dict:
    rows = judged(judgment_file)
    by_category = {category: {1: [], 2: []} for category in TEMPERATURE}
    overall = {1: [], 2: []}
    failures, missing, without_reference = [], [], []
    for question in questions:
        for turn in (1, 2):
            row = rows.get((question.question_id, turn))
            if row is None:
                missing.append({"question_id": question.question_id, "turn": turn})
            elif row["score"] is None:
                failures.append({"question_id": question.question_id, "turn": turn, "error": row["error"]})
            else:
                if question.category in NEEDS_REFERENCE and "math" not in row["judge"][1]:
                    without_reference.append({"question_id": question.question_id, "turn": turn})
                by_category[question.category][turn].append(row["score"])
                overall[turn].append(row["score"])
    return {"categories": {category: _row(scores) for category, scores in by_category.items() if any(scores.values())},
            "overall": _row(overall), "failed": failures, "missing": missing,
            "without_reference": without_reference,
            "judges": sorted({tuple(row["judge"]) for row in rows.values()})}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(table: dict, model_id: str, note: str = "") -> str:
    lines = [f"# MT-Bench: {model_id}", "", note, "", "| category | turn 1 | turn 2 | average | judged |",
             "|---|---|---|---|---|"]
    for name, row in [*table["categories"].items(), ("**overall**", table["overall"])]:
        lines.append(f"| {name} | {_cell(row['turn_1'])} | {_cell(row['turn_2'])} | {_cell(row['average'])} | "
                     f"{row['judged']} |")
    lines += ["", f"JetMoE-8B-Chat's published MT-Bench average: {PUBLISHED_JETMOE_8B_CHAT} (its overall only).",
              f"Failed or unparseable judgments: {len(table['failed'])}; not yet judged: {len(table['missing'])}."]
    lines += [f"- question {f['question_id']} turn {f['turn']}: {f['error']}" for f in table["failed"]]
    if table["without_reference"]:
        lines.append(f"Math, reasoning and coding judgments made without a reference answer (general prompt): "
                     f"{len(table['without_reference'])} (pass --reference-answers to grade them as FastChat does).")
    return "\n".join(lines) + "\n"


def write_scores(table: dict, out_dir: Path, model_id: str, note: str = "") -> list[Path]:
    """scores.json, scores.md and scores.png in `out_dir`."""
    (out_dir / "scores.json").write_text(json.dumps({**table, "note": note}, indent=1) + "\n")
    (out_dir / "scores.md").write_text(markdown(table, model_id, note))
    write_chart(table, out_dir / "scores.png", model_id)
    return [out_dir / "scores.json", out_dir / "scores.md", out_dir / "scores.png"]


def write_chart(table: dict, path: Path, model_id: str) -> None:
    """Per-category averages as bars, our overall and the published JetMoE-8B-Chat overall as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, row in table["categories"].items() if row["average"] is not None]
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    axes.bar(names, [table["categories"][name]["average"] for name in names], color="#4c72b0", label=model_id)
    if table["overall"]["average"] is not None:
        axes.axhline(table["overall"]["average"], color="#4c72b0", linestyle="--",
                     label=f"{model_id}, overall {table['overall']['average']:.2f}")
    axes.axhline(PUBLISHED_JETMOE_8B_CHAT, color="#c44e52", linestyle=":",
                 label=f"JetMoE-8B-Chat, published overall {PUBLISHED_JETMOE_8B_CHAT}")
    axes.set_ylim(0, 10)
    axes.set_ylabel("judge score (1-10)")
    axes.set_title("MT-Bench by category")
    axes.legend(loc="upper right", fontsize=8)
    figure.autofmt_xdate(rotation=30)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
