"""Everything between the widgets and the core, without Gradio and without page text: configuration, where
checkpoints and shards are, turning uploads and shard records into a ``Sample``, and the call to ``compare``.

Errors a user can fix are ``UserError`` with a message to show as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import checkpoints, clickme, geometry, images, labels, limits, methods, models, render, runtime, zoo
from ..cam import LayerError
from ..compare import MAPS, Comparison, Sample, compare
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

# gr.Progress's call signature: progress(fraction or (done, total), desc=..., unit=...)
Progress = Callable[..., None]


class UserError(Exception):
    """Something the user can fix; shown as it is."""


# --- configuration -----------------------------------------------------------------------------------


@dataclass
class AppConfig:
    """The app's settings: folders, device, downloads, concurrency; from the environment by ``from_env``."""

    checkpoint_dir: Optional[Path] = None
    download: bool = True
    default_arch: Optional[str] = None
    # requests computing at once (the "compute" queue group) and requests allowed to wait behind them
    concurrency: int = 2
    queue_size: int = 32
    # intra-op threads of torch (process-wide); None: the cores shared evenly by `concurrency` requests
    torch_threads: Optional[int] = None
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
        """The settings the environment gives (``DCLSVIZ_*``, see the README), defaults elsewhere."""
        env = os.environ
        return cls(
            checkpoint_dir=checkpoints.checkpoint_dir_from_env(),
            download=env.get("DCLSVIZ_OFFLINE", "").lower() not in ("1", "true", "yes"),
            default_arch=env.get("DCLSVIZ_DEFAULT_ARCH") or None,
            concurrency=max(1, int(env.get("DCLSVIZ_CONCURRENCY", "2"))),
            queue_size=max(1, int(env.get("DCLSVIZ_QUEUE_SIZE", "32"))),
            torch_threads=max(1, int(env["DCLSVIZ_TORCH_THREADS"])) if env.get("DCLSVIZ_TORCH_THREADS") else None,
            device=env.get("DCLSVIZ_DEVICE") or None,
            cache_max_age_s=_seconds(env, "DCLSVIZ_CACHE_MAX_AGE_S", limits.GRADIO_CACHE_MAX_AGE_S),
            cache_prune_every_s=_seconds(env, "DCLSVIZ_CACHE_PRUNE_EVERY_S", limits.GRADIO_CACHE_PRUNE_EVERY_S),
        )

    def thread_budget(self) -> int:
        """Intra-op threads per request: ``torch_threads``, else the cores split evenly among ``concurrency``
        requests, so that requests in flight together never ask for more threads than there are cores."""
        if self.torch_threads:
            return self.torch_threads
        return max(1, _cores() // self.concurrency)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def apply_thread_budget(cfg: AppConfig) -> int:
    """Set torch's intra-op threads and the scoring pool once, at startup, from ``cfg``; returns the budget.

    torch's thread count is process-wide, so it cannot differ per request: every request gets the same share.
    """
    n = cfg.thread_budget()
    runtime.start(cfg.device, threads=n)
    return n


def _seconds(env, name: str, most: int) -> int:
    """A duration from the environment, between 1 s and ``most`` (the cap the disk estimate relies on)."""
    value = env.get(name)
    return most if not value else limits.whole_number(value, name, 1, most)


def arch_choices() -> list[str]:
    """The model pairs the app offers, study first."""
    return list(zoo.PAPER_ARCHS) + [a for a in zoo.archs() if a not in zoo.PAPER_ARCHS]


def _entry(arch: str, variant: str = "dcls") -> zoo.ModelEntry:
    try:
        # bounded before it can be echoed in a message
        return zoo.get(limits.text(arch, "the model pair", limits.MAX_NAME_CHARS, required=True), variant)
    except limits.LimitError as e:
        raise UserError(str(e)) from None
    except KeyError as e:
        raise UserError(e.args[0]) from None


def class_names(arch: str) -> list[str]:
    """``arch``'s class names in index order."""
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
    """The pair selected at start: the configured one, else the first whose checkpoints are here (the demo offline)."""
    if cfg.default_arch:
        if cfg.default_arch in zoo.archs():
            return cfg.default_arch
        log.warning("DCLSVIZ_DEFAULT_ARCH=%s is not an architecture (%s); using %s", cfg.default_arch,
                    ", ".join(zoo.archs()), DEMO_ARCH)
        return DEMO_ARCH
    return next((a for a in zoo.PAPER_ARCHS if pair_available(a, cfg)), DEMO_ARCH)


def device_text(cfg: AppConfig) -> str:
    """Where the models run, for the page (on ZeroGPU without touching CUDA in this process)."""
    import torch

    if zero_gpu():
        # asked before torch.cuda is touched: ZeroGPU forbids initialising CUDA in the main process
        return "ZeroGPU (a CUDA GPU is attached for each comparison; models load on the CPU once)"
    dev = torch.device(cfg.device) if cfg.device else models.default_device()
    if dev.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(dev)})"
    return f"CPU ({torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class CheckpointSource:
    """Where one checkpoint of a pair would come from, known before anything is loaded.

    ``state``: "bundled" (shipped with the app), "bundled-missing", "found" (``origin`` says where),
    "download" (not here; fetched from ``url`` on first use) or "missing" (not here, downloads off)."""

    variant: str
    file_name: str
    state: str
    origin: str = ""
    url: str = ""

    @property
    def available(self) -> bool:
        """Whether the file is here (bundled with the app or found on disk)."""
        return self.state in ("bundled", "found")


