"""`accelerate launch` with 2 CPU processes (gloo) trains exactly like 1 process over the same global batch.

The tiny recipes (SFT, then DPO from its output) run with 1 process x 2 rows x 2 gradient-accumulation steps, and
with 2 processes x 2 rows: under DDP and, where DeepSpeed is installed, under ZeRO-2 and ZeRO-3, both stages in one
launch (the `pipeline` command: each stage builds its own engine, `align/training/stage_engines.py`). Every run
sees the same 4 rows per optimizer step in the same order (sequential sampler), micro-batches of the same shape and
per-micro-batch router losses, so data-parallel averaging must give the same losses, router losses and gradient
norms, step by step, in both stages. Under ZeRO-3 the one-launch pipeline also ends with the very weights of the
stages launched one by one (DPO from the consolidated checkpoint SFT saved), and a launch killed with SIGKILL
inside DeepSpeed's own checkpoint save resumes (`--resume`) to the weights of the uninterrupted launch.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from align.runs.checkpoints import checkpoint_to_resume

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes/accelerate_configs"
STEPS = 3
# On CPU the training arguments must say use_cpu: without it transformers sets up no process group under torchrun,
# and each process would train alone on the same rows.
TRAINING = ["--max_steps", str(STEPS), "--logging_steps", "1", "--train_sampling_strategy", "sequential",
            "--per_device_train_batch_size", "2", "--use_cpu"]


def free_port() -> int:
    """A rendezvous port of our own, so concurrent launches on one machine do not collide on 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", **env}
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path, expect_success: bool = True) -> None:
    try:
        process.wait(timeout=600)
    finally:
        process.kill()  # a no-op when it ended; else a hung launch does not outlive the test
    if expect_success:
        assert process.returncode == 0, f"{' '.join(process.args)} failed:\n" + log.read_text()[-4000:]


def run(command: list[str], log: Path, expect_success: bool = True) -> None:
    finish(start(command, log), log, expect_success)


def launch(config: str, *arguments: str, program: tuple[str, ...] = ("-m", "align")) -> list[str]:
    """`accelerate launch` of `python -m align ...` (or another `program`) on 2 processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
            "--num_processes", "2", "--main_process_port", str(free_port()), *program, *arguments]


def step_logs(stage_dir: Path) -> list[dict]:
    """The per-step training log (loss, grad_norm, router losses) the trainer kept in its last checkpoint."""
    checkpoint = max(stage_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def assert_same_training(runs: Path, reference: Path) -> None:
    for stage in ("sft", "dpo"):
        logs, expected = step_logs(runs / stage), step_logs(reference / stage)
        assert len(logs) == len(expected) == STEPS, stage
        for step, (got, want) in enumerate(zip(logs, expected), start=1):
            assert got["epoch"] == pytest.approx(want["epoch"]), f"{stage} step {step}: a different global batch"
            for key in ("loss", "grad_norm", "aux_loss", "router_z_loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), f"{stage} step {step}: {key}"
        # rank 0 alone writes the stage's results, as a single process does
        metrics = json.loads((runs / stage / "metrics.json").read_text())["train"]
        assert metrics["train_loss"] == pytest.approx(
            json.loads((reference / stage / "metrics.json").read_text())["train"]["train_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_process")
    run([sys.executable, "-m", "align", "pipeline", "recipes/tiny/pipeline.yaml", *TRAINING,
         "--gradient_accumulation_steps", "2", "--output_dir", str(out)], out / "log")
    return out


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_accumulation(one_process, tmp_path):
    run(launch("cpu_2proc.yaml", "pipeline", "recipes/tiny/pipeline.yaml", *TRAINING,
               "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path)), tmp_path / "log")
    assert_same_training(tmp_path, one_process)


@pytest.mark.slow
def test_zero2_pipeline_in_one_launch_matches_one_process_with_accumulation(one_process, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional (`make deepspeed`)")
    run(launch("deepspeed_zero2.yaml", "pipeline", "recipes/tiny/pipeline.yaml", *TRAINING,
               "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path)), tmp_path / "log")
    assert_same_training(tmp_path, one_process)


# Under ZeRO-3 a checkpoint after every step: the kill test below cuts one of them short.
ZERO3 = [*TRAINING, "--gradient_accumulation_steps", "1", "--save_strategy", "steps", "--save_steps", "1"]


@pytest.fixture(scope="module")
def zero3_pipeline(tmp_path_factory) -> Path:
    """The tiny pipeline under ZeRO-3 on 2 processes: SFT, then DPO from its output, in one launch."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional (`make deepspeed`)")
    out = tmp_path_factory.mktemp("zero3_pipeline")
    run(launch("deepspeed_zero3.yaml", "pipeline", "recipes/tiny/pipeline.yaml", *ZERO3, "--output_dir", str(out)),
        out / "log")
    return out


