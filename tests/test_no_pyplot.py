"""No module of dclsviz uses pyplot: its global figure state is not safe in the app's worker threads. A fresh
interpreter imports every module, draws a comparison panel and Figure 2 in two threads at once, and checks."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import importlib, pkgutil, sys, tempfile, threading
    from pathlib import Path
    import dclsviz
    for m in pkgutil.walk_packages(dclsviz.__path__, "dclsviz."):
        importlib.import_module(m.name)
    import dclsviz.demo
    from dclsviz import clickme, compare, labels, models, render, report, zoo

    pair = {v: models.load(zoo.get("demo", v), device="cpu") for v in zoo.VARIANTS}
    record = clickme.ClickMeShard(zoo.ASSETS / dclsviz.demo.SHARD)[0]
    c = compare.compare(pair, compare.Sample.from_clickme(record))
    names = labels.class_names_for(zoo.get("demo", "baseline"))
    cell = lambda x: {m: {"ceiling_normalised": x} for m in compare.MAPS}
    scores = {"demo": {"baseline": cell(0.4), "dcls": cell(0.5)}, "other": {"baseline": cell(0.2), "dcls": cell(0.3)}}
    out, errors = {}, []

    def draw(name, fn):
        try:
            for _ in range(3):
                out[name] = fn()
        except BaseException as e:
            errors.append(repr(e))

    folder = Path(tempfile.mkdtemp())
    panel = lambda: render.panel_png(c, names)
    scatter = lambda: report.scatter(scores, folder / "s.png", "t") and (folder / "s.png").read_bytes()
    threads = [threading.Thread(target=draw, args=(n, f)) for n, f in (("panel", panel), ("scatter", scatter))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(v.startswith(b"\\x89PNG") for v in out.values()) and len(out) == 2
    print("pyplot loaded" if "matplotlib.pyplot" in sys.modules else "no pyplot")
""")


def test_no_module_imports_pyplot_even_while_drawing(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path), "MPLBACKEND": "",
           "DCLSVIZ_CACHE": str(tmp_path / "cache"), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "no pyplot"


def test_no_source_file_imports_pyplot():
    pattern = re.compile(r"^\s*(import\s+matplotlib\.pyplot|from\s+matplotlib(\.pyplot)?\s+import\s+.*pyplot|"
                         r"from\s+matplotlib\.pyplot\s+import)", re.M)
    assert [str(p) for p in (REPO / "dclsviz").rglob("*.py") if pattern.search(p.read_text())] == []
