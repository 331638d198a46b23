"""Pair files: a baseline and its DCLS twin described as data, in TOML, so any timm model can be compared.

A pair file holds the fields of two registry entries (``entries.ModelEntry``): the timm model and its kwargs,
the classes, the transform and the CAM layer they share, and for each variant its checkpoint (a path, URLs or
a Hugging Face repository file, an optional sha256, the container key and key renames); the ``dcls`` variant
adds its DCLS recipe. ``load_file`` reads and checks one (every problem is reported with the field's dotted
name), ``load_folder`` a folder of them, ``install_folder`` adds a folder to the registry at a program's start,
``dumps`` writes a pair back as TOML (the study's own 8 pairs ship that way in ``assets/pairs``), and ``check``
is ``python -m dclsviz pair check FILE``: both models built, loaded strictly and compared once.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from . import zoo
from .checkpoints import HF_FILE, HF_PREFIX, hf_spec
from .entries import (ASSETS, IMAGENET_MEAN, IMAGENET_STD, NAME_PATTERN, SHARE_POSITIONS, VARIANTS,
                      CheckpointSource, DclsRecipe, ModelEntry, Transform)

FORMAT = 1
PAIRS_ENV = "DCLSVIZ_PAIRS"
STUDY_PAIRS = ASSETS / "pairs"  # the study's 8 pairs as pair files, written by ``dumps`` from the registry
ARCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
RULE_NAMES = ("depthwise", "depthwise_square", "depthwise_7x7", "conv_3x3", NAME_PATTERN)
MAX_CLASS_FILE_BYTES = 1_000_000


class PairError(ValueError):
    """A pair file that cannot be used; the message names the file and every wrong field."""


# --- reading fields ------------------------------------------------------------------------------------------


class _Table:
    """One table of a pair file: fields taken by name and kind, each problem noted with its dotted name."""

    def __init__(self, data: Any, name: str, problems: list[str]):
        self.name, self.problems = name, problems
        if not isinstance(data, dict):
            self.note("", f"must be a table, not {_kind(data)}")
            data = {}
        self.data, self.seen = data, set()

    def where(self, key: str) -> str:
        """The dotted name of ``key`` in the file."""
        return f"{self.name}.{key}" if self.name and key else (self.name or key)

    def note(self, key: str, problem: str) -> None:
        """Record ``problem`` with the field ``key`` (empty: the table itself)."""
        self.problems.append(f"{self.where(key) or 'the file'}: {problem}")

    def take(self, key: str, kind: type | tuple, default: Any = ..., check=None) -> Any:
        """The field ``key`` if it has the Python type ``kind`` (and ``check(value)`` returns no problem)."""
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                self.note(key, "is required")
                return None
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:  # TOML true is no number
            ok = False
        else:
            ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int))
        if not ok:
            self.note(key, f"must be {' or '.join(_KIND_NAMES[k] for k in kinds)}, not {_kind(value)}")
            return None
        problem = check(value) if check else None
        if problem:
            self.note(key, problem)
            return None
        return float(value) if kinds == (float,) else value

    def sub(self, key: str, required: bool = True) -> Optional["_Table"]:
        """The sub-table ``key`` (None when it is optional and absent)."""
        self.seen.add(key)
        if key not in self.data and not required:
            return None
        if key not in self.data:
            self.note(key, "is required (a table)")
            return _Table({}, self.where(key), self.problems)
        return _Table(self.data[key], self.where(key), self.problems)

    def finish(self) -> None:
        """Note every field this table does not know: a misspelt field is an error, not silently ignored."""
        for key in self.data:
            if key not in self.seen:
                # a known name inside the unknown one (crop_size: crop) before difflib's nearest spelling
                close = sorted((k for k in self.seen if k in key or key in k), key=len, reverse=True)[:1] \
                    or difflib.get_close_matches(key, sorted(self.seen), 1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(self.seen))})"
                self.note(key, f"unknown field{hint}")


_KIND_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false", list: "an array",
               dict: "a table"}


def _kind(value: Any) -> str:
    return {bool: "true/false", str: "text", int: "a whole number", float: "a number", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _at_least(low: int):
    return lambda v: None if v >= low else f"must be at least {low}, not {v}"


def _one_of(choices: Sequence[str]):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, not {v!r}"


def _texts(v: list) -> Optional[str]:
    return None if all(isinstance(x, str) for x in v) else "must be an array of text"


# --- the sections ---------------------------------------------------------------------------------------------


def _transform(t: _Table) -> Optional[Transform]:
    def triple(name: str, default, positive: bool):
        def check(v):
            if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                return "must be an array of 3 numbers (red, green, blue)"
            if not all(math.isfinite(x) and (x > 0 or not positive) for x in v):
                return "must hold finite numbers" + (" above 0" if positive else "")
            return None

        v = t.take(name, list, list(default), check)
        return None if v is None else tuple(float(x) for x in v)

    resize = t.take("resize", int, check=_at_least(1))
    crop = t.take("crop", int, check=_at_least(16))
    interpolation = t.take("interpolation", str, "bicubic", _one_of(INTERPOLATIONS))
    mean, std = triple("mean", IMAGENET_MEAN, False), triple("std", IMAGENET_STD, True)
    t.finish()
    if None in (resize, crop, interpolation, mean, std):
        return None
    return Transform(resize=resize, crop=crop, interpolation=interpolation, mean=mean, std=std)


def _recipe(t: _Table) -> Optional[DclsRecipe]:
    def regex(v: str) -> Optional[str]:
        try:
            re.compile(v)
        except re.error as e:
            return f"is not a regular expression ({e})"
        return None

    rule = t.take("rule", str, check=_one_of(RULE_NAMES))
    pattern = t.take("pattern", str, None, regex)
    dks = t.take("dilated_kernel_size", int, check=lambda v: None if v >= 1 and v % 2 else
                 f"must be an odd whole number of at least 1 (the kernel is centred), not {v}")
    count = t.take("kernel_count", int, check=_at_least(1))
    version = t.take("version", str, check=_one_of(("v0", "v1")))
    share = t.take("share_positions", str, "stage", _one_of(SHARE_POSITIONS))
    t.finish()
    if rule == NAME_PATTERN and pattern is None and "pattern" not in t.data:
        t.note("pattern", f"is required by the rule {NAME_PATTERN!r}")
        return None
    if None in (rule, dks, count, version, share):
        return None
    return DclsRecipe(rule=rule, dilated_kernel_size=dks, kernel_count=count, version=version, pattern=pattern,
                      share_positions=share)


def _sources(t: _Table, folder: Path) -> tuple[Optional[str], tuple[str, ...]]:
    """The checkpoint's ``path`` (resolved, existing) or its download sources, tried in order."""
    path = t.take("path", str, None, lambda v: None if v else "must not be empty")
    url = t.take("url", str, None, _url_problem)
    urls = t.take("urls", list, None, lambda v: _texts(v) or next(filter(None, map(_url_problem, v)), None)
                  or (None if v else "must not be empty"))
    repo = t.take("hf_repo", str, None, lambda v: None if re.fullmatch(r"[\w.-]+/[\w.-]+", v) else
                  "must be a Hugging Face repository id, org/name")
    hf_file = t.take("hf_file", str, None, _relative_problem)
    given = [k for k in ("path", "url", "urls", "hf_repo") if k in t.data]
    if not given:
        t.note("", "needs one of path, url, urls or hf_repo (where the checkpoint file is)")
    elif "path" in given and len(given) > 1 or "url" in given and "urls" in given:
        t.note("", f"give path alone, or url/urls and/or hf_repo; not {', '.join(given)} together")
    if "hf_file" in t.data and "hf_repo" not in t.data:
        t.note("hf_file", "needs hf_repo")
    if path is not None:
        p = (folder / Path(path).expanduser()).resolve()
        if not p.is_file():
            t.note("path", f"no file at {p}")
        return str(p), ()
    hub = (f"{HF_PREFIX}{repo}" + (f"/{hf_file}" if hf_file and hf_file != HF_FILE else ""),) if repo else ()
    return None, (*hub, *([url] if url else []), *(urls or []))


