"""The house rules, checked on the source: imports flow one way (stages -> helpers -> core) with no
circles and at the top of modules, no module is too long, no stage runs pip or reads argparse."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "persona_pipeline"
MAX_LINES = 450
# Layers from the bottom: a module may import its own layer and the layers below it.
LAYERS = {"core": 0, "data": 1, "training": 1, "evaluation": 1, "export": 1, "inference": 1, "stages": 2,
          "prerequisites": 3, "cli": 3, "__main__": 4}
# Function-level imports allowed: an optional extra that compiles llama.cpp (`make kquants`); TRL, the
# `bench` extra that bench-train-trl compares against; and the data writer's model loading (torch), which
# only `generate.writer: model` needs: at the top it made every `make data` import torch (12 s instead of
# 0.3 s to start, measured on 2 shared cores).
LAZY_ALLOWED = {("persona_pipeline.export.llamacpp", "llama_cpp"), ("persona_pipeline.stages.bench_train_trl", "trl"),
                ("persona_pipeline.data.writer", "persona_pipeline")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, id(node) in top) for n in names]
    return found


def _internal(target: str, modules: dict[str, Path]) -> str | None:
    """The persona_pipeline module an import refers to (``from pkg import mod`` or ``from mod import name``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[1] if module.count(".") else "cli"]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _ in _imports(path):
            if target.startswith("persona_pipeline"):
                dep = _internal(target, modules)
                if dep and dep != name:
                    graph[name].add(dep)
    return graph


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep] if dep in stack else [node, dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_imports_flow_down_and_stages_do_not_import_stages():
    wrong = []
    for module, deps in _graph().items():
        if module == "persona_pipeline":
            continue
        for dep in deps:
            if dep == "persona_pipeline":
                continue
            if _layer(dep) > _layer(module):
                wrong.append(f"{module} imports {dep} (a higher layer)")
            # The stage table (the package) is shared; one stage module never reaches into another.
            if module.startswith("persona_pipeline.stages.") and dep.startswith("persona_pipeline.stages."):
                wrong.append(f"{module} imports another stage, {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_imports_at_the_top():
    lazy = []
    for name, path in _modules().items():
        for target, at_top in _imports(path):
            if not at_top and (name, target.split(".")[0]) not in LAZY_ALLOWED:
                lazy.append(f"{name}: {target}")
    assert not lazy, "function-level imports:\n" + "\n".join(lazy)


def test_no_module_is_too_long():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, f"modules over {MAX_LINES} lines"


def test_stages_take_declared_options_and_never_run_pip():
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "getattr(args" not in text, path.name
        assert '"pip"' not in text and "'pip'" not in text, f"{path.name} runs pip"


def test_no_module_runs_pip():
    for name, path in _modules().items():
        assert '"-m", "pip"' not in path.read_text(encoding="utf-8"), f"{name} installs packages at run time"
