"""On Hugging Face ZeroGPU the GPU work goes through the real ``spaces.GPU`` decorator; elsewhere it is inert."""

from __future__ import annotations

import spaces

from dclsviz.ui import service


def test_gpu_work_is_wrapped_by_spaces_gpu_with_its_duration(monkeypatch):
    seen = []
    real = spaces.GPU

    def recording(*args, **kwargs):
        seen.append(kwargs.get("duration"))
        return real(*args, **kwargs)

    monkeypatch.setattr(spaces, "GPU", recording)
    wrapped = service.on_gpu(300)(lambda x: x * 2)
    assert wrapped(21) == 42 and seen == [300]


def test_a_comparison_runs_through_the_decorated_function(tmp_path):
    """The module-level functions were decorated by the real package at import; outside ZeroGPU they compute."""
    cfg = service.AppConfig(export_dir=tmp_path / "exports", evaluation_dir=tmp_path / "runs")
    sample = service.clickme_sample("", 3, cfg)
    c = service.run_comparison("demo", sample, "label", 0.3, "paper", cfg)
    assert set(c.outputs) == {"baseline", "dcls"} and c.sample.label == sample.label
    assert all(o.scores["gradcam"]["spearman"] is not None for o in c.outputs.values())
    assert "ZeroGPU" not in service.device_text(cfg)
