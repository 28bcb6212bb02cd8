"""`jetmoe_kernels` in a source checkout that is not installed (`PYTHONPATH=. python bench/...` on a GPU machine).

The repository keeps the kernels in `kernels/`; installed, they are the package `jetmoe_kernels` (pyproject's
`package-dir`). Without an install nothing provides that name, so we load `kernels/` under it by file path — never
by the name `kernels`, which on the index belongs to an unrelated package (transformers' hub kernels).
"""

import importlib.util
import sys
from pathlib import Path

KERNELS_PACKAGE = "jetmoe_kernels"


def ensure_kernels_importable() -> None:
    """Make `import jetmoe_kernels` work: a no-op where it is installed, `kernels/` beside us otherwise."""
    if KERNELS_PACKAGE in sys.modules or importlib.util.find_spec(KERNELS_PACKAGE) is not None:
        return
    source = Path(__file__).resolve().parent.parent / "kernels"
    spec = importlib.util.spec_from_file_location(
        KERNELS_PACKAGE, source / "__init__.py", submodule_search_locations=[str(source)]
    )
    if spec is None or not (source / "__init__.py").is_file():
        raise ImportError(f"{KERNELS_PACKAGE} is not installed and {source} holds no package: run `pip install -e .`")
    module = importlib.util.module_from_spec(spec)
    sys.modules[KERNELS_PACKAGE] = module
    spec.loader.exec_module(module)
