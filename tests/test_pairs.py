"""Pair files: a pair described in TOML works as a built-in one does, and a wrong field is named.

The custom pairs here are real files: TOML written by the test, checkpoints written by the kit's stand-in writer
(or the bundled demo pair's safetensors files), loaded through the same code as the registry's entries.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dclsviz import checkpoints, models, pairs, zoo
from dclsviz.__main__ import main
from dclsviz.cam import CamEngine
from dclsviz.evaluate import SUMMARY_NAME
from conftest import REPO_ROOT, TEST_DEVICE
import kit_data

DEMO = zoo.ASSETS / "demo"

# the bundled demo pair, under a name of its own, its facts written out as a user would
DEMO_PAIR = """\
arch = "mydemo"
timm_name = "resnet18"
num_classes = 8
classes = ["disc", "ring", "square", "triangle", "cross", "star", "crescent", "arrow"]
cam_layer = "layer4"

[timm_kwargs]
layers = [1, 1, 1, 1]
channels = [16, 32, 64, 128]
stem_width = 16
output_stride = 16

[transform]
resize = 128
crop = 128

[baseline.checkpoint]
path = "BASELINE"

[dcls.recipe]
rule = "conv_3x3"
dilated_kernel_size = 5
kernel_count = 5
version = "v0"

[dcls.checkpoint]
path = "DCLS"
"""


def demo_pair(folder: Path, text: str = DEMO_PAIR, name: str = "mine.toml") -> Path:
    """``text`` as a pair file in ``folder``, its checkpoints the bundled demo pair's files."""
    path = folder / name
    path.write_text(text.replace("BASELINE", str(DEMO / "demo_baseline.safetensors"))
                    .replace("DCLS", str(DEMO / "demo_dcls.safetensors")))
    return path


def _without_file(entry):
    return dataclasses.replace(entry, pair_file=None)


def _results_equal(a, b, what: str) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict):  # maps by method
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), f"{what}: {f.name} differs"
        else:
            assert (x is None and y is None) or np.array_equal(x, y), f"{what}: {f.name} differs"


# --- the study's pairs as files ---------------------------------------------------------------------------------


def test_the_shipped_study_files_are_the_registry():
    """Each of the 8 files is what `pair export` writes from the registry, and reads back to its 2 entries."""
    assert sorted(p.stem for p in pairs.STUDY_PAIRS.glob("*.toml")) == sorted(zoo.PAPER_ARCHS)
    for arch in zoo.PAPER_ARCHS:
        path = pairs.study_file(arch)
        assert path.read_text() == pairs.export(arch), f"{path} is stale: `python -m dclsviz pair export {arch}`"
        baseline, twin = pairs.load_file(path)
        assert baseline.pair_file == str(path.resolve())
        assert (_without_file(baseline), _without_file(twin)) == (zoo.get(arch, "baseline"), zoo.get(arch, "dcls"))


@pytest.mark.parametrize("arch", zoo.PAPER_ARCHS)
def test_pair_check_passes_on_each_shipped_file_against_the_kit(arch, kit, fake, cache):
    folder = cache / "checkpoints-here"
    folder.mkdir()
    manifests = {v: fake.load_manifest(kit / "manifests" / f"{arch}.{v}.json") for v in zoo.VARIANTS}
    for man in manifests.values():
        fake.write_checkpoint(man, folder / man["file_name"], seed=0)
    result = pairs.check(pairs.study_file(arch), checkpoint_dir=folder, download=False, device=TEST_DEVICE)
    for v, man in manifests.items():
        found = result.variants[v]
        assert found.loaded.checkpoint.origin == "checkpoint-dir"
        assert found.parameters == man["num_unique_parameters"]
        assert len(found.dcls_layers) == (len(man["dcls"]["layers"]) if man["dcls"] else 0)
        assert np.isfinite(result.comparison.outputs[v].logits).all()
    lines = result.lines()
    assert lines[-1] == "pair check passed"
    assert f"{manifests['dcls']['num_unique_parameters']:,} parameters" in "\n".join(lines)


# --- a pair of one's own gives the built-in numbers -----------------------------------------------------------