def _url_problem(v) -> Optional[str]:
    if not isinstance(v, str) or not re.match(r"(https?://|hf-hub:)\S+$", v):
        return f"must be an http(s):// or hf-hub: address, not {v!r}"
    return None


def _relative_problem(v: str) -> Optional[str]:
    parts = v.split("/")
    return None if v and not v.startswith("/") and ".." not in parts else "must be a path inside the repository"


def default_file_name(path: Optional[str], urls: Sequence[str]) -> str:
    """The cache file name of a checkpoint: the basename of its path, else of its first source (as torch.hub)."""
    if path:
        return Path(path).name
    first = urls[0] if urls else ""
    if first.startswith(HF_PREFIX):
        return Path(hf_spec(first)[1]).name
    return first.rsplit("/", 1)[-1].split("?")[0]


def _checkpoint(t: _Table, folder: Path) -> Optional[CheckpointSource]:
    path, urls = _sources(t, folder)
    file_name = t.take("file_name", str, None, lambda v: None if v and "/" not in v and v not in (".", "..")
                       else "must be a plain file name")
    container_key = t.take("container_key", str, None)
    naming = t.take("naming", str, "timm")
    sha = t.take("sha256", str, None, lambda v: None if SHA256.fullmatch(v) else "must be 64 hexadecimal digits")
    drop = t.take("drop", list, [], lambda v: _texts(v) or (None if all(v) else "must not hold empty text"))
    rename = t.sub("rename", required=False)
    renames = ()
    if rename is not None:
        for old in rename.data:
            rename.take(old, str)
        renames = tuple((old, new) for old, new in rename.data.items() if isinstance(new, str))
        if "" in rename.data:
            rename.note('""', "an empty prefix would rename every key; name the prefix to replace")
    t.finish()
    if path is None and not urls:
        return None
    return CheckpointSource(urls=urls, file_name=file_name or default_file_name(path, urls),
                            container_key=container_key, naming=naming, sha256=sha.lower() if sha else None,
                            path=path, renames=renames, drop=tuple(drop or ()))


