"""The registry is data, read-only after import, and the package's import graph has no cycle."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from dclsviz import demo, zoo
from dclsviz.entries import DclsRecipe, ModelEntry

PACKAGE = Path(zoo.__file__).resolve().parent


def test_registry_holds_the_study_and_the_demo_pair_once_each():
    ids = list(zoo.REGISTRY)
    assert len(ids) == len(set(ids)) == 18
    assert zoo.PAPER_ARCHS == ("convnext_tiny", "convnext_small", "convnext_base", "caformer_s18",
                               "convformer_s18", "fastvit_sa24", "fastvit_sa36", "resnet50")
    assert zoo.archs() == [*zoo.PAPER_ARCHS, demo.ARCH]
    assert all(zoo.get(a, v).id == f"{a}.{v}" for a in zoo.archs() for v in zoo.VARIANTS)


def test_registry_is_read_only_and_a_duplicate_id_is_an_error():
    with pytest.raises(TypeError):
        zoo.REGISTRY["x.dcls"] = zoo.get("demo", "dcls")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        zoo.get("demo", "dcls").cam_layer = "layer3"  # type: ignore[misc]
    with pytest.raises(ValueError, match="two registry entries have the id 'demo.dcls'"):
        zoo.build_registry([*demo.ENTRIES, demo.entry_for("dcls")])
    odd = dataclasses.replace(demo.entry_for("dcls"), variant="large")
    with pytest.raises(ValueError, match="variant 'large'"):
        zoo.build_registry([odd])
    assert not hasattr(zoo, "register")


def test_entries_take_keywords_only():
    with pytest.raises(TypeError):
        DclsRecipe(zoo.CONV_3X3, 7, 5, "v0")  # type: ignore[misc]
    entry = zoo.get("resnet50", "dcls")
    with pytest.raises(TypeError):
        ModelEntry(entry.arch, entry.variant, entry.family, entry.timm_name, entry.checkpoint,  # type: ignore[misc]
                   entry.transform, entry.cam_layer)


def _imports(path: Path, module: str) -> set[str]:
    """The package modules ``path`` imports, anywhere in it (lazy imports in functions included)."""
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("dclsviz"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dclsviz"))
    return {m for m in found if m in MODULES and m != module}


MODULES = {".".join(("dclsviz", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
           for p in PACKAGE.rglob("*.py")}


def test_the_import_graph_has_no_cycle():
    graph = {m: _imports(p, m) for m, p in MODULES.items()}
    assert graph["dclsviz.zoo"] >= {"dclsviz.demo", "dclsviz.entries"}  # the graph is read, not empty
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            # a package's own __init__ importing its children is not a cycle of theirs
            if state.get(n) == 1 and not m.startswith(n + "."):
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
