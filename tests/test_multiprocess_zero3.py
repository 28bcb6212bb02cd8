"""DeepSpeed ZeRO-3 with JetMoE's expert layers, 2 CPU processes (gloo): `align.training.distributed` at work.

Each rank trains on different tokens, so the ranks route to different experts. The model is loaded sharded
(`zero.Init`), its expert layers are ZeRO-3 leaves; the check is that the sharded forward equals the unsharded
model's on the same tokens, that a training step ends on every rank (no collective left waiting), that DPO's
reference copy of a sharded model computes the same loss, and that the consolidated 16-bit save (what
`stage3_gather_16bit_weights_on_model_save` writes) loads in stock transformers with the trained weights.

Run by pytest, which launches this file under torchrun (`python tests/test_multiprocess_zero3.py OUT_DIR`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def worker(out: Path) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist
    import transformers
    from conftest import tiny_config_kwargs
    from transformers.integrations import HfDeepSpeedConfig

    from align.training.distributed import EXPERT_LAYERS, copy_model, prepare_for_sharding
    from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

    deepspeed.init_distributed("gloo")
    rank = dist.get_rank()
    if rank == 0:
        torch.manual_seed(0)
        base = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs("e8k2", moe_backend="torch",
                                                                   output_router_logits=True)))
        with torch.no_grad():  # break the zero biases of a fresh init so every parameter carries signal
            for param in base.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        base.save_pretrained(out / "base")
    dist.barrier()

    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                    "stage3_gather_16bit_weights_on_model_save": True}}
    zero3 = HfDeepSpeedConfig(config)  # while alive, transformers builds models sharded (zero.Init)
    model = JetMoEForCausalLM.from_pretrained(out / "base")
    prepare_for_sharding(model)
    reference = copy_model(model)
    results = {
        "sharded": all(param.numel() == 0 for param in model.model.layers[0].mlp.input_linear.parameters()),
        "leaves": all(module._z3_leaf for m in (model, reference) for module in m.modules()
                      if isinstance(module, EXPERT_LAYERS)),
    }
    engine = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5), config=config)[0]
    reference_engine = deepspeed.initialize(model=reference, config={**config, "zero_optimization": {"stage": 3}})[0]

    torch.manual_seed(100 + rank)  # each rank its own tokens, so its own routing
    ids = torch.randint(0, 97, (2, 12))
    loss = engine(input_ids=ids, labels=ids).loss
    with torch.no_grad():
        results["reference_loss"] = reference_engine(input_ids=ids, labels=ids).loss.item()
    engine.backward(loss)
    engine.step()
    results["loss"] = loss.item()
    del zero3
    results["plain_loss"] = JetMoEForCausalLM.from_pretrained(out / "base")(input_ids=ids, labels=ids).loss.item()

    engine.eval()
    with torch.no_grad():  # token loss alone: stock transformers adds no router z-loss
        results["trained_loss"] = engine(input_ids=ids, labels=ids, output_router_logits=False).loss.item()
    state_dict = engine._zero3_consolidated_16bit_state_dict()  # what the final save writes, gathered on rank 0
    if rank == 0:
        model.save_pretrained(out / "saved", state_dict=state_dict)
        stock = transformers.JetMoeForCausalLM.from_pretrained(out / "saved", dtype=torch.float32)
        results["stock_loss"] = stock(input_ids=ids, labels=ids, output_router_logits=False).loss.item()
    (out / f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_zero3_shards_expert_layers_and_saves_a_consolidated_checkpoint(tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional (`make deepspeed`)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    from test_multiprocess import free_port

    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         __file__, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["loss"] != ranks[1]["loss"], "both ranks saw the same tokens"
    for results in ranks:
        assert results["sharded"] and results["leaves"]
        assert results["loss"] == pytest.approx(results["plain_loss"], rel=1e-5)
        assert results["reference_loss"] == pytest.approx(results["plain_loss"], rel=1e-5)
        assert results["trained_loss"] < results["loss"] - 0.1
    # the consolidated save holds the trained weights
    assert ranks[0]["stock_loss"] == pytest.approx(ranks[0]["trained_loss"], rel=1e-5)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