# one kit architecture of each family, with how a user would write its recipe, key mapping and CAM layer (timm's
# module name: the kit names FastViT's by Apple's code): the study's rule names, or a name pattern, and timm's
# own filter named by module
FAMILIES = {
    "convnext_tiny": dict(family="timm:convnext", recipe='rule = "depthwise"', cam_layer="stages.3"),
    "caformer_s18": dict(family="metaformer", recipe='rule = "depthwise_square"', cam_layer="stages.3"),
    "fastvit_sa24": dict(family="timm:fastvit", recipe='rule = "depthwise_7x7"', cam_layer="final_conv"),
    "resnet50": dict(family="timm", recipe='rule = "pattern"\npattern = "layer[1-4]\\\\.\\\\d+\\\\.conv2"',
                     cam_layer="layer4"),
}


def _own_pair_text(arch: str, manifests: dict, files: dict, sha256: str) -> str:
    """A pair file written from the kit's published facts (not from the registry)."""
    base, twin = manifests["baseline"], manifests["dcls"]
    t, d = base["eval_transform"], twin["dcls"]
    key = lambda m: f'container_key = "{m["container"]["key"]}"' if m["container"]["key"] else ""  # noqa: E731
    return f"""\
arch = "my_{arch}"
family = "{FAMILIES[arch]['family']}"
timm_name = "{arch}"
cam_layer = "{FAMILIES[arch]['cam_layer']}"

[transform]
resize = {t['resize']}
crop = {t['crop']}
interpolation = "{t['interpolation']}"
mean = {json.dumps(t['mean'])}
std = {json.dumps(t['std'])}

[baseline.checkpoint]
path = "{files['baseline']}"
{key(base)}

[dcls.recipe]
{FAMILIES[arch]['recipe']}
dilated_kernel_size = {d['dilated_kernel_size']}
kernel_count = {d['kernel_count']}
version = "{d['version']}"

[dcls.checkpoint]
path = "{files['dcls']}"
sha256 = "{sha256}"
{key(twin)}
"""


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_a_pair_file_gives_exactly_the_numbers_of_the_built_in_entry(arch, kit, fake, cache):
    manifests = {v: fake.load_manifest(kit / "manifests" / f"{arch}.{v}.json") for v in zoo.VARIANTS}
    files = {v: cache / man["file_name"] for v, man in manifests.items()}
    for v, man in manifests.items():
        fake.write_checkpoint(man, files[v], seed=0)
    path = cache / f"my_{arch}.toml"
    path.write_text(_own_pair_text(arch, manifests, files, checkpoints.sha256_file(files["dcls"])))
    own = dict(zip(zoo.VARIANTS, pairs.load_file(path)))
    g = kit_data.golden(f"{arch}.dcls")
    x = torch.from_numpy(kit_data.kit_input(str(g["input_file"])))
    # the DCLS twin (its recipe and key mapping are the file's), and for the cheapest family the baseline too
    for v in ("baseline", "dcls") if arch == "resnet50" else ("dcls",):
        mine = models.load(own[v], device=TEST_DEVICE, download=False)
        assert mine.checkpoint.origin == "pair-file"
        theirs = models.load(zoo.get(arch, v), files[v], device=TEST_DEVICE)
        for cls in (int(g["target_class"]), None):
            ours = CamEngine(mine).explain(x, cls, float(g["threshold"]), keep_activations=True)
            ref = CamEngine(theirs).explain(x, cls, float(g["threshold"]), keep_activations=True)
            _results_equal(ours, ref, f"{arch}.{v} target {cls}")
        del mine, theirs


# --- what a wrong file is told ----------------------------------------------------------------------------------