def assert_same_weights(stage_dir: Path, expected_dir: Path) -> None:
    weights, expected = load_file(stage_dir / "model.safetensors"), load_file(expected_dir / "model.safetensors")
    assert weights.keys() == expected.keys()
    different = [name for name in expected if not weights[name].equal(expected[name])]
    assert not different, f"{stage_dir}: weights differ from {expected_dir}: {different[:3]}"


@pytest.mark.slow
def test_zero3_pipeline_in_one_launch_matches_the_stages_launched_separately(zero3_pipeline, one_process,
                                                                             tmp_path):
    for stage, start in (("sft", []), ("dpo", ["--model.name_or_path", str(tmp_path / "sft")])):
        run(launch("deepspeed_zero3.yaml", stage, f"recipes/tiny/{stage}.yaml", *start, *ZERO3,
                   "--output_dir", str(tmp_path / stage)), tmp_path / f"{stage}.log")
    assert_same_training(tmp_path, one_process)
    assert_same_training(zero3_pipeline, one_process)
    for stage in ("sft", "dpo"):
        assert_same_weights(zero3_pipeline / stage, tmp_path / stage)
    dpo_run = json.loads((zero3_pipeline / "dpo" / "run.json").read_text())
    assert dpo_run["recipe"]["model"]["name_or_path"] == str(zero3_pipeline / "sft")


@pytest.mark.slow
def test_zero3_pipeline_killed_inside_an_engine_save_resumes_to_the_uninterrupted_weights(zero3_pipeline,
                                                                                          tmp_path):
    """SIGKILL on both ranks inside DeepSpeed's save of SFT's checkpoint-2 (its model states written, its
    optimizer shards and `latest` not): the engine's files are in the staging directory, never published, and
    `--resume` continues from checkpoint-1 through both stages to the weights of the launch that was not killed."""
    argv = ["pipeline", "recipes/tiny/pipeline.yaml", *ZERO3, "--output_dir", str(tmp_path)]
    run(launch("deepspeed_zero3.yaml", "engine-save", "2", "--", *argv, program=(str(ROOT / "tests/kill_at.py"),)),
        tmp_path / "killed.log", expect_success=False)
    assert "Signal 9 (SIGKILL)" in (tmp_path / "killed.log").read_text()
    staged = tmp_path / "sft" / "tmp-checkpoint-2" / "checkpoint-2"
    assert list(staged.glob("global_step2/*model_states.pt")) and not (staged / "latest").exists()
    assert sorted(path.name for path in (tmp_path / "sft").glob("checkpoint-*")) == ["checkpoint-1"]

    run(launch("deepspeed_zero3.yaml", *argv, "--resume"), tmp_path / "resumed.log")
    assert json.loads((tmp_path / "sft" / "run.json").read_text())["resumed_from"].endswith("checkpoint-1")
    for stage in ("sft", "dpo"):
        assert_same_weights(tmp_path / stage, zero3_pipeline / stage)
        train_loss = json.loads((tmp_path / stage / "metrics.json").read_text())["train"]["train_loss"]
        assert train_loss == pytest.approx(
            json.loads((zero3_pipeline / stage / "metrics.json").read_text())["train"]["train_loss"], rel=1e-6)
        assert not list((tmp_path / stage).glob("tmp-checkpoint-*"))