def _classes(top: _Table, folder: Path, num_classes: Optional[int]) -> Optional[tuple[str, ...]]:
    """The class names; None: ImageNet-1k's (or a field in error). A list, or ``{file = "names.txt"}``, one a line."""
    value = top.take("classes", (str, list, dict), "imagenet")
    if value is None:
        return None
    names: Optional[list[str]] = None
    if isinstance(value, str):
        if value != "imagenet":
            top.note("classes", f"must be \"imagenet\", an array of names or {{file = \"names.txt\"}}, not {value!r}")
            return None
    elif isinstance(value, list):
        if _texts(value):
            top.note("classes", "must be an array of text")
            return None
        names = list(value)
    else:
        names = _class_file(_Table(value, "classes", top.problems), folder)
        if names is None:
            return None
    if num_classes is None:
        return None
    if names is None:
        if num_classes != 1000:
            top.note("classes", f"\"imagenet\" names 1000 classes, but num_classes is {num_classes}; give the "
                                f"model's own class names")
            return None
        return None
    if len(names) != num_classes or not all(n.strip() for n in names):
        top.note("classes", f"must name each of the {num_classes} classes once (non-empty), got {len(names)} names")
        return None
    return tuple(names)


def _class_file(t: _Table, folder: Path) -> Optional[list[str]]:
    name = t.take("file", str)
    t.finish()
    if name is None:
        return None
    path = (folder / Path(name).expanduser()).resolve()
    try:
        if path.stat().st_size > MAX_CLASS_FILE_BYTES:
            t.note("file", f"{path} is over {MAX_CLASS_FILE_BYTES:,} bytes")
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        t.note("file", f"cannot read {path} as UTF-8 text ({type(e).__name__}: {e})")
        return None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _timm_kwargs(t: Optional[_Table]) -> dict:
    # arrays become tuples: the registry's own kwargs are tuples, and an entry stays hashable data
    def frozen(v):
        if isinstance(v, list):
            return tuple(frozen(x) for x in v)
        if isinstance(v, dict):
            return {k: frozen(x) for k, x in v.items()}
        return v

    return {} if t is None else {k: frozen(v) for k, v in t.data.items()}