@pytest.mark.parametrize("change, field, words", [
    (('rule = "conv_3x3"', 'rule = "conv3x3"'), "dcls.recipe.rule", "must be one of depthwise"),
    (('rule = "conv_3x3"', 'rule = "pattern"\npattern = "layer9.*"'), "dcls.recipe.rule",
     "selects no convolution of resnet18"),
    (('rule = "conv_3x3"', 'rule = "pattern"'), "dcls.recipe.pattern", "is required by the rule 'pattern'"),
    (('rule = "conv_3x3"', 'rule = "depthwise"\npattern = "layer[1"'), "dcls.recipe.pattern",
     "is not a regular expression"),
    (('dilated_kernel_size = 5', 'dilated_kernel_size = 4'), "dcls.recipe.dilated_kernel_size", "odd"),
    (('version = "v0"', 'version = "gauss"'), "dcls.recipe.version", "must be one of v0, v1"),
    (('cam_layer = "layer4"', 'cam_layer = "layer5"'), "cam_layer", "has no module 'layer5'; did you mean"),
    (('timm_name = "resnet18"', 'timm_name = "resnet81"'), "timm_name", "timm has no model 'resnet81'"),
    (('crop = 128', 'crop_size = 128'), "transform.crop_size", "unknown field; did you mean 'crop'?"),
    (('num_classes = 8', 'num_classes = "8"'), "num_classes", "must be a whole number, not text"),
    (('num_classes = 8', 'num_classes = 9'), "classes", "must name each of the 9 classes"),
    (('path = "DCLS"', 'path = "nowhere.pth"'), "dcls.checkpoint.path", "no file at"),
    (('path = "DCLS"', 'url = "ftp://x/y.pth"'), "dcls.checkpoint.url", "http(s)://"),
    (('[dcls.checkpoint]\npath = "DCLS"', '[dcls.checkpoint]'), "dcls.checkpoint",
     "needs one of path, url, urls or hf_repo"),
    (('[dcls.checkpoint]', '[dcls.checkpoint]\nsha256 = "abc"'), "dcls.checkpoint.sha256", "64 hexadecimal"),
    (('arch = "mydemo"', 'arch = "my demo"'), "arch", "letters, digits"),
    (('arch = "mydemo"', 'arch = "mydemo"\nfamily = "convnxt"'), "family", "unknown key filter 'convnxt'"),
    (('arch = "mydemo"', 'arch = "mydemo"\nfamily = "timm:nosuchmodule"'), "family", "timm has no module"),
])
def test_a_wrong_field_is_named(tmp_path, change, field, words):
    old, new = change
    assert old in DEMO_PAIR
    path = demo_pair(tmp_path, DEMO_PAIR.replace(old, new))
    with pytest.raises(pairs.PairError) as err:
        pairs.load_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:"), message
    assert any(line.strip().startswith(f"{field}:") and words in line for line in message.splitlines()), message


def test_every_wrong_field_is_named_at_once(tmp_path):
    path = demo_pair(tmp_path, DEMO_PAIR.replace("crop = 128", "crop = 8").replace('version = "v0"', 'version = 0'))
    with pytest.raises(pairs.PairError) as err:
        pairs.load_file(path)
    lines = str(err.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["transform.crop", "dcls.recipe.version"]
    path.write_text("arch = [")
    with pytest.raises(pairs.PairError, match="not valid TOML"):
        pairs.load_file(path)


def test_a_checkpoint_that_does_not_fit_names_what_to_check(tmp_path, cache):
    # the baseline's file given as the DCLS twin's: wrong keys
    path = demo_pair(tmp_path, DEMO_PAIR.replace('path = "DCLS"', 'path = "BASELINE"'))
    with pytest.raises(pairs.PairError) as err:
        pairs.check(path, download=False, device="cpu")
    assert "dcls.checkpoint: the checkpoint does not fit mydemo.dcls: missing" in str(err.value)
    assert "dcls.recipe" in str(err.value) and "mine.toml" in str(err.value)
    # a container key the file does not have
    path = demo_pair(tmp_path, DEMO_PAIR.replace('path = "DCLS"', 'path = "DCLS"\ncontainer_key = "state_dict_ema"'))
    twin = pairs.load_file(path)[1]
    with pytest.raises(checkpoints.CheckpointMismatch, match=r"no 'state_dict_ema' entry.*dcls.checkpoint.container_key"):
        models.load(twin, device="cpu", download=False)


def test_a_sha256_is_checked(tmp_path, cache):
    wrong = "0" * 64
    path = demo_pair(tmp_path, DEMO_PAIR.replace('path = "DCLS"', f'path = "DCLS"\nsha256 = "{wrong}"'))
    twin = pairs.load_file(path)[1]
    with pytest.raises(checkpoints.CheckpointMismatch) as err:
        models.load(twin, device="cpu", download=False)
    right = checkpoints.sha256_file(DEMO / "demo_dcls.safetensors")
    assert f"has sha256 {right}, not the expected {wrong}" in str(err.value)
    assert "dcls.checkpoint.sha256 in mine.toml" in str(err.value)
    path = demo_pair(tmp_path, DEMO_PAIR.replace('path = "DCLS"', f'path = "DCLS"\nsha256 = "{right.upper()}"'))
    assert models.load(pairs.load_file(path)[1], device="cpu", download=False).checkpoint.sha256 == right


def test_renames_and_drops_map_a_checkpoint_of_other_names(tmp_path, cache):
    """A DDP-style file (every key under 'module.', an extra head) loads through rename and drop, to the same model."""
    sd = load_file(str(DEMO / "demo_dcls.safetensors"))
    odd = {f"module.{k}": v for k, v in sd.items()} | {"aux_head.weight": torch.zeros(3)}
    save_file(odd, str(tmp_path / "ddp.safetensors"))
    text = DEMO_PAIR.replace('path = "DCLS"', f'path = "{tmp_path / "ddp.safetensors"}"\ndrop = ["aux_head."]'
                             '\n\n[dcls.checkpoint.rename]\n"module." = ""')
    twin = pairs.load_file(demo_pair(tmp_path, text))[1]
    assert twin.checkpoint.renames == (("module.", ""),) and twin.checkpoint.drop == ("aux_head.",)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 128, 128), np.float32))
    ours = CamEngine(models.load(twin, device="cpu")).explain(x)
    ref = CamEngine(models.load(zoo.get("demo", "dcls"), device="cpu")).explain(x)
    _results_equal(ours, ref, "renamed file")
    without = pairs.load_file(demo_pair(tmp_path, text.replace('drop = ["aux_head."]', "")))[1]
    with pytest.raises(checkpoints.CheckpointMismatch, match=r"unexpected 1 \(aux_head.weight\)"):
        models.load(without, device="cpu")


