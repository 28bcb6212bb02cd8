"""PNG plots of a stage's log history, written next to its checkpoint: curves a person would rather look at than
read from `trainer_state.json`. Each plot shows the train series (solid) and, where the run evaluated, the
matching `eval_` series (dashed, dots) over optimizer steps; a plot none of whose metrics were logged is skipped,
so SFT gets its loss and router losses and DPO also its rewards, margins and accuracies."""

from pathlib import Path

from matplotlib.figure import Figure

from .atomic_files import write_atomically

# file name: (title, the metrics it shows, under the names the trainers log them)
PLOTS = {
    "loss.png": ("loss", ("loss",)),
    "router_losses.png": ("router losses (load balancing, z-loss)", ("aux_loss", "router_z_loss")),
    "rewards.png": ("rewards of chosen and rejected answers", ("rewards/chosen", "rewards/rejected")),
    "margins.png": ("reward margin (chosen - rejected)", ("rewards/margins",)),
    "accuracies.png": ("reward accuracy (chosen above rejected)", ("rewards/accuracies",)),
}


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The (steps, values) at which `key` was logged (a non-finite value read back from JSON is a string: "NaN")."""
    points = [(entry["step"], float(entry[key])) for entry in log_history if key in entry and "step" in entry]
    return [step for step, _ in points], [value for _, value in points]


def plot_log_history(log_history: list[dict], output_dir: str | Path, stage: str) -> list[Path]:
    """Write each plot of `PLOTS` that has data into `output_dir`; return their paths."""
    written = []
    for name, (title, keys) in PLOTS.items():
        figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
        axes = figure.add_subplot()
        for color, key in enumerate(keys):
            for split, metric, style in (("train", key, {"linestyle": "-"}),
                                         ("eval", f"eval_{key}", {"linestyle": "--", "marker": "o"})):
                steps, values = series(log_history, metric)
                if steps:
                    axes.plot(steps, values, color=f"C{color}", label=f"{split} {key}", **style)
        if not axes.lines:
            continue
        axes.set(title=f"{stage}: {title}", xlabel="step")
        axes.grid(alpha=0.3)
        axes.legend()
        path = Path(output_dir) / name
        write_atomically(path, lambda temporary: figure.savefig(temporary, format="png"))
        written.append(path)
    return written
