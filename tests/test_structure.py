"""The package's shape: no import cycle, inference never imports the training loop, short functions."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_graph() -> dict[str, set[str]]:
    """reclip module -> the reclip modules it imports (static, every import statement)."""
    files = {".".join(f.with_suffix("").relative_to(SRC).parts).removesuffix(".__init__"): f
             for f in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                submodules = {f"{module}.{a.name}" for a in node.names} & set(files)
                deps |= submodules or ({module} & set(files))  # `from pkg import sub` needs sub, not pkg's __init__
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
        graph[name] = deps - {name, "reclip"}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_no_import_cycle():
    graph = module_graph()
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert cycles == []


def test_inference_does_not_import_the_training_loop():
    graph = module_graph()
    for module in ("reclip.method.adapter", "reclip.method.heads", "reclip.method.result"):
        assert "reclip.method.selftrain" not in reachable(graph, module), module


def test_functions_in_method_are_shorter_than_50_lines():
    long = []
    for path in (SRC / "reclip" / "method").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 50:
                long.append(f"{path.name}:{node.name}")
    assert long == []