def test_positions_shared_per_stage_or_per_layer(tmp_path):
    per_layer = pairs.load_file(demo_pair(tmp_path, DEMO_PAIR.replace(
        'version = "v0"', 'version = "v0"\nshare_positions = "layer"')))[1]
    assert per_layer.dcls.share_positions == "layer"
    # ResNet50's stages have several 3x3 convs of one shape: the paper shares one P between them
    study = zoo.get("resnet50", "dcls")
    own = dataclasses.replace(study, dcls=dataclasses.replace(study.dcls, share_positions="layer"))
    stage, layer = (pairs._counted(e) for e in (study, own))
    assert stage[1] == layer[1] and len(layer[1]) == layer[2] == 16
    assert stage[2] == 4 and layer[0] > stage[0]  # each layer's own P: more parameters
    with pytest.raises(pairs.PairError, match="share_positions: must be one of stage, layer"):
        pairs.load_file(demo_pair(tmp_path, DEMO_PAIR.replace('version = "v0"', 'version = "v0"\nshare_positions = "x"')))


def test_class_names_from_a_file(tmp_path):
    names = ["disc", "ring", "square", "triangle", "cross", "star", "crescent", "arrow"]
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n\n")
    text = DEMO_PAIR.replace(f"classes = {json.dumps(names)}", 'classes = { file = "names.txt" }')
    assert pairs.load_file(demo_pair(tmp_path, text))[0].class_names == tuple(names)
    with pytest.raises(pairs.PairError, match='classes: "imagenet" names 1000 classes, but num_classes is 8'):
        pairs.load_file(demo_pair(tmp_path, text.replace('{ file = "names.txt" }', '"imagenet"')))