def checkpoint_sources(arch: str, cfg: AppConfig) -> list[CheckpointSource]:
    """Each checkpoint of ``arch``: its file name (never a server folder) and where it would come from."""
    out = []
    for v in zoo.VARIANTS:
        e = _entry(arch, v)
        if e.checkpoint.bundled:
            name = Path(e.checkpoint.bundled).name
            state = "bundled" if (zoo.ASSETS / e.checkpoint.bundled).is_file() else "bundled-missing"
            out.append(CheckpointSource(v, name, state))
        elif (hit := checkpoints.find_local(e, cfg.checkpoint_dir)) is not None:
            out.append(CheckpointSource(v, hit[1].name, "found", origin=hit[0]))
        else:
            out.append(CheckpointSource(v, e.checkpoint.file_name, "download" if cfg.download else "missing",
                                        url=_public_url(e)))
    return out


def _public_url(entry: zoo.ModelEntry) -> str:
    return next((u for u in entry.checkpoint.urls if not u.startswith(checkpoints.HF_PREFIX)),
                entry.checkpoint.urls[0] if entry.checkpoint.urls else "")


# --- shards ------------------------------------------------------------------------------------------


def demo_shard() -> Optional[Path]:
    """The bundled demo shard, when it is there."""
    if _demo is None:
        return None
    p = zoo.ASSETS / _demo.SHARD
    return p if p.is_file() else None


def shard_choices(cfg: AppConfig) -> list[tuple[str, str]]:
    """(label, path) of the demo shard and the ClickMe shards found locally."""
    out = []
    d = demo_shard()
    if d is not None:
        out.append((f"{d.name} (demo)", str(d)))  # short: a dropdown shows it whole
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
    known = ", ".join(Path(p).name for _, p in choices)
    raise UserError(f"unknown shard {shard[:limits.MAX_NAME_CHARS]!r}; choose one of: {known}")


@functools.lru_cache(maxsize=32)
def _open_shard(path: str, mtime: float) -> clickme.ClickMeShard:
    return clickme.ClickMeShard(path)


def open_shard(path: Path) -> clickme.ClickMeShard:
    """The shard at ``path`` (cached per file identity); an unreadable one is a ``UserError`` naming it."""
    try:
        return _open_shard(str(path), path.stat().st_mtime)
    except (OSError, clickme.ClickMeFormatError) as e:
        raise UserError(f"cannot read the shard {path.name}: {e}") from None


