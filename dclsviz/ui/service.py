"""Everything between the widgets and the core, without Gradio: configuration, where checkpoints and
shards are, turning uploads and shard records into a ``Sample``, and the call to ``compare``.

Errors a user can fix are ``UserError`` with a message to show as it is.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import checkpoints, clickme, geometry, images, labels, limits, models, render, zoo
from ..compare import Comparison, Sample, compare
from ..download import cache_root
from . import storage

try:  # registers the demo pair in the zoo
    from .. import demo as _demo
except ImportError:  # pragma: no cover - the package ships with it
    _demo = None

log = logging.getLogger("dclsviz.ui")

DEMO_ARCH = "demo"
SOURCES = ("clickme", "upload")
VARIANT_TITLES = render.VARIANT_TITLES
TARGET_LABEL, TARGET_PRED = "label", "pred"
# The painting canvas only needs to look right; the photo itself is read at full size for the models.
EDITOR_MAX_SIDE = 1024

# gr.Progress's call signature: progress(fraction or (done, total), desc=..., unit=...)
Progress = Callable[..., None]


class UserError(Exception):
    """Something the user can fix; shown as it is."""


# --- configuration -----------------------------------------------------------------------------------


@dataclass
class AppConfig:
    checkpoint_dir: Optional[Path] = None
    download: bool = True
    default_arch: Optional[str] = None
    concurrency: int = 2
    device: Optional[str] = None
    clickme_dir: Optional[Path] = None
    # made fresh (mkdtemp, 0700) for each app: a fixed shared path could be planted by another user
    export_dir: Path = field(default_factory=lambda: storage.private_dir("dclsviz-exports-"))
    # kept across restarts, so a Dataset run asked again only scores what is missing
    evaluation_dir: Path = field(default_factory=lambda: cache_root() / "evaluations")
    review_db: Optional[Path] = None  # None: review.db_path() ($DCLSVIZ_REVIEW_DB, else in the cache)
    # Gradio's cache (GRADIO_TEMP_DIR): every cache_prune_every_s, files older than cache_max_age_s go
    cache_max_age_s: int = limits.GRADIO_CACHE_MAX_AGE_S
    cache_prune_every_s: int = limits.GRADIO_CACHE_PRUNE_EVERY_S

    @classmethod
    def from_env(cls) -> "AppConfig":
        env = os.environ
        return cls(
            checkpoint_dir=checkpoints.checkpoint_dir_from_env(),
            download=env.get("DCLSVIZ_OFFLINE", "").lower() not in ("1", "true", "yes"),
            default_arch=env.get("DCLSVIZ_DEFAULT_ARCH") or None,
            concurrency=max(1, int(env.get("DCLSVIZ_CONCURRENCY", "2"))),
            device=env.get("DCLSVIZ_DEVICE") or None,
            cache_max_age_s=_seconds(env, "DCLSVIZ_CACHE_MAX_AGE_S", limits.GRADIO_CACHE_MAX_AGE_S),
            cache_prune_every_s=_seconds(env, "DCLSVIZ_CACHE_PRUNE_EVERY_S", limits.GRADIO_CACHE_PRUNE_EVERY_S),
        )


def _seconds(env, name: str, most: int) -> int:
    """A duration from the environment, between 1 s and ``most`` (the cap the disk estimate relies on)."""
    value = env.get(name)
    return most if not value else limits.whole_number(value, name, 1, most)


def arch_choices() -> list[str]:
    return list(zoo.PAPER_ARCHS) + [a for a in zoo.archs() if a not in zoo.PAPER_ARCHS]


def _entry(arch: str, variant: str = "dcls") -> zoo.ModelEntry:
    try:
        return zoo.get(arch, variant)
    except KeyError as e:
        raise UserError(e.args[0]) from None


def class_names(arch: str) -> list[str]:
    return labels.class_names_for(_entry(arch))


def pair_available(arch: str, cfg: AppConfig) -> bool:
    """Both checkpoints are on this machine (bundled or cached): choosing the pair costs no download."""
    for v in zoo.VARIANTS:
        e = _entry(arch, v)
        if e.checkpoint.bundled:
            if not (zoo.ASSETS / e.checkpoint.bundled).is_file():
                return False
        elif checkpoints.find_local(e, cfg.checkpoint_dir) is None:
            return False
    return True


def default_arch(cfg: AppConfig) -> str:
    if cfg.default_arch:
        if cfg.default_arch in zoo.archs():
            return cfg.default_arch
        log.warning("DCLSVIZ_DEFAULT_ARCH=%s is not an architecture (%s); using %s", cfg.default_arch,
                    ", ".join(zoo.archs()), DEMO_ARCH)
        return DEMO_ARCH
    return next((a for a in zoo.PAPER_ARCHS if pair_available(a, cfg)), DEMO_ARCH)


def device_text(cfg: AppConfig) -> str:
    import torch

    if os.environ.get("SPACES_ZERO_GPU") and _spaces_gpu() is not None:
        # asked before torch.cuda is touched: ZeroGPU forbids initialising CUDA in the main process
        return "ZeroGPU (a CUDA GPU is attached for each comparison)"
    dev = torch.device(cfg.device) if cfg.device else models.default_device()
    if dev.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(dev)})"
    return f"CPU ({torch.get_num_threads()} threads)"


def checkpoint_status(arch: str, cfg: AppConfig) -> str:
    """Where each checkpoint of ``arch`` would come from, before anything is loaded."""
    lines = []
    for v in zoo.VARIANTS:
        e = _entry(arch, v)
        title = VARIANT_TITLES[v]
        if e.checkpoint.bundled:
            p = zoo.ASSETS / e.checkpoint.bundled
            state = f"bundled `{p.name}`" if p.is_file() else f"bundled file `{p.name}` is missing"
        elif (hit := checkpoints.find_local(e, cfg.checkpoint_dir)) is not None:
            # the file name and where it was found, never the folder: a server's paths stay on the server
            state = f"{hit[0]} `{hit[1].name}`"
        elif cfg.download:
            state = f"not cached: downloaded on first use from {e.checkpoint.urls[0]}"
        else:
            state = f"**not cached, downloads are off.** {checkpoints.how_to_get(e)}"
        lines.append(f"- {title}: {state}")
    return "\n".join(lines)


# --- shards ------------------------------------------------------------------------------------------


def demo_shard() -> Optional[Path]:
    if _demo is None:
        return None
    p = zoo.ASSETS / _demo.SHARD
    return p if p.is_file() else None


def shard_choices(cfg: AppConfig) -> list[tuple[str, str]]:
    """(label, path) of the demo shard and the ClickMe shards found locally."""
    out = []
    d = demo_shard()
    if d is not None:
        out.append((f"demo: synthetic shapes ({d.name})", str(d)))
    for p in clickme.find_local_shards(cfg.clickme_dir):
        if d is None or p.resolve() != d.resolve():
            out.append((f"ClickMe {p.name}", str(p)))
    return out


def resolve_shard(shard: Optional[str], cfg: AppConfig) -> Path:
    """Only shards the app lists can be read, so the API cannot be pointed at arbitrary files."""
    choices = shard_choices(cfg)
    if not choices:
        raise UserError("no ClickMe shard is available: the demo shard is missing and none was found in "
                        f"${clickme.CLICKME_DIR_ENV} or $DCLSVIZ_CACHE/clickme "
                        f"(set {clickme.CLICKME_DIR_ENV} to a folder of val-N.tfrecords files)")
    if not shard or shard == DEMO_ARCH:
        return Path(choices[0][1])
    for label, path in choices:
        if shard in (label, path, Path(path).name):
            return Path(path)
    raise UserError(f"unknown shard {shard!r}; choose one of: {', '.join(Path(p).name for _, p in choices)}")


@functools.lru_cache(maxsize=32)
def _open_shard(path: str, mtime: float) -> clickme.ClickMeShard:
    return clickme.ClickMeShard(path)


def open_shard(path: Path) -> clickme.ClickMeShard:
    try:
        return _open_shard(str(path), path.stat().st_mtime)
    except (OSError, clickme.ClickMeFormatError) as e:
        raise UserError(f"cannot read the shard {path.name}: {e}") from None


INDEX_FIELD = "the record index (a whole number or 'random')"


def parse_index(index, n: int) -> int:
    """The record ``index`` names in a shard of ``n`` records: plain ASCII digits (or an integral number), or
    'random'/empty for a random one. "3.9", "inf", "1e400", "٣", "0x10" and "-1" are refused with a message."""
    if n <= 0:
        raise UserError("the shard holds no records")
    if index is None or (isinstance(index, str) and index.strip().lower() in ("", "random")):
        return random.randrange(n)
    try:
        i = limits.whole_number(index, INDEX_FIELD, -limits.MAX_SEED, limits.MAX_SEED)
    except limits.LimitError as e:
        raise UserError(str(e)) from None
    if not 0 <= i < n:
        raise UserError(f"the shard has {n} records: choose an index from 0 to {n - 1}")
    return i


def clickme_sample(shard: Optional[str], index, cfg: AppConfig) -> Sample:
    sh = open_shard(resolve_shard(shard, cfg))
    i = parse_index(index, len(sh))
    try:
        return Sample.from_clickme(sh[i])
    except clickme.ClickMeFormatError as e:
        raise UserError(str(e)) from None


def shard_label_space_matches(sample_name: str, arch: str) -> bool:
    """Whether the labels of the shard a record ("SHARD:INDEX") comes from are classes of ``arch``."""
    return labels.shard_labels_fit(sample_name.rsplit(":", 1)[0], _entry(arch))


# --- uploads -----------------------------------------------------------------------------------------


def _path_of(f) -> Optional[str]:
    if f is None:
        return None
    if isinstance(f, dict):  # a FileData dict from some clients
        return f.get("path")
    return getattr(f, "name", None) if not isinstance(f, (str, os.PathLike)) else str(f)


def load_human_file(path: str) -> np.ndarray:
    """An uploaded human map (image or .npy), or a ``UserError`` saying what is wrong with it."""
    try:
        return images.load_map(path)
    except (images.ImageError, limits.LimitError) as e:
        raise UserError(f"human map: {e}") from None


def painted_map(editor) -> Optional[np.ndarray]:
    """The strokes painted on the photo, as a map: their opacity (0 where nothing was painted)."""
    if not editor or not isinstance(editor, dict):
        return None
    strokes = [np.asarray(l) for l in editor.get("layers") or [] if l is not None]
    strokes = [l for l in strokes if l.ndim == 3 and l.shape[2] == 4 and l[..., 3].any()]
    if not strokes:
        return None
    return np.max(np.stack([l[..., 3] for l in strokes]), axis=0).astype(np.float32)


def upload_sample(image_file, human_file=None, editor=None) -> tuple[Sample, list[str]]:
    """The uploaded photo with the user's map (an uploaded one first, else the painted strokes)."""
    path = _path_of(image_file)
    if not path:
        raise UserError("upload a photo first (or pick one of the example photos)")
    try:
        image, notes = images.load_image(path, with_notes=True)
    except images.ImageError as e:
        raise UserError(f"photo: {e}") from None
    notes = [f"photo: {n}" for n in notes]
    human_raw, hpath = None, _path_of(human_file)
    painted = painted_map(editor)
    if hpath:
        human_raw = load_human_file(hpath)
        if painted is not None:
            notes.append("both an uploaded and a painted human map: using the uploaded one")
        mh, mw = human_raw.shape
        h, w = image.shape[:2]
        if (mh, mw) != (h, w):
            stretch = abs(mw / mh - w / h) > 0.01 * (w / h)
            notes.append(f"the human map is {mw}×{mh} and the photo {w}×{h}: the map was resampled over the "
                         f"whole photo" + (", stretching it (different aspect ratio)" if stretch else ""))
    elif painted is not None:
        human_raw = painted
    if human_raw is not None and float(human_raw.min()) == float(human_raw.max()):
        notes.append(f"the human map is constant (every pixel {float(human_raw.min()):g}): it ranks no region "
                     "above another, so Spearman's ρ against it is undefined")
    return Sample.from_image(image, human_raw, name=Path(path).name), notes