# --- the registry, folders and the command line -------------------------------------------------------------------


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as a program finds it at start (not yet read, not extended); put back afterwards."""
    monkeypatch.setattr(zoo, "REGISTRY", zoo.REGISTRY)
    monkeypatch.setattr(zoo, "_read", False)
    monkeypatch.setattr(zoo, "_installed", False)


def test_a_folder_is_installed_once_before_the_registry_is_read(tmp_path, fresh_registry):
    demo_pair(tmp_path)
    (tmp_path / "notes.txt").write_text("not a pair file")
    added = pairs.install_folder(tmp_path)
    assert [e.id for e in added] == ["mydemo.baseline", "mydemo.dcls"]
    assert zoo.archs()[-1] == "mydemo" and zoo.get("mydemo", "dcls") == added[1]
    with pytest.raises(zoo.RegistryFrozen, match="already extended once"):
        zoo.install([])


def test_installing_after_the_registry_was_read_is_refused(tmp_path, fresh_registry):
    zoo.archs()
    with pytest.raises(zoo.RegistryFrozen, match="already read"):
        pairs.install_folder(demo_pair(tmp_path).parent)
    assert "mydemo" not in zoo.archs()


def test_a_folder_with_a_taken_name_or_a_bad_file_is_refused(tmp_path):
    demo_pair(tmp_path, name="a.toml")
    demo_pair(tmp_path, name="b.toml")
    demo_pair(tmp_path, DEMO_PAIR.replace('arch = "mydemo"', 'arch = "resnet50"'), name="c.toml")
    demo_pair(tmp_path, DEMO_PAIR.replace('arch = "mydemo"', 'arch = "other"\nbogus = 1'), name="d.toml")
    with pytest.raises(pairs.PairError) as err:
        pairs.load_folder(tmp_path)
    message = str(err.value)
    assert "b.toml:\n  arch: 'mydemo' is already the pair of a.toml" in message
    assert "c.toml:\n  arch: 'resnet50' is a built-in pair" in message
    assert "d.toml:\n  bogus: unknown field" in message
    with pytest.raises(pairs.PairError, match="no pair folder"):
        pairs.load_folder(tmp_path / "missing")


def test_pair_check_and_explain_on_the_command_line(tmp_path, capsys, cache):
    path = demo_pair(tmp_path)
    assert main(["pair", "check", str(path), "--device", "cpu", "--no-download"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mydemo (mine.toml): timm resnet18, 8 classes")
    assert "8 convolutions replaced by Dcls2d (rule conv_3x3; 5x5 window, 5 taps, v0" in out
    assert "layer1.0.conv1, layer1.0.conv2" in out and out.rstrip().endswith("pair check passed")
    image = REPO_ROOT / "assets" / "examples" / "rocket.jpg"
    assert main(["explain", str(image), "--pair", str(path), "--device", "cpu", "--out", str(tmp_path / "o")]) == 0
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert list(result["models"]) == ["dcls"] and result["models"]["dcls"]["id"] == "mydemo.dcls"
    assert main(["explain", str(image), "--pair", str(path), "--arch", "demo", "--out", str(tmp_path / "p")]) == 2
    assert "--arch demo is not the pair of" in capsys.readouterr().err
    bad = demo_pair(tmp_path, DEMO_PAIR.replace('cam_layer = "layer4"', 'cam_layer = "fc2"'), name="bad.toml")
    assert main(["pair", "check", str(bad), "--device", "cpu"]) == 2
    assert "cam_layer: resnet18 has no module 'fc2'" in capsys.readouterr().err


def test_pair_export_writes_a_file_that_reads_back(tmp_path, capsys):
    assert main(["pair", "export", "resnet50"]) == 0
    assert capsys.readouterr().out == pairs.study_file("resnet50").read_text()
    assert main(["pair", "export", "demo", "--out", str(tmp_path / "demo.toml")]) == 0
    text = (tmp_path / "demo.toml").read_text()
    baseline, twin = pairs.parse(text.replace('arch = "demo"', 'arch = "again"'), tmp_path / "demo.toml")
    assert twin.checkpoint.path == str(DEMO / "demo_dcls.safetensors")
    assert dataclasses.replace(twin, arch="demo", pair_file=None, checkpoint=zoo.get("demo", "dcls").checkpoint) \
        == zoo.get("demo", "dcls")


def test_evaluate_takes_a_pair_file(tmp_path, cache):
    path = demo_pair(tmp_path)
    r = subprocess.run([sys.executable, "-m", "dclsviz", "evaluate", "--pair", str(path), "--demo", "--limit", "2",
                        "--workers", "0", "--no-progress", "--resamples", "50", "--device", "cpu",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "\nmydemo " in r.stdout
    summary = (tmp_path / "run" / SUMMARY_NAME).read_text()
    assert '"mydemo.baseline"' in summary and '"mydemo.dcls"' in summary


def test_the_readme_example_is_a_complete_pair_file(tmp_path):
    text = (REPO_ROOT / "README.md").read_text().split("## Your own pair", 1)[1].split("```toml\n", 1)[1]
    text = text.split("```", 1)[0].replace("3f5a…64 hex digits…", "ab" * 32)
    (tmp_path / "classes.txt").write_text("\n".join(f"class {i}" for i in range(10)))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet50_dcls.pth").write_bytes(b"stand-in")
    (tmp_path / "lab.toml").write_text(text)
    baseline, twin = pairs.load_file(tmp_path / "lab.toml")
    assert baseline.checkpoint.urls == ("hf-hub:my-lab/resnet50-baseline/weights/model.pth",)
    assert baseline.checkpoint.renames == (("module.", ""),) and baseline.checkpoint.container_key == "state_dict_ema"
    assert twin.dcls == zoo.DclsRecipe(rule="pattern", pattern=r"layer[1-4]\.\d+\.conv2", dilated_kernel_size=11,
                                       kernel_count=9, version="v1", share_positions="layer")
    assert len(pairs.check_structure(baseline, twin)) == 16 and twin.class_names[9] == "class 9"