@pytest.mark.slow
@pytest.mark.parametrize("damage, named", [
    (lambda checkpoint: (checkpoint / "latest").unlink(), "latest: missing"),
    (lambda checkpoint: (checkpoint / "global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(),
     "global_step3: no optim states of rank 1 (of 2 ranks)"),
    (lambda checkpoint: (checkpoint / "global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(
        (checkpoint / "global_step3/zero_pp_rank_0_mp_rank_00_model_states.pt").read_bytes()[:-100]),
     "zero_pp_rank_0_mp_rank_00_model_states.pt: not a complete torch file"),
])
def test_resume_skips_a_zero3_checkpoint_with_damaged_engine_shards(damage, named, zero3_pipeline, tmp_path, caplog):
    """DeepSpeed's own files are verified like ours: a checkpoint whose `latest` or a rank's shard is missing or
    cut short is skipped, by name, for the one before (DeepSpeed would otherwise fail deep in its loader)."""
    out = tmp_path / "sft"
    shutil.copytree(zero3_pipeline / "sft", out, ignore=shutil.ignore_patterns("runs"))
    assert checkpoint_to_resume(str(out)) == str(out / "checkpoint-3")
    damage(out / "checkpoint-3")
    assert checkpoint_to_resume(str(out)) == str(out / "checkpoint-2")
    assert f"skipping checkpoint-3: {out / 'checkpoint-3'}" in caplog.text and named in caplog.text


# Stand-ins for SLURM on one host: `srun` runs its task once per "node" (SLURM_NODEID 0, 1, ...) at the same time,
# each node with its own prepared-data dir (as a node-local cache) and log; `scontrol` names 127.0.0.1 first.
FAKE_SRUN = """#!/bin/bash
shift  # --ntasks-per-node=1
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$node JETMOE_ALIGN_PREPARED_DIR=$NODES_DIR/prepared$node "$@" > $NODES_DIR/machine$node.log 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait $pid || status=1; done
exit $status
"""
FAKE_SCONTROL = "#!/bin/bash\necho 127.0.0.1\n"


@pytest.mark.slow
def test_two_machines_on_localhost_train_like_one_process(one_process, tmp_path):
    """recipes/slurm/pipeline_multinode.sbatch on 2 "nodes" of one host (srun and scontrol stood in for): one
    `accelerate launch --num_machines 2 --machine_rank $SLURM_NODEID` per node, 1 process each, meeting over gloo
    at 127.0.0.1. Global rank 0 alone writes the one output in the shared output dir; each node prepares the
    data in its own prepared dir, once."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "NODES_DIR": str(tmp_path), "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_SUBMIT_DIR": str(ROOT), "PYTHON": sys.executable,
           "GPUS_PER_NODE": "1", "CONFIG": str(CONFIGS / "cpu_2proc.yaml"), "RECIPE": "recipes/tiny/pipeline.yaml",
           "PORT": str(free_port())}
    command = ["bash", str(ROOT / "recipes/slurm/pipeline_multinode.sbatch"), *TRAINING,
               "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path / "out")]
    finish(start(command, tmp_path / "sbatch.log", **env), tmp_path / "sbatch.log")

    assert_same_training(tmp_path / "out", one_process)
    logs = [(tmp_path / f"machine{node}.log").read_text() for node in (0, 1)]
    assert "Results:" in logs[0] and "Results:" not in logs[1]
    for stage in ("sft", "dpo"):
        train_log = (tmp_path / "out" / stage / "train.log").read_text()
        assert [line.split("step ")[1][:2] for line in train_log.splitlines() if '{"loss"' in line] == \
            ["1:", "2:", "3:"], f"{stage}: each step logged once"
    prepared = [sorted(path.name for path in (tmp_path / f"prepared{node}").iterdir() if path.is_dir())
                for node in (0, 1)]
    assert prepared[0] == prepared[1] and [name.split("-")[0] for name in prepared[0]] == ["preference", "sft"]
