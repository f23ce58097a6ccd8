"""The package's shape: the front door (lazy, torch-free until a torch model is used), scikit-learn
compatibility of every model, the torch-free model registry, and an import graph without cycles."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import sklearn.base

import recsys
from recsys.models import MODEL_NAMES, MODEL_REGISTRY, make_model, model_class

ROOT = Path(recsys.__file__).parent


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_the_front_door_needs_no_torch_until_a_torch_model_is_used():
    done = run_python("import sys, recsys\n"
                      "recsys.Engine, recsys.evaluate, recsys.tune, recsys.read_interactions, recsys.load_engine\n"
                      "recsys.make_model('popularity'); recsys.MODEL_NAMES\n"
                      "assert 'torch' not in sys.modules, 'torch imported'\n"
                      "recsys.IALS\n"
                      "assert 'torch' in sys.modules\n")
    assert done.returncode == 0, done.stderr


def test_every_export_resolves_and_is_listed():
    assert set(recsys.__all__) == {"__version__", *recsys._EXPORTS}
    for name in recsys._EXPORTS:
        assert getattr(recsys, name) is not None, name
    assert recsys.evaluate.__module__ == "recsys.evaluation", "a function, not a submodule of the same name"
    assert callable(recsys.tune) and callable(recsys.load)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        recsys.nothing  # noqa: B018


def test_the_registry_lists_every_model_without_importing_it():
    for name in MODEL_NAMES:
        model_class(name)
    assert set(MODEL_NAMES) == set(MODEL_REGISTRY) - {"base"}, "MODEL_NAMES must list every built-in model"
    with pytest.raises(Exception, match="Unknown model 'nope'. Choose one of"):
        make_model("nope")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sklearn_clone_copies_parameters_not_state(name):
    model = make_model(name)
    first = next(iter(model.get_params(deep=True)))
    copy = sklearn.base.clone(model)
    assert type(copy) is type(model) and copy.get_params() == model.get_params() and copy is not model
    assert sklearn.base.clone(recsys.IALS(factors=8)).factors == 8
    assert first in model.get_params(deep=False)


def test_repr_shows_only_changed_parameters():
    assert repr(recsys.IALS(factors=8)) == "IALS(factors=8)"
    assert repr(recsys.Popularity()) == "Popularity()"


def _imports(path: Path) -> set[str]:
    """Modules of this package that `path` imports anywhere (function bodies too), TYPE_CHECKING blocks aside."""
    module = _name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = package
                for _ in range(child.level - 1):
                    base = base.rsplit(".", 1)[0]
                target = (f"{base}.{child.module}" if child.module else base) if child.level else child.module
                for alias in child.names:  # `from . import name`: a submodule if there is one
                    sub = f"{target}.{alias.name}"
                    found.add(sub if _exists(sub) else target)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            visit(child)
    visit(ast.parse(path.read_text()))
    return {m for m in found if m.split(".")[0] == "recsys" and _exists(m) and m != module}


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")


def _exists(module: str) -> bool:
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        graph[_name(path)] = _imports(path)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None
    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert "recsys.tuning" in graph["recsys.pipeline"], "the graph sees imports in function bodies"
    assert "recsys.models.base" in graph["recsys.models"], "and relative imports in a package's __init__"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_library_code_never_imports_the_server_or_flask():
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        assert "import flask" not in text and "from server" not in text and "import server" not in text, path


def test_the_readme_tree_names_every_module():
    """README's "How it fits together" stays the tree: every library and server module is named there."""
    readme = (ROOT.parent / "README.md").read_text()
    section = readme.split("## How it fits together", 1)[1].split("\n## ", 1)[0]
    modules = [p for p in [*ROOT.rglob("*.py"), *(ROOT.parent / "server").glob("*.py")] if p.name != "__init__.py"]
    missing = sorted(str(p.relative_to(ROOT.parent)) for p in modules if p.stem not in section)
    assert not missing, f"add to README's tree: {missing}"


# A compiled extension is private to its one Python wrapper, which is the only importer
PRIVATE_IMPORT_ALLOWED = {("recsys/retrieval/int8.py", "_scan")}


def private_imports(path: Path, root: Path) -> list[str]:
    """Each `from m import _name`, `from m._private import x` and `import m._private` in the file at `path`
    (relative to `root`), as 'path:line: name', except the PRIVATE_IMPORT_ALLOWED pairs."""
    def private(name: str) -> bool:
        return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))

    found = []
    rel = path.relative_to(root).as_posix()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names if private(a.name)] + ([node.module] if private(node.module or "")
                                                                        else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if private(a.name)]
        found += [f"{rel}:{node.lineno}: {n}" for n in names if (rel, n) not in PRIVATE_IMPORT_ALLOWED]
    return found


def test_no_module_imports_another_modules_private_name():
    repo = ROOT.parent
    paths = [p for d in ("recsys", "server", "benchmarks", "tests") for p in (repo / d).rglob("*.py")]
    assert len(paths) > 50
    found = [hit for p in paths for hit in private_imports(p, repo)]
    assert not found, "import a public name instead (make the helper public where it is shared):\n" + \
        "\n".join(found)


def test_the_private_import_check_sees_each_form(tmp_path):
    code = "from a import _b\nfrom a._c import d\nimport a._e\nfrom . import f\nfrom g import __version__\n"
    (tmp_path / "m.py").write_text(code)
    assert private_imports(tmp_path / "m.py", tmp_path) == ["m.py:1: _b", "m.py:2: a._c", "m.py:3: a._e"]


def test_benchmarks_and_tests_do_not_edit_sys_path():
    """They import the installed package; tests find the benchmark scripts through pytest's `pythonpath`."""
    repo = ROOT.parent
    edits = [f"{p.relative_to(repo)}:{node.lineno}" for d in ("benchmarks", "tests") for p in (repo / d).rglob("*.py")
             for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Attribute)
             and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not edits, edits