INDEX_FIELD = "the record index (a whole number or 'random')"


def parse_index(index, n_records: int) -> int:
    """The record ``index`` names in a shard of ``n_records`` records: plain ASCII digits (or an integral number), or
    'random'/empty for a random one. "3.9", "inf", "1e400", "٣", "0x10" and "-1" are refused with a message."""
    if n_records <= 0:
        raise UserError("the shard holds no records")
    if index is None or (isinstance(index, str) and index.strip().lower() in ("", "random")):
        return random.randrange(n_records)
    try:
        i = limits.whole_number(index, INDEX_FIELD, -limits.MAX_SEED, limits.MAX_SEED)
    except limits.LimitError as e:
        raise UserError(str(e)) from None
    if not 0 <= i < n_records:
        raise UserError(f"the shard has {n_records} records: choose an index from 0 to {n_records - 1}")
    return i


def clickme_sample(shard: Optional[str], index, cfg: AppConfig) -> Sample:
    """Record ``index`` of a listed shard as a sample; a bad shard or index is a ``UserError``."""
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


def _path_of(file) -> Optional[str]:
    if file is None:
        return None
    if isinstance(file, dict):  # a FileData dict from some clients
        return file.get("path")
    return getattr(file, "name", None) if not isinstance(file, (str, os.PathLike)) else str(file)


def load_human_file(path: str) -> np.ndarray:
    """An uploaded human map (image or .npy), or a ``UserError`` saying what is wrong with it."""
    try:
        return images.load_map(path)
    except (images.ImageError, limits.LimitError) as e:
        raise UserError(f"human map: {e}") from None


@dataclass(frozen=True)
class Prepared:
    """An input ready for ``run_comparison``: the sample, the target to explain, notes for anything converted
    or adjusted, and where its human map comes from ("ClickMe", "uploaded `x.png`", "painted", or None)."""

    sample: Sample
    target: object
    notes: tuple[str, ...] = ()
    human_source: Optional[str] = None


def upload_sample(image_file, human_file=None, painted: Optional[np.ndarray] = None) -> Prepared:
    """The uploaded photo with the user's map: an uploaded one first, else ``painted`` (the painted strokes'
    opacity, any size)."""
    path = _path_of(image_file)
    if not path:
        raise UserError("upload a photo first (or pick one of the example photos)")
    try:
        image, notes = images.load_image(path, with_notes=True)
    except images.ImageError as e:
        raise UserError(f"photo: {e}") from None
    notes = [f"photo: {n}" for n in notes]
    human_raw, hpath, source = None, _path_of(human_file), None
    if hpath:
        human_raw, source = load_human_file(hpath), f"uploaded `{Path(hpath).name}`"
        if painted is not None:
            notes.append("both an uploaded and a painted human map: using the uploaded one")
        notes += _size_notes(human_raw.shape, image.shape[:2])
    elif painted is not None:
        human_raw, source = painted, "painted on the photo"
    if human_raw is not None and float(human_raw.min()) == float(human_raw.max()):
        notes.append(f"the human map is constant (every pixel {float(human_raw.min()):g}): it ranks no region "
                     "above another, so Spearman's ρ against it is undefined")
    return Prepared(Sample.from_image(image, human_raw, name=Path(path).name), TARGET_LABEL, tuple(notes), source)


def _size_notes(map_shape: tuple, image_shape: tuple) -> list[str]:
    (mh, mw), (h, w) = map_shape, image_shape
    if (mh, mw) == (h, w):
        return []
    stretch = abs(mw / mh - w / h) > 0.01 * (w / h)
    return [f"the human map is {mw}×{mh} and the photo {w}×{h}: the map was resampled over the whole photo"
            + (", stretching it (different aspect ratio)" if stretch else "")]