def editor_value(image_file):
    """The photo as the painting canvas's background, downscaled for display only."""
    path = _path_of(image_file)
    if not path:
        return None, []
    try:
        image, notes = images.load_image(path, with_notes=True)
    except images.ImageError as e:
        return None, [f"photo: {e}"]
    pil = geometry.to_pil(image)
    pil.thumbnail((EDITOR_MAX_SIDE, EDITOR_MAX_SIDE))
    bg = np.asarray(pil)
    return {"background": bg, "layers": [], "composite": bg}, [f"photo: {n}" for n in notes]


# --- computing ----------------------------------------------------------------------------------------


def _spaces_gpu():
    try:
        import spaces
    except ImportError:
        return None
    return spaces.GPU


def on_gpu(duration: int = 120):
    """ZeroGPU attaches a GPU only inside functions wrapped by ``spaces.GPU``; elsewhere a no-op.

    ``duration``: the longest the call may hold the GPU, in seconds (ZeroGPU's quota unit).
    """
    def wrap(fn):
        gpu = _spaces_gpu()
        return gpu(duration=duration)(fn) if gpu is not None else fn

    return wrap


def target_spec(target, arch: str):
    """'label', 'pred', or the class index ``target`` names among ``arch``'s classes (ASCII digits or a name)."""
    if target in (None, "", TARGET_LABEL):
        return TARGET_LABEL
    if target == TARGET_PRED:
        return TARGET_PRED
    try:
        if isinstance(target, str):
            target = limits.text(target, "target", limits.MAX_TARGET_CHARS)
        return labels.class_index(target, _entry(arch).class_names)
    except (ValueError, TypeError) as e:
        raise UserError(f"target: {e}") from None


