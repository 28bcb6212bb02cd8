"""Data preparation at the recipes' scale, as users feel it: whole `python -m align` launches of the JetMoE-8B LoRA
recipes, from the launch to the end of the first optimizer step, on a CPU machine.

    PYTHONPATH=. python bench/bench_data_prep.py --rows 20000 --out runs/bench_data_prep.json
    PYTHONPATH=. python bench/bench_data_prep.py --rows 20000 --baseline-tree /tmp/before   # + the previous path

The recipes are `recipes/jetmoe-8b-chat/{sft,dpo}/config_lora.yaml` as shipped, overridden only where a CPU needs it
(a tiny random JetMoE saved by `align init-tiny` as the base model, float32, `--use_cpu`), with the synthetic data of
`bench/synthetic_data.py` (SFT conversations of the HuggingFaceH4 mixture's lengths, UltraFeedback-like pairs) as
their only source, `--max_steps 1` and no SFT evaluation or checkpoint. Each launch is one process tree timed by
`/usr/bin/time` (wall, user + sys CPU of the whole tree, the largest process's peak RSS); from the stage's
`train.log`, the seconds from the launch to the start of training (the end of step 1 less the training's runtime)
and to the end of step 1. One process accumulates two micro-batches a step where two processes take one each, so
both launches do the same work but for the data preparation.

Runs, each on data not prepared before unless said:
- SFT first launch; SFT relaunch into a new output dir (the data prepared by the first); SFT as a 2-process
  `accelerate launch` (`recipes/accelerate_configs/cpu_2proc.yaml`), whose CPU time is compared with the first
  launch's; `align prepare` of the SFT recipe alone; DPO first launch.
- With `--baseline-tree DIR` (a checkout of an earlier commit, e.g. `git worktree add /tmp/before 492ccc9`), the SFT
  and DPO first launches of that tree's code in the same run, for the ratios.
The full recipe's preparation time is projected from the measured rows/s per core.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO)]
import synthetic_data  # noqa: E402

SFT_RECIPE = "recipes/jetmoe-8b-chat/sft/config_lora.yaml"
DPO_RECIPE = "recipes/jetmoe-8b-chat/dpo/config_lora.yaml"
CPU_2PROC = "recipes/accelerate_configs/cpu_2proc.yaml"
FULL_SFT_ROWS = 560_000  # the six SFT sources of the JetMoE-8B-Chat recipe (issue 21)
TIME_FORMAT = "%e %U %S %M"


def timed(command: list[str], cwd: Path, env: dict, log: Path, train_log: Path | None) -> dict:
    """Wall seconds, CPU seconds of the whole process tree, peak RSS (GB) of its largest process; with the stage's
    `train.log`, seconds from the launch to the start of training and to the end of step 1."""
    stats = log.with_suffix(".time")
    launched = time.time()
    with open(log, "w") as out:
        done = subprocess.run(["/usr/bin/time", "-f", TIME_FORMAT, "-o", str(stats), *command], cwd=cwd, env=env,
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    wall, user, system, rss_kb = stats.read_text().split()[-4:]
    result = {"wall_s": float(wall), "cpu_s": round(float(user) + float(system), 1),
              "peak_rss_gb": round(int(rss_kb) / 1024 ** 2, 2)}
    if train_log is not None:
        result.update(first_step(train_log, launched))
    return result


def first_step(train_log: Path, launched: float) -> dict:
    """From the line that ends step 1 (`step 1: {"train_runtime": ...}` with one step): when training started
    (that line's time less the training's runtime) and when step 1 ended, in seconds after the launch."""
    for line in train_log.read_text(encoding="utf-8").splitlines():
        if '"train_runtime"' in line:
            stamp, _, entry = line.partition(" INFO ")
            ended = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000
            runtime = json.loads(entry.split(": ", 2)[2])["train_runtime"]
            return {"to_training_start_s": round(ended - runtime - launched, 1),
                    "to_step_1_end_s": round(ended - launched, 1)}
    raise SystemExit(f"{train_log}: no end of training logged")


def overrides(stage: str, data: Path, base: Path, output_dir: Path) -> list[str]:
    """The recipe on a CPU: the tiny base model in float32, the synthetic data as the only source, one step."""
    splits = {"sft": ("train_sft", "test_sft"), "dpo": ("train_prefs", "test_prefs")}[stage]
    source = f"[{{path: {data}, train_split: {splits[0]}, test_split: {splits[1]}}}]"
    # SFT evaluates and saves by epoch: off. DPO's recipe does so every 100 steps, which one step never reaches.
    schedule = ["--eval_strategy", "no", "--save_strategy", "no"] if stage == "sft" else []
    return ["--model.name_or_path", str(base), "--model.dtype", "float32", "--bf16", "false", "--use_cpu",
            "--data.sources", source, "--output_dir", str(output_dir), "--max_steps", "1", *schedule,
            "--report_to", "none", "--logging_steps", "1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-tree", type=Path, help="a checkout of an earlier commit to time the same way")
    parser.add_argument("--prepare-scaling", metavar="N,N,...",
                        help="only `align prepare` of both recipes with each number of processes: rows/s")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, help="where data, runs and logs go (default: a temporary dir)")
    options = parser.parse_args()

    from align.model.tokenizer import load_tokenizer

    work = options.work or Path(tempfile.mkdtemp(prefix="bench_data_prep-"))
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    python_launcher = [python]
    accelerate = [str(Path(python).parent / "accelerate"), "launch", "--config_file", str(REPO / CPU_2PROC)]
    tokenizer = load_tokenizer("recipes/tiny/tokenizer")
    data = {kind: synthetic_data.write_dataset(work / "data", kind, tokenizer, options.rows, options.seed)
            for kind in ("sft", "preference")}
    base = work / "tiny-base"
    subprocess.run([python, "-m", "align", "init-tiny", str(base)], cwd=REPO, check=True, capture_output=True)

    def env_for(prepared: str, tree: Path = REPO) -> dict:
        path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path, "JETMOE_ALIGN_PREPARED_DIR": str(work / prepared),
                "TOKENIZERS_PARALLELISM": "false"}

    def run(name: str, command: list[str], prepared: str, tree: Path = REPO) -> dict:
        output_dir = Path(command[command.index("--output_dir") + 1])
        train_log = output_dir / "train.log" if "prepare" not in command else None
        result = timed(command, tree, env_for(prepared, tree), work / f"{name}.log", train_log)
        print(f"{name}: {result}", flush=True)
        return result

    def sft(output_dir: str, launcher: list[str] = python_launcher, command: str = "sft") -> list[str]:
        """One process accumulates 2 micro-batches a step, 2 processes 1 each: the same global batch and work."""
        accumulation = ["--gradient_accumulation_steps", "1" if launcher is not python_launcher else "2"]
        return [*launcher, "-m", "align", command, SFT_RECIPE, *overrides("sft", data["sft"], base, work / output_dir),
                *accumulation]

    def dpo(output_dir: str) -> list[str]:
        return [python, "-m", "align", "dpo", DPO_RECIPE,
                *overrides("dpo", data["preference"], base, work / output_dir)]

    if options.prepare_scaling:
        scaling = {}
        for processes in [int(n) for n in options.prepare_scaling.split(",")]:
            for stage, command in (("sft", sft("unused", command="prepare")), ("dpo", dpo("unused"))):
                command = [*command[:3], "prepare", *command[4:], "--data.num_proc", str(processes)]
                name = f"{stage}_prepare_{processes}proc"
                result = run(name, command, name)
                result["rows_per_s"] = prepared_rate(work / f"{name}.log")
                scaling[name] = result
        print(json.dumps(scaling, indent=1))
        if options.out:
            options.out.write_text(json.dumps({"rows": options.rows, "scaling": scaling}, indent=2) + "\n")
        return

    results = {
        "sft_first_launch": run("sft_first_launch", sft("sft_a"), "prepared_a"),
        "sft_relaunch_new_output_dir": run("sft_relaunch_new_output_dir", sft("sft_b"), "prepared_a"),
        "sft_2proc_first_launch": run("sft_2proc_first_launch", sft("sft_c", accelerate), "prepared_c"),
        "sft_prepare_only": run("sft_prepare_only", sft("unused", command="prepare"), "prepared_d"),
        "dpo_first_launch": run("dpo_first_launch", dpo("dpo_a"), "prepared_e"),
    }
    if options.baseline_tree:
        tree = options.baseline_tree.resolve()
        results["baseline_sft_first_launch"] = run("baseline_sft_first_launch", sft("base_sft"), "unused", tree)
        results["baseline_sft_2proc_first_launch"] = run("baseline_sft_2proc_first_launch",
                                                         sft("base_sft_2proc", accelerate), "unused", tree)
        results["baseline_dpo_first_launch"] = run("baseline_dpo_first_launch", dpo("base_dpo"), "unused", tree)

    rate = prepared_rate(work / "sft_prepare_only.log")
    cores = len(os.sched_getaffinity(0))
    report = {"rows": options.rows, "cores": cores, "results": results,
              "sft_prepare_rows_per_s": rate, "sft_prepare_rows_per_s_per_core": round(rate / cores, 1),
              "full_sft_mix_minutes_on_this_machine": round(FULL_SFT_ROWS / rate / 60, 1),
              "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip(),
              "date": time.strftime("%Y-%m-%d")}
    print_table(report)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(report, indent=2) + "\n")
    if not options.work:
        shutil.rmtree(work, ignore_errors=True)


def prepared_rate(log: Path) -> float:
    """rows/s from the line `data: prepared N rows in S s (R rows/s) into DIR`."""
    return next(float(line.split("(")[1].split()[0]) for line in log.read_text().splitlines()
                if line.startswith("data: prepared "))


def print_table(report: dict) -> None:
    results = report["results"]
    print(f"\n{report['rows']} rows, {report['cores']} cores, commit {report['commit']}, {report['date']}\n")
    print("| launch | to training start s | to end of step 1 s | whole command s | CPU s | peak RSS GB | "
          "previous path / ours (to training start) |")
    print("|---|---|---|---|---|---|---|")
    for name, result in results.items():
        baseline = results.get(f"baseline_{name}")
        ratio = f"{baseline['to_training_start_s'] / result['to_training_start_s']:.1f}x" if baseline else ""
        print(f"| {name} | {result.get('to_training_start_s', '')} | {result.get('to_step_1_end_s', '')} | "
              f"{result['wall_s']:.1f} | {result['cpu_s']:.1f} | {result['peak_rss_gb']:.2f} | {ratio} |")
    for prefix in ("", "baseline_"):
        two, one = results.get(f"{prefix}sft_2proc_first_launch"), results.get(f"{prefix}sft_first_launch")
        if two and one:
            print(f"{prefix or 'ours: '}2-process launch CPU time / 1 process (same global batch): "
                  f"{two['cpu_s'] / one['cpu_s']:.2f}x")
    print(f"preparation alone: {report['sft_prepare_rows_per_s']:.0f} rows/s "
          f"({report['sft_prepare_rows_per_s_per_core']:.0f} per core); the full 8B SFT mix "
          f"({FULL_SFT_ROWS:,} rows): ~{report['full_sft_mix_minutes_on_this_machine']} min here")


if __name__ == "__main__":
    main()
