"""Our kernels install and import as `jetmoe_kernels`: the top-level name `kernels` belongs to the hub kernels
package on the index, which users may have installed beside us (transformers uses it)."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import transformers.utils.import_utils as import_utils

REPO = Path(__file__).resolve().parent.parent
OUR_PACKAGES = ("align", "jetmoe_model", "kernels", "bench", "tests")
HUB_KERNELS = "kernels==0.17.2"  # the version of the report: `import jetmoe_model` failed beside it


def run_python(args: list[str], cwd: Path, pythonpath: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_no_import_of_ours_names_the_top_level_kernels_package():
    foreign = re.compile(r"^\s*(import kernels\b|from kernels\b)", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for package in OUR_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if foreign.search(path.read_text())
    ]
    assert not offenders


def test_every_package_directory_is_installed():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    source_dirs = {name: Path(path) for name, path in setuptools["package-dir"].items()}
    installed = {
        str(source_dirs.get(name.split(".")[0], Path(name.split(".")[0])).joinpath(*name.split(".")[1:]))
        for name in setuptools["packages"]
    }
    on_disk = {
        str(init.parent.relative_to(REPO))
        for package in ("align", "jetmoe_model", "kernels")
        for init in (REPO / package).rglob("__init__.py")
    }
    assert installed == on_disk


def test_transformers_does_not_mistake_our_kernels_for_the_hub_package():
    import_utils.is_kernels_available.cache_clear()
    assert import_utils.is_kernels_available() is False


@pytest.fixture(scope="module")
def hub_kernels_dir(tmp_path_factory) -> Path:
    """The hub `kernels` package pip-installed into a directory of its own (dependencies are already ours)."""
    target = tmp_path_factory.mktemp("hub_kernels")
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--retries", "0", "--timeout", "10"]
    try:
        result = subprocess.run([*install, "--target", str(target), HUB_KERNELS], capture_output=True, text=True,
                                timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {HUB_KERNELS} timed out (package index unreachable?)")
    if result.returncode != 0:
        pytest.skip(f"pip install {HUB_KERNELS} failed (package index unreachable?): {result.stderr[-300:]}")
    return target


def test_ours_work_beside_the_hub_kernels_package(hub_kernels_dir, tmp_path):
    """Outside the repository (so its `kernels/` is not on the path), with the hub package importable as `kernels`:
    our model, the CLI, and tests of our expert kernels (both backends) and of the whole model under pytest."""
    check = (
        "import kernels, jetmoe_kernels, jetmoe_model, torch\n"
        f"assert kernels.__file__.startswith({str(hub_kernels_dir)!r}), kernels.__file__\n"
        f"assert not jetmoe_kernels.__file__.startswith({str(hub_kernels_dir)!r})\n"
        "config = jetmoe_model.JetMoEConfig(vocab_size=50, hidden_size=32, num_key_value_heads=2, kv_channels=8,\n"
        "    intermediate_size=16, num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=1)\n"
        "print(jetmoe_model.JetMoEForCausalLM(config)(torch.tensor([[1, 2, 3]])).logits.shape)\n"
    )
    imported = run_python(["-c", check], tmp_path, str(hub_kernels_dir))
    assert imported.returncode == 0, imported.stderr
    assert "torch.Size([1, 3, 50])" in imported.stdout

    cli = run_python(["-m", "align", "--help"], tmp_path, str(hub_kernels_dir))
    assert cli.returncode == 0, cli.stderr
    assert "sft" in cli.stdout

    tests = ["test_kernels_backend.py", "test_model_parity.py::test_greedy_generation_is_token_identical"]
    suite = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                        "-k", "random-float32 or greedy",  # Triton (interpreted) and torch experts, whole model
                        *(str(REPO / "tests" / test) for test in tests)], tmp_path, str(hub_kernels_dir), timeout=300)
    assert suite.returncode == 0, suite.stdout[-2000:]
    assert "4 passed" in suite.stdout, suite.stdout[-2000:]


def test_uninstalled_source_checkout_loads_kernels_from_the_repository():
    """`PYTHONPATH=. python bench/...` on a machine without `pip install`: `kernels/` is loaded as `jetmoe_kernels`."""
    check = (
        "import importlib.util, sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "if importlib.util.find_spec('jetmoe_kernels') is not None:\n"
        "    print('installed'); raise SystemExit\n"
        "import jetmoe_model, jetmoe_kernels.lora\n"
        "print(jetmoe_kernels.__file__, jetmoe_kernels.lora.__file__)\n"
    )
    result = run_python(["-c", check], REPO, ".")
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "installed":
        pytest.skip("jetmoe_kernels is installed as a regular package here")
    assert result.stdout.split() == [str(REPO / "kernels" / "__init__.py"), str(REPO / "kernels" / "lora.py")]


def test_public_api_imports():
    from jetmoe_model import JetMoEConfig, JetMoEForCausalLM  # noqa: F401
