"""The UI's code stays readable: short functions, named parameters, and module docstrings that hold."""

from __future__ import annotations

import ast
from pathlib import Path

UI = Path(__file__).resolve().parent.parent / "dclsviz" / "ui"
MAX_LINES = 60


def _functions():
    for path in sorted(UI.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield path, node


def test_no_ui_function_is_longer_than_60_lines():
    long = [f"{p.name}:{n.lineno} {getattr(n, 'name', 'lambda')} ({n.end_lineno - n.lineno + 1} lines)"
            for p, n in _functions() if n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, long


def test_no_ui_function_has_single_letter_parameters():
    # a loop variable may be short; a parameter is read at every call site and must say what it is
    bad = []
    for p, n in _functions():
        args = n.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if a is not None and len(a.arg.rstrip("_")) <= 1:
                bad.append(f"{p.name}:{n.lineno} {getattr(n, 'name', 'lambda')}({a.arg})")
    assert not bad, bad


def test_service_holds_no_gradio_and_no_page_text():
    tree = ast.parse((UI / "service.py").read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("gradio" in name for name in imported), imported
    # Markdown belongs to present.py: no bold or code spans in service's strings
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [s for s in strings if "**" in s], [s for s in strings if "**" in s]


def test_one_error_mapping_and_one_frame_size():
    sources = {p.name: p.read_text(encoding="utf-8") for p in UI.glob("*.py")}
    mappers = [name for name, text in sources.items() for line in text.splitlines()
               if line.startswith("def ") and "-> gr.Error" in line]
    assert mappers == ["events.py"], mappers
    core = UI.parent
    frames = [p.name for p in core.rglob("*.py") if "\nFRAME = " in p.read_text(encoding="utf-8")]
    assert frames == ["geometry.py"], frames