def load_pair(arch: str, cfg: AppConfig, progress: Optional[Progress] = None):
    def report(variant, done, total):
        if progress is not None:
            progress((done, total), desc=f"Downloading the {VARIANT_TITLES[variant]} checkpoint of {arch}",
                     unit="bytes")

    _entry(arch)
    if progress is not None:
        progress(0.05, desc=f"Loading the {arch} pair (first use takes longer)")
    try:
        return models.load_pair(arch, checkpoint_dir=cfg.checkpoint_dir, device=cfg.device, download=cfg.download,
                                progress=report)
    except checkpoints.CheckpointError as e:
        raise CheckpointProblem(str(e), arch) from None


class CheckpointProblem(UserError):
    def __init__(self, message: str, arch: str):
        offer = "" if arch == DEMO_ARCH else " The bundled demo pair works offline: choose 'demo' as the model."
        super().__init__(f"{message}{offer}")
        self.arch = arch


def check_settings(threshold, geometry_name: str) -> float:
    """The threshold as a float in [0, 1], once the geometry is known to be one of ours."""
    if geometry_name not in geometry.GEOMETRIES:
        raise UserError(f"geometry must be one of {', '.join(geometry.GEOMETRIES)}, not {geometry_name!r}")
    try:
        return limits.unit_interval(threshold, "threshold")
    except limits.LimitError:
        raise UserError(f"threshold must lie in [0, 1] (a finite number), not {str(threshold)[:40]!r}") from None


@on_gpu()
def run_comparison(arch: str, sample: Sample, target, threshold: float, geometry_name: str, cfg: AppConfig,
                   progress: Optional[Progress] = None) -> Comparison:
    threshold = check_settings(threshold, geometry_name)
    pair = load_pair(arch, cfg, progress)
    if progress is not None:
        progress(0.8, desc="Grad-CAM and Threshold-Grad-CAM of both models")
    return compare(pair, sample, target, threshold, geometry_name)


def build_sample(source, arch, shard, index, image_file, human_file, editor, target, cfg):
    """The sample and the target to explain, with notes for anything converted or adjusted."""
    if source not in SOURCES:
        raise UserError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    target = target_spec(target, arch)
    if source == "clickme":
        sample, notes = clickme_sample(shard, index, cfg), []
        if target == TARGET_LABEL and not shard_label_space_matches(sample.name, arch):
            notes.append(f"the shard's labels are not classes of {arch}: explaining the predicted class instead "
                         "of the ground truth")
            target = TARGET_PRED
    else:
        sample, notes = upload_sample(image_file, human_file, editor)
    return sample, target, notes