# --- computing ----------------------------------------------------------------------------------------


# What a call may hold a ZeroGPU GPU for, in seconds (its quota unit; shorter calls are scheduled sooner).
# One comparison computes in well under a second on a GPU: the rest is the worker's start and the copy of the
# pair's weights to the GPU (up to ~350 MB for convnext_base).
COMPARE_GPU_SECONDS = 30
# A Dataset run: the same start, then one CAM pass and scoring per (pair, image), batched.
DATASET_GPU_BASE_SECONDS = 30
DATASET_GPU_SECONDS_PER_IMAGE = 0.25
MAX_GPU_SECONDS = 300


def _spaces_gpu():
    try:
        import spaces
    except ImportError:
        return None
    return spaces.GPU


def zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU (the ``spaces`` package reads the same variable)."""
    return (os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")) and _spaces_gpu() is not None


def dataset_gpu_seconds(archs, n_images) -> int:
    """The GPU time a Dataset run of ``n_images`` records over the pairs ``archs`` ("a,b" or a list) asks for.

    Called before the input is checked, so anything unreadable asks for the most (the run then fails fast)."""
    names = archs.split(",") if isinstance(archs, str) else list(archs or [])
    try:
        n = int(n_images)
    except (TypeError, ValueError):
        return MAX_GPU_SECONDS
    seconds = DATASET_GPU_BASE_SECONDS + DATASET_GPU_SECONDS_PER_IMAGE * max(1, len(names)) * max(1, n)
    return int(min(MAX_GPU_SECONDS, seconds))


class _Failed:
    """A ``UserError`` raised inside the GPU call, returned as a value: ZeroGPU's worker re-raises only
    ``gr.Error`` and shows anything else as a bare "ZeroGPU worker error"."""

    def __init__(self, error: UserError):
        self.error = error

    def __reduce__(self):  # crossing to the main process: the message and, for a missing checkpoint, the arch
        return _failed, (str(self.error), getattr(self.error, "arch", None))


def _failed(message: str, arch: Optional[str]) -> _Failed:
    if arch is None:
        return _Failed(UserError(message))
    error = CheckpointProblem.__new__(CheckpointProblem)
    UserError.__init__(error, message)
    error.arch = arch
    return _Failed(error)


def _carrying_user_errors(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            return _Failed(e)

    return run


def _config_and_progress(args: tuple, kwargs: dict) -> tuple[Optional[AppConfig], Optional[Progress]]:
    """The call's ``AppConfig`` and the progress callback that follows it (the call sites' convention)."""
    for i, a in enumerate(args):
        if isinstance(a, AppConfig):
            return a, kwargs.get("progress", args[i + 1] if i + 1 < len(args) else None)
    return kwargs.get("cfg"), kwargs.get("progress")


def _offline(args: tuple, kwargs: dict, cfg: Optional[AppConfig]) -> tuple[tuple, dict]:
    if cfg is None:
        return args, kwargs
    gpu_cfg = dataclasses.replace(cfg, download=False)
    return (tuple(gpu_cfg if a is cfg else a for a in args),
            {k: gpu_cfg if v is cfg else v for k, v in kwargs.items()})


def _preload(archs: list[str], cfg: AppConfig, progress: Optional[Progress]) -> None:
    for arch in archs:
        try:
            load_pair(arch, cfg, progress)
        except CheckpointProblem:
            if len(archs) == 1:
                raise
            # a call over several pairs says itself what a missing one means (its load fails fast: offline)


def on_gpu(duration=COMPARE_GPU_SECONDS, pairs: Optional[Callable[..., list[str]]] = None):
    """Run the decorated function inside ``spaces.GPU`` with the model pairs it uses already loaded here.

    ZeroGPU attaches a GPU only inside ``spaces.GPU`` functions, which it runs in a forked worker process;
    elsewhere the package returns the function unchanged. ``duration``: the seconds the call may hold the GPU,
    or a function of the call's arguments returning them (``spaces.GPU`` evaluates it per call).
    ``pairs``: a function of the call's arguments naming the archs whose pairs the call uses. They are
    downloaded, hashed, built and frozen in this process, on the CPU, before the GPU is asked for, and kept
    in the LRU; inside the call downloads are off and ``load_pair`` finds them there. The decorated function
    takes the ``AppConfig`` among its arguments, followed by the progress callback, if any.

    Why the pair is looked up inside rather than passed in: ZeroGPU pickles a call's arguments into the
    worker, which would copy whole models per call. The worker is forked from this process, so it inherits
    the LRU, and tensors placed on ``cuda`` here (the default device under ZeroGPU, whose patching keeps
    them on the CPU here) are the ones ZeroGPU copies to the GPU when a worker starts.
    """
    def wrap(fn):
        gpu = _spaces_gpu()
        guarded = _carrying_user_errors(fn)
        on_device = gpu(duration=duration)(guarded) if gpu is not None else guarded

        @functools.wraps(fn)
        def call(*args, **kwargs):
            cfg, progress = _config_and_progress(args, kwargs)
            if pairs is not None:
                if cfg is None:
                    raise TypeError(f"{fn.__name__} loads pairs: it needs an AppConfig argument")
                try:
                    archs = list(pairs(*args, **kwargs))
                except (LookupError, ValueError):
                    archs = []  # arguments naming no pair: the function says what is wrong with them
                _preload(archs, cfg, progress)
            args, kwargs = _offline(args, kwargs, cfg)
            out = on_device(*args, **kwargs)
            if isinstance(out, _Failed):
                raise out.error
            return out

        call.gpu_function, call.gpu_duration = on_device, duration
        return call

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
    """Both models of ``arch``; a missing or unusable checkpoint is a ``CheckpointProblem`` naming every file
    the pair lacks and what to do about it."""
    def report(variant, done, total):
        if progress is not None:
            progress((done, total), desc=f"Downloading the {VARIANT_TITLES[variant]} checkpoint of {arch}",
                     unit="bytes")

    _entry(arch)
    if progress is not None:
        progress(0.05, desc=f"Loading the {arch} pair (first use takes longer)")
    try:
        return runtime.current().load_pair(arch, checkpoint_dir=cfg.checkpoint_dir, device=cfg.device,
                                           download=cfg.download, progress=report)
    except checkpoints.CheckpointUnavailable as e:
        # the raw cause (a connection error's chain) is for the log; the visitor gets what to do
        log.warning("the %s checkpoints are unavailable: %s", arch, str(e).splitlines()[0][:500])
        raise CheckpointProblem(missing_files_message(arch, cfg), arch) from None
    except checkpoints.CheckpointError as e:
        raise CheckpointProblem(f"The {arch} checkpoints cannot be used: {e}", arch) from None


def missing_files_message(arch: str, cfg: AppConfig) -> str:
    """One message naming every checkpoint file ``arch`` lacks on this server, and how to provide them."""
    missing = [s for s in checkpoint_sources(arch, cfg) if not s.available]
    files = " and ".join(f"{s.file_name} ({VARIANT_TITLES[s.variant]}" + (f", from {s.url})" if s.url else ")")
                         for s in missing) or "its checkpoint files"
    why = ("they could not be downloaded (this server may have no internet access)" if cfg.download
           else "downloads are off on this server")
    return (f"The {arch} checkpoints are not available: {files} {'is' if len(missing) == 1 else 'are'} missing and "
            f"{why}. Put the files in the folder named by $DCLSVIZ_CHECKPOINT_DIR (or --checkpoint-dir) or in "
            "$DCLSVIZ_CACHE/checkpoints, or connect the server to the internet with downloads on.")


class CheckpointProblem(UserError):
    """A pair's checkpoints are missing or unusable; ``arch`` names the pair."""

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


