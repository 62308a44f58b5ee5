"""The rooms of the code and which way their imports point (read from the source with ``ast``, so
function-level imports count too).

Layers, lowest first: ``trt_handler.qa`` (the QA core) < ``trt_handler.planning`` (profiles and the one
planner) < ``trt_handler.engines`` (build, cache,
session, CUDA, library, sidecar, export) < ``trt_handler.answer_batch`` < ``trt_handler.serving`` (the
per-GPU inference server) < ``trt_handler.backends``
(runners and RunInference handlers) < the tools ``trt_handler.evaluate`` / ``trt_handler.gpu_check``
< ``pipelines``. A module may import its own layer or lower ones, never a higher one; and no
import cycle exists between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parents[1]
LAYERS = [
    ("trt_handler.qa", 0),
    ("trt_handler.planning", 1),
    ("trt_handler.engines", 2),
    ("trt_handler.answer_batch", 3),
    ("trt_handler.serving", 4),
    ("trt_handler.backends", 5),
    ("trt_handler.evaluate", 6),
    ("trt_handler.gpu_check", 6),
    ("pipelines", 7),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    out = {}
    for root in ("trt_handler", "pipelines"):
        for path in (REPO / root).rglob("*.py"):
            out[_module_name(path)] = path
    return out


def _imports(path: Path, known: Set[str]) -> Set[str]:
    """Our modules that ``path`` imports anywhere (``from a.b import c`` counts a.b.c when that is a module):
    at the top, inside functions, and in an ``if __name__ == "__main__":`` block alike."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: Set[str] = set()
    for node in ast.walk(tree):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in known:
                found.add(name)
    return found


def _layer(module: str) -> int:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    raise AssertionError(f"module {module} belongs to no room; add it to a room or to LAYERS")


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: {i for i in _imports(p, known) if i != m and not m.startswith(i + ".")} for m, p in modules.items()
            if m not in ("trt_handler", "pipelines")}


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    out = []
    for module, imported in graph.items():
        for other in imported:
            if other not in ("trt_handler", "pipelines") and _layer(other) > _layer(module):
                out.append(f"{module} (layer {_layer(module)}) imports {other} (layer {_layer(other)})")
    return sorted(out)


def test_every_module_is_in_a_room_and_nothing_imports_upward() -> None:
    graph = _graph()
    assert len(graph) > 20
    assert not upward_imports(graph), "\n".join(upward_imports(graph))


def test_the_qa_core_imports_nothing_of_ours_outside_it() -> None:
    graph = _graph()
    outside = {m: sorted(i for i in imported if not i.startswith("trt_handler.qa"))
               for m, imported in graph.items() if m.startswith("trt_handler.qa")}
    assert all(not v for v in outside.values()), outside


def test_no_import_cycle() -> None:
    graph = _graph()
    state: Dict[str, int] = {}
    path: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if state.get(nxt) is None:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node)


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """An upward import in a real source file is found and reported."""
    src = tmp_path / "answers.py"
    src.write_text("def f():\n    from trt_handler.backends.handlers import QAHandler\n    return QAHandler\n")
    known = set(_modules())
    graph = {"trt_handler.qa.answers": _imports(src, known)}
    assert upward_imports(graph) == ["trt_handler.qa.answers (layer 0) imports trt_handler.backends.handlers (layer 5)"]
    # an import under ``if __name__ == "__main__":`` counts too (a CLI entry is a module's import like any other)
    src.write_text('if __name__ == "__main__":\n    from trt_handler.backends.handlers import QAHandler\n')
    assert _imports(src, known) == {"trt_handler.backends.handlers"}
