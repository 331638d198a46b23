"""Refresh tests/data from a conformance kit folder.

    python tests/data/refresh.py [KIT]      # KIT defaults to $DCLSVIZ_CONFORMANCE, else ../shared/conformance

Copies the manifests, kit index and ClickMe files the tests read; stores the two shared inputs in one compressed
npz; replaces the arrays that follow bit for bit from other stored data (the goldens' 224x224 maps, some ClickMe
arrays) with the sha256 of the kit's array (tests/kit_data.py rebuilds them and checks that sha256). Ends by rebuilding every array and
comparing it with the kit's, so a refresh that would change a fact fails here.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import kit_data  # noqa: E402  (tests/kit_data.py, found through the path above)

REBUILT_CLICKME = ("image_u8", "heatmap_u8", "image_224", "heatmap_224")
COPIED_CLICKME = ("sample_val.tfrecords", "sample_val.manifest.json", "golden_metric_cases.json")


def _kit_folder(argv: list[str]) -> Path:
    if argv:
        return Path(argv[0]).resolve()
    env = os.environ.get("DCLSVIZ_CONFORMANCE")
    return Path(env).resolve() if env else (REPO / ".." / "shared" / "conformance").resolve()


def _copy_tree_files(kit: Path) -> None:
    (HERE / "manifests").mkdir(exist_ok=True)
    for src in sorted((kit / "manifests").glob("*.json")):
        shutil.copyfile(src, HERE / "manifests" / src.name)
    shutil.copyfile(kit / "kit_index.json", HERE / "kit_index.json")
    np.savez_compressed(HERE / "inputs.npz", **{n: np.load(kit / f"{n}.npy") for n in ("input_224", "input_256")})
    (HERE / "clickme").mkdir(exist_ok=True)
    for name in COPIED_CLICKME:
        shutil.copyfile(kit / "clickme" / name, HERE / "clickme" / name)


def _checkpoint_goldens(kit: Path) -> None:
    (HERE / "golden").mkdir(exist_ok=True)
    for src in sorted((kit / "golden").glob("*.npz")):
        with np.load(src) as f:
            g = {k: f[k] for k in f.files}
        for k in kit_data.UPSAMPLED_MAPS:
            g[f"{k}_224_sha256"] = np.array(kit_data.sha256_array(g.pop(f"{k}_224")))
        np.savez_compressed(HERE / "golden" / src.name, **g)


def _clickme_golden(kit: Path) -> None:
    shard = (kit / "clickme" / "sample_val.tfrecords").read_bytes()
    with np.load(kit / "clickme" / "golden_clickme.npz") as f:
        g = {k: f[k] for k in f.files}
    n = len(g["label"])
    keep = {k: v for k, v in g.items()
            if k not in REBUILT_CLICKME and not k.startswith(("image_jpeg_", "heatmap_jpeg_"))}
    for kind in ("image", "heatmap"):
        spans, digests = [], []
        for i in range(n):
            raw = g[f"{kind}_jpeg_{i:02d}"]
            start = shard.find(raw.tobytes())
            if start < 0 or shard.find(raw.tobytes(), start + 1) >= 0:
                raise SystemExit(f"{kind}_jpeg_{i:02d} is not found exactly once in the sample shard")
            spans.append((start, raw.size))
            digests.append(kit_data.sha256_array(raw))
        keep[f"{kind}_jpeg_span"] = np.array(spans, np.int64)
        keep[f"{kind}_jpeg_sha256"] = np.array(digests)
    for k in REBUILT_CLICKME:
        keep[f"{k}_sha256"] = np.array(kit_data.sha256_array(g[k]))
    np.savez_compressed(HERE / "clickme" / "golden_clickme.npz", **keep)


def _metric_golden(kit: Path) -> None:
    with np.load(kit / "clickme" / "golden_metric.npz") as f:
        gm = {k: f[k] for k in f.files}
    # each case names the record its human map is taken from: "..._recK"
    records = np.array([int(str(name).rsplit("_rec", 1)[1]) for name in gm["names"]], np.int64)
    keep = {k: v for k, v in gm.items() if k != "human_maps"}
    keep["human_map_record"] = records
    keep["human_maps_sha256"] = np.array(kit_data.sha256_array(gm["human_maps"]))
    np.savez_compressed(HERE / "clickme" / "golden_metric.npz", **keep)


def _verify(kit: Path) -> None:
    kit_data.clickme_golden.cache_clear()
    kit_data.metric_golden.cache_clear()
    pairs = [(kit / "clickme" / "golden_clickme.npz", kit_data.clickme_golden()),
             (kit / "clickme" / "golden_metric.npz", kit_data.metric_golden())]
    pairs += [(p, kit_data.golden(p.stem)) for p in sorted((kit / "golden").glob("*.npz"))]
    for stored, rebuilt in pairs:
        with np.load(stored) as f:
            assert sorted(f.files) == sorted(rebuilt), stored
            for k in f.files:
                assert np.array_equal(f[k], rebuilt[k], equal_nan=f[k].dtype.kind == "f") and f[k].dtype == rebuilt[k].dtype, f"{stored}: {k}"
    for n in ("input_224", "input_256"):
        assert np.array_equal(np.load(kit / f"{n}.npy"), kit_data.kit_input(f"{n}.npy")), n


def main(argv: list[str]) -> None:
    kit = _kit_folder(argv)
    if not (kit / "manifests").is_dir():
        raise SystemExit(f"no conformance kit at {kit}")
    _copy_tree_files(kit)
    _checkpoint_goldens(kit)
    _clickme_golden(kit)
    _metric_golden(kit)
    _verify(kit)
    total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"tests/data refreshed from {kit}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