@dataclass(frozen=True)
class CamOptions:
    """What a comparison computes beyond the pair and the input: the attribution methods (the paper's two by
    default), faithfulness (deletion, insertion, ROAD: costly) and the CAM layer (None: the study's)."""

    methods: tuple[str, ...] = MAPS
    faithfulness: bool = False
    layer: Optional[str] = None

    @classmethod
    def checked(cls, chosen, faithfulness=False, layer=None) -> "CamOptions":
        """Options from widget or API values: ``chosen`` as ``method_names`` takes it, ``layer`` a module name
        ("" or None: the study's layer)."""
        layer = limits.text(layer, "layer", limits.MAX_NAME_CHARS) if layer is not None else ""
        return cls(method_names(chosen), bool(faithfulness), layer or None)


# faithfulness runs 2 × steps perturbed copies and ROAD's through each model, per map
FAITHFULNESS_GPU_FACTOR = 4


def compare_gpu_seconds(*args, **kwargs) -> int:
    """The GPU time one comparison asks for: more when it measures faithfulness."""
    options = kwargs.get("options") or next((a for a in args if isinstance(a, CamOptions)), CamOptions())
    return COMPARE_GPU_SECONDS * (FAITHFULNESS_GPU_FACTOR if options.faithfulness else 1)


def run_comparison(arch: str, sample: Sample, target, threshold: float, geometry_name: str, cfg: AppConfig,
                   progress: Optional[Progress] = None, options: CamOptions = CamOptions()) -> Comparison:
    """Both models of ``arch`` on ``sample``: settings checked and the pair loaded here, the CAMs on the GPU."""
    threshold = check_settings(threshold, geometry_name)
    return _compare_on_gpu(arch, sample, target, threshold, geometry_name, cfg, progress, options)