def _variant(top: _Table, variant: str, folder: Path, common: dict) -> ModelEntry:
    t = top.sub(variant)
    notes = t.take("notes", str, "")
    checkpoint = _checkpoint(t.sub("checkpoint"), folder)
    recipe = _recipe(t.sub("recipe")) if variant == "dcls" else None
    t.finish()
    # built even when a field is in error (the caller raises then): every other field is still read and checked
    return ModelEntry(variant=variant, checkpoint=checkpoint, dcls=recipe, notes=notes, **common)


def _common(top: _Table, folder: Path, path: Path) -> dict:
    """The fields both variants share, keyed as ``ModelEntry``'s (a field in error is noted, and None here)."""
    top.take("format", int, FORMAT, lambda v: None if v == FORMAT else
             f"this dclsviz reads format {FORMAT}, not {v}")
    num_classes = top.take("num_classes", int, 1000, _at_least(1))
    class_names = _classes(top, folder, num_classes)
    family = top.take("family", str, "timm", _filter_problem)
    return dict(
        arch=top.take("arch", str, check=lambda v: None if ARCH_NAME.fullmatch(v) else
                      "must be 1-64 letters, digits, '_' or '-', starting with a letter or digit"),
        family=family, timm_name=top.take("timm_name", str, check=_timm_problem),
        timm_kwargs=_timm_kwargs(top.sub("timm_kwargs", required=False)), num_classes=num_classes,
        class_names=class_names, transform=_transform(top.sub("transform")),
        cam_layer=top.take("cam_layer", str, check=lambda v: None if v.strip() else "must not be empty"),
        channels_last=top.take("channels_last", bool, True), pair_file=str(path))


def _timm_problem(name: str) -> Optional[str]:
    import timm

    if timm.is_model(name):
        return None
    close = difflib.get_close_matches(name, timm.list_models(), 3)
    return f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")


def _filter_problem(family: str) -> Optional[str]:
    from .checkpoints import key_filter

    try:
        key_filter(family)
    except ValueError as e:
        return str(e)
    return None


def parse(text: str, path: Path) -> tuple[ModelEntry, ModelEntry]:
    """The (baseline, dcls) entries a pair file's ``text`` describes; ``path`` places its relative paths.

    Raises:
        PairError: naming the file and every field in error (the models are not built here; see ``load_file``).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PairError(f"{path}: not valid TOML: {e}") from None
    problems: list[str] = []
    top = _Table(data, "", problems)
    common = _common(top, path.parent, path)
    entries = [_variant(top, v, path.parent, common) for v in VARIANTS]
    top.finish()
    if problems:
        raise PairError(f"{path}:\n" + "\n".join(f"  {p}" for p in problems))
    return entries[0], entries[1]


# --- the model's structure ------------------------------------------------------------------------------------


def _skeleton(entry: ModelEntry):
    """The architecture without its DCLS layers, on the meta device (no memory, no initialisation) when it can."""
    import timm
    import torch

    def make():
        return timm.create_model(entry.timm_name, pretrained=False, num_classes=entry.num_classes,
                                 **entry.timm_kwargs)

    try:
        with torch.device("meta"):
            return make()
    except Exception:  # a model whose constructor reads tensor values: build it for real instead
        return make()


def check_structure(baseline: ModelEntry, dcls_entry: ModelEntry) -> list[str]:
    """Build the pair's architecture and check what the file says about it; return the DCLS layers replaced.

    Raises:
        PairError: timm cannot build the model with these kwargs, the CAM layer is no module of it, or the
            recipe selects no convolution; each message names the field.
    """
    from . import dcls

    where = baseline.pair_file or baseline.arch
    try:
        model = _skeleton(baseline)
    except Exception as e:
        raise PairError(f"{where}:\n  timm_name, timm_kwargs, num_classes: timm cannot build "
                        f"{baseline.timm_name} with them ({type(e).__name__}: {e})") from None
    problems = []
    names = [n for n, _ in model.named_modules() if n]
    if baseline.cam_layer not in names:
        close = difflib.get_close_matches(baseline.cam_layer, names, 3, 0.5)
        top = [n for n in names if "." not in n]
        problems.append(f"cam_layer: {baseline.timm_name} has no module {baseline.cam_layer!r}; "
                        + (f"did you mean {', '.join(map(repr, close))}? " if close else "")
                        + f"its top-level modules are {', '.join(top)}")
    recipe = dcls_entry.dcls
    try:
        replaced = [n for n, _ in dcls.select(model, recipe)]
    except ValueError as e:
        replaced = None
        problems.append(f"dcls.recipe: {e}")
    if replaced == []:
        restricted = f" with the pattern {recipe.pattern!r}" if recipe.pattern else ""
        problems.append(f"dcls.recipe.rule: the rule {recipe.rule!r}{restricted} selects no convolution of "
                        f"{baseline.timm_name}")
    if problems:
        raise PairError(f"{where}:\n" + "\n".join(f"  {p}" for p in problems))
    return replaced


def load_file(path: os.PathLike | str) -> tuple[ModelEntry, ModelEntry]:
    """The (baseline, dcls) entries of a pair file, fields and model structure checked.

    Raises:
        PairError: naming the file and each field in error.
    """
    path = Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PairError(f"{path}: cannot read the pair file ({type(e).__name__}: {e})") from None
    baseline, twin = parse(text, path)
    check_structure(baseline, twin)
    return baseline, twin


def load_folder(folder: os.PathLike | str) -> list[ModelEntry]:
    """Every pair of the ``*.toml`` files in ``folder`` (sorted by name), as registry entries.

    Raises:
        PairError: a file in error (every such file is reported), or a pair name taken by a built-in pair or
            by another file of the folder.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise PairError(f"no pair folder at {folder}")
    return load_files(sorted(folder.glob("*.toml")))


