"""`register_auto_classes()`: transformers' auto classes give our classes for JetMoE checkpoints and configs.

Registration changes process-wide state, so it runs in a child process of its own."""

import json
import subprocess
import sys

import torch
from conftest import tiny_config_kwargs
from model_pairs import randomize
from transformers import JetMoeConfig, JetMoeForCausalLM

CHECK = """
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from jetmoe_model import JetMoEConfig, register_auto_classes

path, ids = sys.argv[1], torch.tensor(json.loads(sys.argv[2]))
result = {"before": type(AutoModelForCausalLM.from_pretrained(path)).__name__}
register_auto_classes()
model = AutoModelForCausalLM.from_pretrained(path, moe_backend="torch").eval()
model.gradient_checkpointing_enable()
result.update(
    config=type(AutoConfig.from_pretrained(path)).__name__,
    causal_lm=type(model).__name__,
    base=type(AutoModel.from_pretrained(path)).__name__,
    from_config=type(AutoModelForCausalLM.from_config(JetMoEConfig(**model.config.to_diff_dict()))).__name__,
    logits=model(ids).logits.tolist(),
)
print(json.dumps(result))
"""


def test_registered_auto_classes_load_ours_from_a_stock_checkpoint(tmp_path):
    stock = JetMoeForCausalLM(JetMoeConfig(**tiny_config_kwargs())).eval()
    randomize(stock, seed=31)
    stock.save_pretrained(tmp_path)
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(1))

    run = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path), json.dumps(ids.tolist())], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])

    assert result["before"] == "JetMoeForCausalLM"  # unregistered: transformers' own class, as before
    assert (result["config"], result["causal_lm"], result["base"], result["from_config"]) == (
        "JetMoEConfig", "JetMoEForCausalLM", "JetMoEModel", "JetMoEForCausalLM"
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(result["logits"]), stock(ids).logits, atol=2e-4, rtol=0)
