"""The one data path: Sample × models → maps in the comparison frame → scores.

The CLI, the app, dataset evaluation and review sessions all come through ``explain_batch`` /
``compare``; nothing else preprocesses images, computes CAMs or scores them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import geometry, human, labels, methods, metrics
from .cam import DEFAULT_THRESHOLD, CamEngine
from .faithfulness import DEFAULT_STEPS, Faithfulness
from .models import LoadedModel
from .results import UNDEFINED, MapScores, Provenance

MAPS = methods.PAPER  # the paper's two: the default everywhere
MAP_TITLES = methods.TITLES  # every method's title, the paper's two included

class NonFiniteError(ValueError):
    """An input or a model's logits hold NaN or infinite values; the message says which."""


# "label": the sample's ground truth when it has one, else the prediction; "pred"; or a class index
TargetSpec = Union[str, int]


@dataclass
class Sample:
    """One image to explain, in the image frame."""

    image: np.ndarray  # RGB uint8 (H, W, 3)
    human: Optional[np.ndarray] = None  # human map over the whole image, (224, 224) float32
    label: Optional[int] = None
    name: str = ""
    input_tensor: Optional[torch.Tensor] = None  # already-normalised (3, H, W): skips preprocessing

    @classmethod
    def from_clickme(cls, record) -> "Sample":
        """A ClickMe record as a sample: its image, its human map and its label."""
        return cls(record.image_u8(), record.human_map(), int(record.label), f"{record.shard}:{record.index}")

    @classmethod
    def from_image(cls, image: np.ndarray, human_raw: Optional[np.ndarray] = None, label: Optional[int] = None,
                   name: str = "") -> "Sample":
        """``human_raw``: a user's map of any size over the image; it goes through the ClickMe pipeline."""
        return cls(image, None if human_raw is None else human.user_map(human_raw), label, name)

    @property
    def sha256(self) -> str:
        """The sha256 of the pixels the models see (the input tensor when given): identifies the input in manifests."""
        h = hashlib.sha256()
        src = self.input_tensor.numpy() if self.input_tensor is not None else self.image
        h.update(np.ascontiguousarray(src).tobytes())
        return h.hexdigest()


@dataclass
class ModelOutput:
    """What one model says about one sample, in the comparison frame."""

    provenance: Provenance
    target: int
    top5: list[tuple[int, float]]
    logits: np.ndarray
    maps: dict[str, np.ndarray]  # name -> (224, 224)
    lowres: dict[str, np.ndarray]
    human: Optional[np.ndarray]  # the human map in this model's comparison frame
    window: geometry.Window
    scores: dict[str, MapScores] = field(default_factory=dict)  # map name -> its scores
    seconds: float = 0.0
    class_names: Sequence[str] = ()
    faithfulness: dict[str, Faithfulness] = field(default_factory=dict)  # map name -> its numbers, when asked
    cam_layer: str = ""  # the module the maps come from

    def class_name(self, index: int) -> str:
        """The model's name for class ``index`` (the index itself beyond the list)."""
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def record(self, class_names: Optional[Sequence[str]] = None, public: bool = True) -> dict:
        """The one JSON form of a model's output, in the app's manifest and in ``explain``'s result.json.

        Args:
            class_names: names for the class indices (default: the model's own).
            public: name the checkpoint by its file name only (see ``Provenance.as_dict``).
        """
        name = (lambda i: class_names[i]) if class_names else self.class_name
        return {**self.provenance.as_dict(public), "target": self.target, "target_name": name(self.target),
                "top5": [[c, p, name(c)] for c, p in self.top5],
                "scores": {m: s.as_dict() for m, s in self.scores.items()}, "seconds": round(self.seconds, 4),
                "cam_layer": self.cam_layer,
                **({"faithfulness": {m: f.as_dict() for m, f in self.faithfulness.items()}}
                   if self.faithfulness else {})}


def resolve_target(spec: TargetSpec, sample: Sample) -> Optional[int]:
    """None means "the model's own top-1"."""
    if spec == "label":
        return sample.label
    if spec == "pred" or spec is None:
        return None
    return int(spec)