def load_files(paths: Iterable[os.PathLike | str]) -> list[ModelEntry]:
    """The entries of every pair file of ``paths``, in order.

    Raises:
        PairError: a file in error (every such file is reported), or a pair name taken by a built-in pair or
            by another of the files.
    """
    found, problems, owner = [], [], {}
    for path in map(Path, paths):
        try:
            pair = load_file(path)
        except PairError as e:
            problems.append(str(e))
            continue
        arch = pair[0].arch
        if f"{arch}.baseline" in zoo.REGISTRY:  # the mapping itself: reading it here does not freeze it
            problems.append(f"{path}:\n  arch: {arch!r} is a built-in pair; give yours another name")
        elif arch in owner:
            problems.append(f"{path}:\n  arch: {arch!r} is already the pair of {owner[arch].name}")
        else:
            owner[arch] = path
            found.extend(pair)
    if problems:
        raise PairError("\n".join(problems))
    return found


def install_folder(folder: os.PathLike | str) -> list[ModelEntry]:
    """Add the pairs of ``folder`` to the registry (``zoo.install``): once, at a program's start, before anything
    reads the registry. Returns the entries added."""
    found = load_folder(folder)
    zoo.install(found)
    return found


def install_files(paths: Iterable[os.PathLike | str]) -> list[ModelEntry]:
    """Add the pairs of the files ``paths`` to the registry, as ``install_folder`` does a folder's."""
    found = load_files(paths)
    zoo.install(found)
    return found


# --- writing --------------------------------------------------------------------------------------------------


def _string(s: str) -> str:
    import json

    # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _string(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(_value, v)) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise ValueError(f"{v!r} ({type(v).__name__}) cannot be written in a pair file")


def _lines(fields: Iterable[tuple[str, Any]]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in fields]


SHARED_FIELDS = ("arch", "family", "timm_name", "timm_kwargs", "num_classes", "class_names", "transform",
                 "cam_layer", "channels_last")


