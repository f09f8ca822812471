"""The house shows the architecture: the import graph of ``clapkit/`` has no circle, the core
never imports a concrete plugin, and no lower floor (data, cache, engine) imports a command
module. Function-level imports count too: a lazy import is still an arrow."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "clapkit"

#: modules that are commands (click groups and what only they use): the top floor
COMMANDS = ("clapkit.cli", "clapkit.recipe_check", "clapkit.evaluation", "clapkit.predict",
            "clapkit.runs", "clapkit.report")
#: lower floors: may not import a command module
LOWER = ("clapkit.data", "clapkit.cache", "clapkit.engine", "clapkit.interfaces",
         "clapkit.pipeline", "clapkit.recipe", "clapkit.registry", "clapkit.plugins")


def module_names(root: Path) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _absolute(module: str | None, level: int, here: str, is_pkg: bool) -> str:
    if level == 0:
        return module or ""
    base = here.split(".") if is_pkg else here.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(inner, outer)``: per module of the package at ``root``, the package's modules it
    imports, and the top-level names of everything else it imports."""
    mods = module_names(root)
    inner: dict[str, set[str]] = {m: set() for m in mods}
    outer: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        is_pkg = p.name == "__init__.py"
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module, node.level, m, is_pkg)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                outer[m].add(t.split(".")[0])
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                # a module importing its own package's face is not an arrow
                if t in mods and t != m and not (m.startswith(t + ".")
                                                 and mods[t].name == "__init__.py"):
                    inner[m].add(t)
    return inner, outer


def find_circle(graph: dict[str, set[str]], faces: set[str]) -> list[str] | None:
    """One import circle between modules (package faces left out), or None."""
    g = {m: {d for d in ds if d not in faces} for m, ds in graph.items() if m not in faces}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(g.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if not state.get(v) and (found := visit(v)):
                return found
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(g):
        if not state.get(u) and (found := visit(u)):
            return found
    return None


def violations(root: Path) -> list[str]:
    """Every broken layering rule of the package at ``root``, one line each."""
    inner, outer = import_graph(root)
    faces = {m for m, p in module_names(root).items() if p.name == "__init__.py"}
    out = []
    if circle := find_circle(inner, faces):
        out.append("import circle: " + " -> ".join(circle))
    for m, ds in sorted(inner.items()):
        if any(m == low or m.startswith(low + ".") for low in LOWER):
            for d in sorted(ds):
                if d in COMMANDS:
                    out.append(f"lower floor imports a command module: {m} -> {d}")
    for m, names in sorted(outer.items()):
        if "clapkit_plugins" in names:
            out.append(f"core imports a concrete plugin: {m} -> clapkit_plugins")
    return out


def test_clapkit_keeps_its_layering():
    assert violations(CORE) == []


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "clapkit"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_layering_check_fails_on_planted_violations(tmp_path):
    root = _plant(tmp_path, {
        "__init__.py": "",
        "cli.py": "from .engine import trainer\n",
        "evaluation.py": "def f():\n    from .engine.runner import go\n",
        "engine/__init__.py": "",
        "engine/runner.py": "from .trainer import Trainer\n",
        "engine/trainer.py": "from ..evaluation import f\n",
        "data/__init__.py": "",
        "data/demo.py": "def host():\n    from ..cli import main\n",
        "pipeline.py": "import clapkit_plugins.heads.cosine\n",
    })
    found = violations(root)
    assert any(v.startswith("import circle:") and "clapkit.engine.trainer" in v for v in found)
    assert "lower floor imports a command module: clapkit.data.demo -> clapkit.cli" in found
    assert "lower floor imports a command module: clapkit.engine.trainer -> " \
           "clapkit.evaluation" in found
    assert "core imports a concrete plugin: clapkit.pipeline -> clapkit_plugins" in found


def test_a_clean_planted_tree_passes(tmp_path):
    root = _plant(tmp_path, {"__init__.py": "", "cli.py": "from .engine import runner\n",
                             "engine/__init__.py": "", "engine/runner.py": "import torch\n"})
    assert violations(root) == []