def score_batch(maps: Sequence[dict[str, np.ndarray]], humans: Sequence[Optional[np.ndarray]],
                device=None) -> list[dict[str, MapScores]]:
    """Spearman, ceiling-normalised ρ, Dice and IoU of every map of every image against its human map.

    One call for a whole batch: each map is sorted once for all four, on ``device`` (the models').
    An image without a human map gets ``UNDEFINED`` scores.
    """
    out: list[dict[str, MapScores]] = [{k: UNDEFINED for k in m} for m in maps]
    have = [i for i, h in enumerate(humans) if h is not None]
    if not have:
        return out
    names = list(maps[have[0]])
    ms = np.stack([np.stack([maps[i][k] for k in names]) for i in have])
    hs = np.stack([humans[i] for i in have])
    for i, scores in zip(have, metrics.score_pairs(ms, hs, device=device)):
        out[i] = {k: MapScores(r, metrics.ceiling_normalised(r), d, j) for k, (r, d, j) in zip(names, scores)}
    return out


def prepare_inputs(samples: Sequence[Sample], transform) -> tuple[torch.Tensor, list[geometry.Window]]:
    """The model input batch for ``transform`` and each sample's crop window."""
    xs, windows = [], []
    for s in samples:
        if s.input_tensor is not None:
            x, w = s.input_tensor, geometry.Window(0.0, 0.0, 1.0, 1.0)
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteError(f"the input tensor of sample {s.name or '(unnamed)'} holds NaN/inf values")
        else:
            x, w = geometry.preprocess(s.image, transform)
        xs.append(x)
        windows.append(w)
    return torch.stack(xs), windows


def explain_batch(loaded: LoadedModel, samples: Sequence[Sample], target: TargetSpec = "label",
                  threshold: float = DEFAULT_THRESHOLD, geometry_name: str = "paper",
                  engine: Optional[CamEngine] = None,
                  inputs: Optional[tuple[torch.Tensor, list[geometry.Window]]] = None,
                  methods: Sequence[str] = MAPS, faithfulness: bool = False, layer: Optional[str] = None,
                  steps: int = DEFAULT_STEPS) -> list[ModelOutput]:
    """Preprocess, one forward + backward for the whole batch, frame the maps, score them.

    Args:
        inputs: the result of ``prepare_inputs`` for this model's transform, when already made.
        methods: the maps to make and score (``methods.parse``); the paper's two by default.
        faithfulness: also deletion, insertion and ROAD of every map (``faithfulness``; costly).
        layer: the CAM layer (default: the study's); ignored when ``engine`` is given.
        steps: deletion and insertion steps.
    """
    start = time.perf_counter()
    x, windows = inputs if inputs is not None else prepare_inputs(samples, loaded.entry.transform)
    engine = engine or CamEngine(loaded, layer)
    result = engine.explain(x, [resolve_target(target, s) for s in samples], threshold, methods=methods)
    finite = np.isfinite(result.logits).all(axis=1)
    if not finite.all():
        bad = samples[int(np.argmin(finite))]
        raise NonFiniteError(f"model {loaded.entry.id} produced non-finite logits for sample "
                         f"{bad.name or '(unnamed)'}: its maps and scores would be meaningless")
    names = labels.class_names_for(loaded.entry)
    maps = [{m: result.maps[m][i] for m in methods} for i in range(len(samples))]
    humans = [None if s.human is None else geometry.to_frame(s.human, w, geometry_name)
              for s, w in zip(samples, windows)]
    scores = score_batch(maps, humans, loaded.device)
    faith = _faithfulness(loaded, x, result, methods, steps) if faithfulness else [{} for _ in samples]
    per_image = (time.perf_counter() - start) / len(samples)
    return [ModelOutput(loaded.provenance(), int(result.targets[i]), result.top5(i), result.logits[i], maps[i],
                        {m: result.lowres[m][i] for m in methods}, humans[i], windows[i], scores[i], per_image,
                        names, faith[i], engine.layer) for i in range(len(samples))]