def _checkpoint_lines(c: CheckpointSource, base: Optional[Path]) -> tuple[list[str], list[str]]:
    """The ``[VARIANT.checkpoint]`` table's lines and its ``rename`` table's."""
    path = c.path or (str(ASSETS / c.bundled) if c.bundled else None)
    if path is not None:
        if base is not None and Path(path).is_relative_to(base):
            path = Path(path).relative_to(base).as_posix()
        fields = [("path", path)]
    elif len(c.urls) == 1 and c.urls[0].startswith(HF_PREFIX):
        repo, file = hf_spec(c.urls[0])
        fields = [("hf_repo", repo)] + ([("hf_file", file)] if file != HF_FILE else [])
    elif len(c.urls) == 1:
        fields = [("url", c.urls[0])]
    else:
        fields = [("urls", list(c.urls))]
    if c.file_name != default_file_name(path, c.urls):
        fields.append(("file_name", c.file_name))
    fields += [("container_key", c.container_key)] if c.container_key is not None else []
    fields += [("naming", c.naming)] if c.naming != "timm" else []
    fields += [("sha256", c.sha256)] if c.sha256 else []
    fields += [("drop", list(c.drop))] if c.drop else []
    return _lines(fields), _lines(c.renames)


def dumps(baseline: ModelEntry, twin: ModelEntry, *, base: Optional[Path] = None, comment: str = "") -> str:
    """A pair file (TOML) describing ``baseline`` and its DCLS ``twin``; ``parse`` reads it back to equal entries.

    Args:
        base: the folder the file will be in; checkpoint paths under it are written relative to it.
        comment: lines written first, as TOML comments.

    Raises:
        ValueError: the entries are no pair (another field differs than checkpoint, recipe and notes).
    """
    if (baseline.variant, twin.variant) != VARIANTS or twin.dcls is None:
        raise ValueError("dumps takes a baseline entry and its DCLS twin, in that order")
    differ = [f for f in SHARED_FIELDS if getattr(baseline, f) != getattr(twin, f)]
    if differ:
        raise ValueError(f"{baseline.id} and {twin.id} differ in {', '.join(differ)}: a pair file shares them")
    e, t, r = baseline, baseline.transform, twin.dcls
    out = [f"# {line}".rstrip() for line in comment.splitlines()]
    out += _lines([("format", FORMAT), ("arch", e.arch), ("family", e.family), ("timm_name", e.timm_name),
                   ("num_classes", e.num_classes),
                   ("classes", list(e.class_names) if e.class_names is not None else "imagenet"),
                   ("cam_layer", e.cam_layer), ("channels_last", e.channels_last)])
    if e.timm_kwargs:
        out += ["", "[timm_kwargs]", *_lines(e.timm_kwargs.items())]
    out += ["", "[transform]", *_lines([("resize", t.resize), ("crop", t.crop), ("interpolation", t.interpolation),
                                         ("mean", list(t.mean)), ("std", list(t.std))])]
    recipe = [("rule", r.rule)] + ([("pattern", r.pattern)] if r.pattern is not None else []) + [
        ("dilated_kernel_size", r.dilated_kernel_size), ("kernel_count", r.kernel_count), ("version", r.version),
        ("share_positions", r.share_positions)]
    for entry in (baseline, twin):
        v = entry.variant
        if entry.notes:
            out += ["", f"[{v}]", *_lines([("notes", entry.notes)])]
        if entry.dcls is not None:
            out += ["", f"[{v}.recipe]", *_lines(recipe)]
        lines, renames = _checkpoint_lines(entry.checkpoint, base)
        out += ["", f"[{v}.checkpoint]", *lines]
        if renames:
            out += ["", f"[{v}.checkpoint.rename]", *renames]
    return "\n".join(out).rstrip("\n") + "\n"


def study_comment(arch: str) -> str:
    """The first lines of a shipped study pair file."""
    return (f"The study's {arch} pair, as the registry (dclsviz/zoo.py) holds it.\n"
            f"Written by `python -m dclsviz pair export {arch}`; tests/test_pairs.py checks that the two agree.")


def study_file(arch: str) -> Path:
    """Where the study pair ``arch`` ships as a pair file."""
    return STUDY_PAIRS / f"{arch}.toml"


def export(arch: str, base: Optional[Path] = None) -> str:
    """The pair file of a registered pair (a study pair, the demo pair or an installed one)."""
    comment = study_comment(arch) if arch in zoo.PAPER_ARCHS else f"The {arch} pair, exported by dclsviz."
    return dumps(zoo.get(arch, "baseline"), zoo.get(arch, "dcls"), base=base, comment=comment)


# --- pair check -----------------------------------------------------------------------------------------------

CHECK_IMAGE = ASSETS / "examples" / "chelsea.jpg"


