"""DESIGN §2: imports flow one way — models/structure → checkpoint → metrics → plotting →
report → cli. Checked on every module's top-level imports (a method may import a higher
tier lazily, e.g. ``Analysis.heatmap`` draws with plotting, without the module depending
on it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reuse_analysis"
TIERS = {
    0: {"__init__", "errors", "_io", "_memory", "_unpickler", "tables", "cache"},
    1: {"models", "structure", "data", "runtime"},
    2: {"checkpoint", "concat_order", "rebuild", "evaluation", "train", "modelcard"},
    3: {
        "metrics", "nulls", "observations", "redundancy", "figure5", "dynamics", "probes",
        "prune", "agreement", "analysis", "traced", "compare",
    },
    4: {"plotting"},
    5: {"report"},
    6: {"cli", "options", "text", "workflows", "__main__"},
}  # fmt: skip
TIER = {name: tier for tier, names in TIERS.items() for name in names}
#: Heavy libraries a tier must not load at import time.
FORBIDDEN = {"plotting": {"torch"}, **{m: {"matplotlib", "seaborn"} for m in TIERS[3]}}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    """The tier name of a module: its first component below the package."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "reuse_analysis":  # a submodule, or a name of __init__
                names |= {
                    f"reuse_analysis.{a.name}"
                    if (PACKAGE / f"{a.name}.py").exists() or (PACKAGE / a.name).is_dir()
                    else "reuse_analysis.__init__"
                    for a in node.names
                }
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_every_module_has_a_tier():
    assert {_name(p) for p in _modules()} <= set(TIER)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    own = TIER[_name(path)]
    imports = _top_level_imports(path)
    upward = [m for m in imports if m.startswith("reuse_analysis.") and TIER[m.split(".")[1]] > own]
    assert upward == [], f"{path.name} (tier {own}) imports a higher tier: {upward}"
    heavy = {m.split(".")[0] for m in imports} & FORBIDDEN.get(_name(path), set())
    assert not heavy, f"{path.name} imports {heavy} at module level"