def _faithfulness(loaded: LoadedModel, x: torch.Tensor, result, names: Sequence[str], steps: int):
    """Deletion, insertion and ROAD of each map of each image, the unperturbed probability from the CAM pass."""
    from . import faithfulness

    logits = torch.from_numpy(result.logits).double()
    base = torch.softmax(logits, 1).gather(1, torch.from_numpy(result.targets)[:, None].long())[:, 0].numpy()
    return faithfulness.evaluate_maps(loaded, x, result.targets, {m: result.lowres[m] for m in names}, base,
                                      steps=steps)


@dataclass
class Comparison:
    """Both models of a pair on one sample: their outputs by variant, and the settings that produced them."""

    sample: Sample
    geometry: str
    threshold: float
    target_spec: TargetSpec
    outputs: dict[str, ModelOutput]  # variant -> output
    seconds: float

    @property
    def methods(self) -> tuple[str, ...]:
        """The maps every output carries, in order."""
        return tuple(next(iter(self.outputs.values())).maps)

    @property
    def human(self) -> Optional[np.ndarray]:
        """The human map in the comparison frame (both models share the frame), or None."""
        return next(iter(self.outputs.values())).human

    def frame_image(self) -> np.ndarray:
        """The image as the comparison frame shows it (224×224 RGB), for overlays."""
        return geometry.image_in_frame(self.sample.image, next(iter(self.outputs.values())).window, self.geometry)

    def delta(self, map_name: str) -> Optional[float]:
        """DCLS's ρ minus the baseline's for ``map_name``; None when either is undefined."""
        b = self.outputs["baseline"].scores[map_name].spearman
        d = self.outputs["dcls"].scores[map_name].spearman
        return None if b is None or d is None else d - b

    def manifest(self, class_names: Optional[Sequence[str]] = None, public: bool = True) -> dict:
        """The one JSON form of a comparison: the sample, the settings, each model's ``record`` and Δρ.

        ``explain``'s result.json is this manifest for the one model it ran.
        """
        return {"image_sha256": self.sample.sha256, "sample": self.sample.name, "label": self.sample.label,
                "geometry": self.geometry, "threshold": self.threshold, "target": self.target_spec,
                "has_human_map": self.human is not None,
                "models": {v: o.record(class_names, public) for v, o in self.outputs.items()},
                "delta_spearman": {m: self.delta(m) for m in self.methods} if {"baseline", "dcls"} <= set(self.outputs)
                else None,
                "seconds": round(self.seconds, 4), "versions": versions()}


def compare(pair: dict[str, LoadedModel], sample: Sample, target: TargetSpec = "label",
            threshold: float = DEFAULT_THRESHOLD, geometry_name: str = "paper", *, methods: Sequence[str] = MAPS,
            faithfulness: bool = False, layer: Optional[str] = None) -> Comparison:
    """Explain ``sample`` with every model of ``pair`` (variant → model), preprocessing once per transform.

    Args:
        target: "label" (the sample's class, else the prediction), "pred", or a class index.
        threshold: Threshold-Grad-CAM's threshold.
        geometry_name: "paper" (the study's stretch) or "aligned" (maps placed back into the crop window).
        methods, faithfulness, layer: as ``explain_batch``; every model gets the same.
    """
    start = time.perf_counter()
    prepared: dict = {}  # a baseline and its DCLS twin share their transform: preprocess once
    outputs = {}
    for v, m in pair.items():
        t = m.entry.transform
        if t not in prepared:
            prepared[t] = prepare_inputs([sample], t)
        outputs[v] = explain_batch(m, [sample], target, threshold, geometry_name, inputs=prepared[t],
                                   methods=methods, faithfulness=faithfulness, layer=layer)[0]
    return Comparison(sample, geometry_name, threshold, target, outputs, time.perf_counter() - start)


def versions() -> dict:
    """The versions of the packages that decide the numbers, for manifests and summaries."""
    import timm

    import dclsviz

    try:
        from importlib.metadata import version
        dcls_version = version("dcls")
    except Exception:
        dcls_version = None
    return {"dclsviz": dclsviz.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "dcls": dcls_version, "numpy": np.__version__}