@dataclass
class VariantCheck:
    """What ``check`` found for one variant: the loaded model, its parameter count and its DCLS layers."""

    loaded: Any  # models.LoadedModel
    parameters: int  # DCLS layers counted as trained (weights and positions, a shared P once), not frozen
    dcls_layers: list[str]
    position_tensors: int  # distinct P parameters among the DCLS layers


@dataclass
class PairCheck:
    """The outcome of ``check``: both variants loaded strictly, and one comparison of them."""

    path: Path
    variants: dict[str, VariantCheck]
    comparison: Any  # compare.Comparison

    def lines(self) -> list[str]:
        """The report ``pair check`` prints."""
        base = self.variants["baseline"].loaded.entry
        t = base.transform
        classes = "ImageNet-1k" if base.class_names is None else ", ".join(base.class_names[:5]) + (
            ", ..." if len(base.class_names) > 5 else "")
        out = [f"{base.arch} ({self.path.name}): timm {base.timm_name}, {base.num_classes} classes ({classes}); "
               f"input {t.crop}x{t.crop} (resize {t.resize}, {t.interpolation}); CAM layer {base.cam_layer}"]
        for v, found in self.variants.items():
            c = found.loaded.checkpoint
            out.append(f"  {v}: {found.parameters:,} parameters; {c.path.name} ({c.origin}, sha256 {c.sha256[:16]}) "
                       f"loaded strictly in {found.loaded.load_seconds:.1f} s")
            if found.dcls_layers:
                r = found.loaded.entry.dcls
                shown = ", ".join(found.dcls_layers[:4]) + (", ..." if len(found.dcls_layers) > 4 else "")
                out.append(f"    {len(found.dcls_layers)} convolutions replaced by Dcls2d (rule {r.rule}"
                           f"{f', pattern {r.pattern}' if r.pattern else ''}; {r.dilated_kernel_size}x"
                           f"{r.dilated_kernel_size} window, {r.kernel_count} taps, {r.version}; "
                           f"{found.position_tensors} position tensors, shared per {r.share_positions}): {shown}")
        comp = self.comparison
        for v, o in comp.outputs.items():
            top, p = o.top5[0]
            ranges = ", ".join(f"{m} [{o.maps[m].min():.3g}, {o.maps[m].max():.3g}]" for m in o.maps)
            out.append(f"  {v} on {comp.sample.name}: top-1 {o.class_name(top)!r} ({p:.3f}); maps {ranges}")
        out.append("pair check passed")
        return out


def _counted(entry: ModelEntry) -> tuple[int, list[str], int]:
    """Parameters, DCLS layer names and distinct position tensors of ``entry``'s trainable form (meta device)."""
    import torch

    from . import dcls, models

    with torch.device("meta"):
        model = models.build(entry, init=False)
    layers = dcls.dcls_layers(model)
    return (sum(p.numel() for p in model.parameters()), [n for n, _ in layers],
            len({id(m.P) for _, m in layers}))


def check(path: os.PathLike | str, *, checkpoint_dir: Optional[Path] = None, download: bool = True,
          device=None, image: Optional[Path] = None) -> PairCheck:
    """``pair check``: read the file, build both models, load both checkpoints strictly, compare them once.

    Args:
        image: the image to compare on (default: an example photo shipped in assets/examples).

    Raises:
        PairError: the file, a checkpoint or the comparison failed; the message names the field to fix.
    """
    from . import images
    from .checkpoints import CheckpointError
    from .compare import Sample, compare
    from .models import load

    path = Path(path).expanduser().resolve()
    pair = load_file(path)
    found = {}
    for entry in pair:
        try:
            loaded = load(entry, checkpoint_dir=checkpoint_dir, download=download, device=device)
        except CheckpointError as e:
            raise PairError(f"{path}:\n  {entry.variant}.checkpoint: {e}") from None
        found[entry.variant] = VariantCheck(loaded, *_counted(entry))
    image = Path(image) if image is not None else CHECK_IMAGE
    sample = Sample.from_image(images.load_image(image), name=image.name)
    comparison = compare({v: f.loaded for v, f in found.items()}, sample, target="pred")
    return PairCheck(path, found, comparison)