@on_gpu(compare_gpu_seconds, pairs=lambda arch, *args, **kwargs: [arch])
def _compare_on_gpu(arch: str, sample: Sample, target, threshold: float, geometry_name: str, cfg: AppConfig,
                    progress: Optional[Progress] = None, options: CamOptions = CamOptions()) -> Comparison:
    pair = load_pair(arch, cfg)  # loaded before the GPU was asked for: the LRU's
    if progress is not None:
        asked = ", ".join(methods.TITLES[m] for m in options.methods)
        progress(0.8, desc=f"{asked} of both models" + (" with faithfulness" if options.faithfulness else ""))
    try:
        return compare(pair, sample, target, threshold, geometry_name, methods=options.methods,
                       faithfulness=options.faithfulness, layer=options.layer)
    except LayerError as e:  # a user's layer name: said as it is, also from ZeroGPU's worker
        raise UserError(f"layer: {e}") from None


def build_sample(source: str, arch: str, shard, index, image_file, human_file, painted, target,
                 cfg: AppConfig) -> Prepared:
    """The sample and the target to explain, with notes for anything converted or adjusted."""
    if source not in SOURCES:
        raise UserError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
    target = target_spec(target, arch)
    if source == "upload":
        return dataclasses.replace(upload_sample(image_file, human_file, painted), target=target)
    sample, notes = clickme_sample(shard, index, cfg), ()
    if target == TARGET_LABEL and not shard_label_space_matches(sample.name, arch):
        notes = (f"the shard's labels are not classes of {arch}: explaining the predicted class instead of the "
                 "ground truth",)
        target = TARGET_PRED
    return Prepared(sample, target, notes, "ClickMe" if sample.human is not None else None)


def method_names(spec) -> tuple[str, ...]:
    """Attribution methods from a tab's multi-select (a list) or an API call (comma-separated text, '' or None
    for the paper's two, as before methods could be chosen), in registry order; a UserError names the known ones.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return methods.PAPER
    if isinstance(spec, str):
        spec = limits.text(spec, "methods", limits.MAX_NAME_CHARS * len(methods.NAMES))
    try:
        return methods.parse(spec)
    except ValueError as e:
        raise UserError(str(e)) from None
