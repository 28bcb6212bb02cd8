"""The layout of `align/`: packages by responsibility, imports in one direction, no circles.

The imports are read from the source with `ast`, not by importing it, so the check sees every import, those inside
functions included: a function-level import is still a dependency (it runs the first time the function does), and
a circle hidden in a function is a circle all the same. Importing `align.p.q` also runs `align/p/__init__.py`, so
that counts as an import of `align.p` too (unless the importer lives in `align.p`).
"""

import ast
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOP_LEVEL_MODULES = 8  # at most, besides the subpackages
# Bottom to top: a package imports only those before it in this list (training and inference side by side).
LAYERS = ("data", "config", "model", "runs", "lora", ("training", "inference"), "evaluation", "cli")
# Configuration types kept beside the code they configure: the recipe reader (`config`) reads them, so they may
# import nothing but `config`, `data` and each other.
SETTINGS_TYPES = {"align.lora.arguments", "align.evaluation.settings", "align.evaluation.published"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Every module of `package` (a directory under `root`) -> the modules of `package` it imports."""
    paths = {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}

    def known(name: str) -> str | None:
        while name not in paths and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in paths else None

    graph = {}
    for module, path in paths.items():
        here = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base
                               for alias in node.names)
        imported = {name for target in targets if (name := known(target))}
        # each package above an imported module runs its __init__ first
        imported |= {parent for name in imported for parent in _parents(name) if not module.startswith(parent + ".")}
        graph[module] = imported - {module}
    return graph


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state, stack = {}, []  # state: 1 on the current path, 2 done

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO, "align")


def test_no_import_circle_in_align(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_check_finds_a_circle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub.b import f\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert find_cycle({**graph, "pkg.sub.b": set()}) is None


def test_packages_import_only_the_layers_below_them(graph):
    rank = {name: i for i, layer in enumerate(LAYERS) for name in ((layer,) if isinstance(layer, str) else layer)}

    def package(module: str) -> str | None:
        return module.split(".")[1] if module.count(".") >= 1 and module.split(".")[1] in rank else None

    def bare_package(name: str) -> bool:  # an __init__ that imports nothing of ours: importing it leads nowhere
        return not graph[name] and any(other.startswith(name + ".") for other in graph)

    wrong = []
    for module, targets in graph.items():
        for target in targets:
            mine, theirs = package(module), package(target)
            if module in SETTINGS_TYPES:
                allowed = theirs in ("config", "data") or target in SETTINGS_TYPES or bare_package(target)
            elif target in SETTINGS_TYPES or bare_package(target) or mine is None or theirs is None or mine == theirs:
                allowed = True
            else:
                allowed = rank[theirs] < rank[mine]
            if not allowed:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "; ".join(sorted(wrong))


def test_align_top_level_holds_few_modules_and_every_package_has_an_init():
    align = REPO / "align"
    modules = sorted(path.name for path in align.glob("*.py"))
    assert len(modules) <= TOP_LEVEL_MODULES, modules
    # A directory of modules without __init__.py would be a namespace package: missed by tests/test_packaging.py's
    # check that pyproject.toml lists every package, and so left out of a non-editable install.
    unpackaged = sorted(str(directory.relative_to(REPO)) for directory in {path.parent for path in align.rglob("*.py")}
                        if not (directory / "__init__.py").is_file())
    assert not unpackaged


def test_no_module_of_align_is_ignored_by_git():
    """A module git ignores (`runs/` in .gitignore once hid align/runs/__init__.py) works in this checkout and is
    missing from every clone. `--no-index`: a tracked file under an ignored name counts too, as its new siblings
    would be ignored."""
    modules = [str(path.relative_to(REPO)) for path in sorted((REPO / "align").rglob("*.py"))]
    try:
        result = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", *modules],
                                capture_output=True, text=True, timeout=30)
    except OSError:
        pytest.skip("git is not installed")
    if result.returncode not in (0, 1):  # 128: not a git checkout (an unpacked source archive)
        pytest.skip(f"git check-ignore: {result.stderr.strip()}")
    assert result.stdout.split() == []
