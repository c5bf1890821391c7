"""Hostile configuration, models and arguments: each is refused with one line (exit 2, no traceback) and
nothing written, or handled as documented; never a hang, a traceback or a silently wrong result."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grounded.cli import main
from grounded.core.checks import at_least, in_unit_interval, optional_in_unit_interval
from grounded.core.ontology import Ontology
from grounded.core.prompts import Prompt, PromptError, parse_prompt
from grounded.core.safe_yaml import MAX_BYTES, YamlError, dump_yaml, load_yaml, read_yaml
from grounded.engine.serialization import dump_pipeline, pipeline_from_dict, read_pipeline_spec

ROOT = Path(__file__).resolve().parents[1]


def _laughs(levels: int, indent: str = "") -> str:
    """A "billion laughs" block: each level a list of 9 aliases of the one before (9**levels strings)."""
    lines = [f'{indent}a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _pipeline_text(gdino: Path, sam: Path, name_block: str | None = None) -> str:
    """The bundled grounded_sam pipeline on the tiny models, its ``name:`` optionally replaced."""
    text = (ROOT / "pipelines" / "grounded_sam.yaml").read_text()
    text = text.replace("IDEA-Research/grounding-dino-tiny", str(gdino)).replace(
        "facebook/sam-vit-base", str(sam)
    )
    if name_block is not None:
        text = text.replace("name: grounded_sam\n", "name:\n" + name_block)
    return text


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes ({} when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(capsys: pytest.CaptureFixture[str], argv: list[object], *, out: Path | None = None) -> str:
    """Run the CLI in-process; assert exit 2, one ``grounded: error:`` line, no traceback and nothing under
    ``out``; return the error line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "LOAD REPORT" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("grounded: error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    if out is not None:
        assert _tree(out) == {}, f"files written under {out}: {_tree(out)}"
    return errors[0]


@pytest.fixture(scope="module")
def image(image_files) -> Path:
    return image_files["astronaut"]


def _segment(image: Path, gdino: Path, sam: Path, out: Path, *extra: object) -> list[object]:
    return [
        "segment",
        image,
        "-p",
        "cup",
        "--detector",
        gdino,
        "--segmenter",
        sam,
        "--out",
        out,
        "-q",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------------- YAML
def test_billion_laughs_is_refused_quickly_in_a_subprocess(tmp_path):
    """Issue case 5, measured: the 9-level file (9**9 strings once expanded; before: 136 s and 8.7 GB
    under grounded run) is refused in well under a second, in a process limited to 1 GiB."""
    path = tmp_path / "laughs.yaml"
    path.write_text("name:\n" + _laughs(9, "  ") + "nodes: {}\n")
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from grounded.core.safe_yaml import YamlError, read_yaml\n"
        "try:\n"
        "    read_yaml(sys.argv[1])\n"
        "except YamlError as exc:\n"
        "    print(exc)\n"
        "from pathlib import Path\n"  # the peak resident memory of this process, in MiB:
        "print(int(Path('/proc/self/status').read_text().split('VmHWM:')[1].split()[0]) // 1024)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "billion laughs" in done.stdout, done.stderr
    assert elapsed < 20 and int(done.stdout.split()[-1]) < 256, done.stdout


def test_grounded_run_refuses_a_billion_laughs_pipeline(tiny_gdino, tiny_sam, image, tmp_path, capsys):
    """The aliases sit in ``name:`` (expanded only when the name became a string): refused, nothing written."""
    path = tmp_path / "laughs.yaml"
    path.write_text(_pipeline_text(tiny_gdino, tiny_sam, _laughs(7, "  ")))  # 4.8 M strings expanded
    out = tmp_path / "out"
    start = time.perf_counter()
    line = _refused(capsys, ["run", path, image, "-p", "cup", "--out", out, "-q"], out=out)
    assert time.perf_counter() - start < 10
    assert str(path) in line and "expands through its aliases" in line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100 + "]" * 100, "nests deeper than 64"),
        ("[" * 200_000, "nests deeper than 64"),  # PyYAML's own recursion would overflow
        ("a: &a [*a]", "refers to itself"),
        ("a: !!python/object/apply:os.system ['true']", "could not determine a constructor"),
        ("a: [1, 2\nb: 3", "line 2, column 2"),  # PyYAML's message is several lines: one here
        ("a: *nowhere", "undefined alias"),
        ("x" * (MAX_BYTES + 1), f"at most {MAX_BYTES}"),
    ],
)
def test_load_yaml_refuses_hostile_documents_with_one_line(text, message):
    with pytest.raises(YamlError, match=re.escape(message)) as info:
        load_yaml(text, "doc.yaml")
    assert str(info.value).startswith("doc.yaml: ") and "\n" not in str(info.value)


def test_yaml_limits_through_the_cli(tiny_gdino, tiny_sam, image, tmp_path, capsys):
    """A deep, large, unsafe or invalid pipeline file, and an alias bomb in a --set value: one line each."""
    out = tmp_path / "out"
    cases = {
        "deep.yaml": "name: " + "[" * 100_000,
        "large.yaml": "# " + "x" * MAX_BYTES + "\n",
        "unsafe.yaml": "name: !!python/object/apply:os.system ['touch pwned']\n",
        "invalid.yaml": "name: [grounded\nnodes: {}\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        line = _refused(capsys, ["run", path, image, "-p", "cup", "--out", out, "-q"], out=out)
        assert str(path) in line
    assert not (tmp_path / "pwned").exists()
    bomb = "{" + _laughs(7).replace("\n", ", ").rstrip(", ") + "}"
    pipeline = tmp_path / "ok.yaml"
    pipeline.write_text(_pipeline_text(tiny_gdino, tiny_sam))
    argv = ["run", pipeline, image, "-p", "cup", "--out", out, "-q", "--set", f"detector.top_k={bomb}"]
    assert "--set detector.top_k: YAML refused" in _refused(capsys, argv, out=out)


def test_anchors_within_the_limits_still_work_and_dumps_hold_no_alias(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text(
        "name: shared\n"
        "nodes:\n"
        "  a: {type: sam, params: &common {model: x, cache_size: 1}}\n"
        "  b: {type: sam, params: {<<: *common, batch_size: 1}}\n"
    )
    spec = read_pipeline_spec(path)
    assert spec["nodes"]["a"]["params"] == {"model": "x", "cache_size": 1}
    assert spec["nodes"]["b"]["params"] == {"model": "x", "cache_size": 1, "batch_size": 1}
    shared = [1, 2]
    text = dump_yaml({"x": shared, "y": shared})
    assert "&" not in text and "*" not in text and load_yaml(text, "dump") == {"x": [1, 2], "y": [1, 2]}


def test_a_pipeline_name_must_be_a_string():
    from grounded.engine import PipelineError

    spec = read_pipeline_spec("grounded_sam")
    with pytest.raises(PipelineError, match="'name' must be a string, got a list"):
        pipeline_from_dict({**spec, "name": ["a", "b"]})
    assert dump_pipeline(pipeline_from_dict({**spec, "name": 7})).startswith("name: '7'")


def test_every_yaml_read_goes_through_the_safe_loader():
    """No module but ``core/safe_yaml.py`` imports PyYAML: a new direct ``yaml.load`` fails here."""
    pattern = re.compile(
        r"^\s*(import yaml|from yaml\b)|\byaml\.(safe_load|load|full_load|unsafe_load|load_all)\b", re.M
    )
    allowed = ROOT / "grounded" / "core" / "safe_yaml.py"
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("grounded", "adapters", "evaluation", "pipelines", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if path.resolve() != allowed and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], f"read YAML with grounded.core.safe_yaml instead: {offenders}"


# ---------------------------------------------------------------------------------------------------- models
def _broken_sam(tiny_sam: Path, folder: Path, how: str) -> Path:
    """A copy of the tiny SAM folder with its weights file broken in one way."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_sam, folder)
    weights = folder / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "missing":
        state = load_file(weights)
        for key in sorted(state)[:4]:
            del state[key]
        state["stray.weight"] = torch.zeros(2)
        save_file(state, weights, metadata={"format": "pt"})
    elif how in ("pickled", "truncated_bin"):

        class Payload:
            def __reduce__(self):
                return (print, ("this ran while loading the weights",))

        state = load_file(weights)
        weights.unlink()
        if how == "pickled":
            state["payload"] = Payload()  # type: ignore[assignment]
        torch.save(state, folder / "pytorch_model.bin")
        if how == "truncated_bin":
            data = (folder / "pytorch_model.bin").read_bytes()
            (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    return folder


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "corrupt or truncated safetensors file"),
        ("pickled", "holds objects other than tensors; refused"),
        ("truncated_bin", "could not load segmenter"),
        ("missing", "does not match its checkpoint: 4 weight(s) missing"),
    ],
)
def test_broken_model_weights_are_one_line(how, message, tiny_gdino, tiny_sam, image, tmp_path, capsys):
    model = _broken_sam(tiny_sam, tmp_path / how, how)
    before = _tree(model)
    out = tmp_path / "out"
    line = _refused(capsys, _segment(image, tiny_gdino, model, out), out=out)
    assert message in line and str(model) in line
    assert _tree(model) == before
    if how == "missing":
        assert "1 weight(s) unexpected (stray.weight)" in line and "GROUNDED_ALLOW_MISSING_WEIGHTS=1" in line


def test_missing_weights_load_when_allowed(
    tiny_gdino, tiny_sam, image, tmp_path, capsys, monkeypatch, caplog
):
    model = _broken_sam(tiny_sam, tmp_path / "missing", "missing")
    monkeypatch.setenv("GROUNDED_ALLOW_MISSING_WEIGHTS", "1")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="grounded.models.sources"):
        assert main([str(a) for a in _segment(image, tiny_gdino, model, out)]) == 0, capsys.readouterr().err
    assert (out / "astronaut.json").is_file()
    assert any(
        "4 weight(s) missing" in r.getMessage() and "loaded anyway" in r.getMessage() for r in caplog.records
    )


def test_missing_detector_weights_are_refused(tiny_gdino, tiny_sam, image, tmp_path, capsys):
    """The detector goes through the same check (``load_model_and_processor``)."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "gdino"
    shutil.copytree(tiny_gdino, model)
    state = load_file(model / "model.safetensors")
    state.pop(sorted(state)[-1])
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    line = _refused(capsys, _segment(image, model, tiny_sam, out), out=out)
    assert line.startswith(
        f"grounded: error: detector '{model}' does not match its checkpoint: 1 weight(s) missing"
    )


def test_unwritable_grounded_cache_is_one_line(tiny_sam, image, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GROUNDED_CACHE", str(blocker / "cache"))
    checkpoint = tmp_path / "groundingdino_swint_ogc.pth"
    checkpoint.write_bytes(b"never read: the cache is checked first")
    out = tmp_path / "out"
    line = _refused(capsys, _segment(image, checkpoint, tiny_sam, out), out=out)
    assert str(blocker / "cache" / "converted") in line and "set GROUNDED_CACHE to a writable folder" in line


# ---------------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["mps", "xpu", "cuda:7", "meta", "gpu", "cpu:1"])
def test_devices_this_machine_cannot_use_are_one_line(device, tiny_gdino, tiny_sam, image, tmp_path, capsys):
    from grounded.runtime.device import DeviceError, pick_device

    with contextlib.suppress(DeviceError):
        pick_device(device)
        pytest.skip(f"this machine has {device}")
    out = tmp_path / "out"
    line = _refused(capsys, _segment(image, tiny_gdino, tiny_sam, out, "--device", device), out=out)
    assert repr(device) in line and "cpu" in line


def test_cuda_index_past_the_gpus_is_refused(monkeypatch):
    """On a machine with one GPU (simulated), cuda and cuda:0 are accepted and cuda:7 refused."""
    from grounded.runtime.device import DeviceError, pick_device, usable_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert usable_devices()[:2] == ["cpu", "cuda:0"]
    assert pick_device("cuda") == torch.device("cuda") and pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match=r"'cuda:7' is not available here .*cpu, cuda:0"):
        pick_device("cuda:7")


# ---------------------------------------------------------------------------------------------------- arguments
def test_granularity_box_and_levels_are_checked(tiny_sam, image, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["granularity", image, "--segmenter", tiny_sam, "--out", out, "--device", "cpu"]
    assert "X0 < X1 and Y0 < Y1" in _refused(capsys, [*base, "--box", "100,100,10,10"], out=out)
    assert "must be 4 comma-separated numbers" in _refused(capsys, [*base, "--box", "0,0,nan,10"], out=out)
    assert "(from 1)" in _refused(capsys, [*base, "--box", "10,10,100,100", "--levels", "0,99"], out=out)
    line = _refused(
        capsys, [*base, "--box", "10,10,100,100", "--levels", "1,99"], out=out
    )  # known after decoding
    assert "levels [99] do not exist" in line
    assert "lies outside" in _refused(capsys, [*base, "--box", "10,10,100,9000"], out=out)


@pytest.mark.parametrize("value", ["nan", "-1", "1.5", "inf"])
def test_nms_threshold_out_of_range_is_refused(value, tiny_gdino, tiny_sam, image, tmp_path, capsys):
    out = tmp_path / "out"
    line = _refused(capsys, _segment(image, tiny_gdino, tiny_sam, out, f"--nms-threshold={value}"), out=out)
    assert "nms_threshold must" in line


def test_range_checks_refuse_nan_and_non_numbers(tiny_gdino, tiny_sam, image, tmp_path, capsys):
    nan = float("nan")
    for check in (lambda: at_least(1, top_k=nan), lambda: in_unit_interval(x=nan)):
        with pytest.raises(ValueError, match="must be a number, got nan"):
            check()
    with pytest.raises(ValueError, match="must be a number, got 'high'"):
        in_unit_interval(box_threshold="high")  # type: ignore[arg-type]
    optional_in_unit_interval(nms_threshold=None)
    from grounded.adapters.owlv2 import OWLv2
    from grounded.adapters.sam3 import SAM3

    with pytest.raises(ValueError, match="nms_threshold must be a number"):
        OWLv2(nms_threshold=math.nan)
    with pytest.raises(ValueError, match="box_threshold"):
        SAM3(box_threshold=math.nan)
    from grounded.adapters.sam import SAM

    with pytest.raises(ValueError, match="mask_threshold must be a number, got nan"):
        SAM(mask_threshold=math.nan)
    with pytest.raises(ValueError, match="mask_threshold must be finite, got -inf"):
        SAM(mask_threshold=-math.inf)
    assert SAM(mask_threshold=-2.5).mask_threshold == -2.5  # any finite logit is a threshold
    from grounded.adapters.sam2_video import SAM2Video

    with pytest.raises(ValueError, match="mask_threshold must be a number, got nan"):
        SAM2Video(mask_threshold=math.nan)
    with pytest.raises(ValueError, match="mask_threshold must be finite, got inf"):
        SAM2Video(mask_threshold=math.inf)
    out = tmp_path / "out"
    run = [
        "run",
        "grounded_sam",
        image,
        "-p",
        "cup",
        "--out",
        out,
        "-q",
        "--set",
        f"detector.model={tiny_gdino}",
    ]
    for setting in ("detector.top_k=.nan", "detector.box_threshold=high", "segmenter.mask_threshold=.nan"):
        assert "must be a number" in _refused(capsys, [*run, "--set", setting], out=out)


def test_eval_score_threshold_nan_is_refused(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    ann = folder / "ann.json"
    ann.write_text(json.dumps({"images": [], "categories": [{"id": 1, "name": "cup"}]}))
    out = tmp_path / "out"
    argv = [
        "eval",
        "coco",
        "--images",
        folder,
        "--annotations",
        ann,
        "--out",
        out,
        "--score-threshold",
        "nan",
    ]
    assert "score_threshold must be a number" in _refused(capsys, argv, out=out)


def test_prompt_lines_are_classes(tiny_gdino, tiny_sam, image, tmp_path, capsys):
    assert parse_prompt("cup\nplate\r\nspoon . fork\n").classes == ("cup", "plate", "spoon", "fork")
    with pytest.raises(PromptError, match="line break"):
        Prompt.of(["cup\nplate"])
    out = tmp_path / "out"
    argv = ["segment", image, "-p", "cup\nplate\nspoon", "--detector", tiny_gdino, "--segmenter", tiny_sam]
    assert main([str(a) for a in [*argv, "--out", out, "-q"]]) == 0, capsys.readouterr().err
    assert json.loads((out / "astronaut.json").read_text())["classes"] == ["cup", "plate", "spoon"]


def test_a_class_may_start_with_hash(tmp_path):
    assert Ontology.load("#hashtag, cat").names == ("#hashtag", "cat")
    assert Ontology.load("#1: one, first; cat").names == ("#1", "cat")
    classes = tmp_path / "classes.txt"
    classes.write_text("# a comment line, only in files\n  # indented comment\ncar: automobile\nperson\n")
    assert Ontology.load(classes).names == ("car", "person")


def test_annotate_keeps_a_hash_class(tiny_gdino, tiny_sam, image, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(image, images / image.name)
    out = tmp_path / "out"
    argv = [
        "annotate",
        images,
        "--classes",
        "#hashtag, cat",
        "--detector",
        tiny_gdino,
        "--segmenter",
        tiny_sam,
    ]
    assert main([str(a) for a in [*argv, "--out", out, "-q", "--top-k", "2"]]) == 0, capsys.readouterr().err
    coco = json.loads(next(out.glob("coco/annotations/*.json")).read_text())
    assert [c["name"] for c in coco["categories"]] == ["#hashtag", "cat"]


# ---------------------------------------------------------------------------------------------------- eval coco
def test_eval_coco_refuses_annotations_it_would_drop(tiny_gdino, tiny_sam, image, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(image, folder / image.name)
    box = {"bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0, "segmentation": [[10, 10, 60, 10, 60, 60]]}
    gt = {
        "images": [{"id": 1, "file_name": image.name, "height": 512, "width": 512}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, **box},
            {"id": 11, "image_id": 1, "category_id": 7, **box},  # no such category
            {"id": 12, "image_id": 99, "category_id": 1, **box},  # no such image
        ],
    }
    ann = folder / "ann.json"
    ann.write_text(json.dumps(gt))
    out = tmp_path / "out"
    argv = ["eval", "coco", "--images", folder, "--annotations", ann, "--out", out, "-q"]
    line = _refused(capsys, [*argv, "--detector", tiny_gdino, "--segmenter", tiny_sam], out=out)
    assert "1 annotation(s) name an unknown image (ids 12; image_id '99')" in line
    assert "1 annotation(s) name an unknown category (ids 11; category_id '7')" in line
    assert "the AP would be wrong" in line


def test_read_yaml_of_a_folder_is_one_line(tmp_path):
    with pytest.raises(YamlError, match="cannot read"):
        read_yaml(tmp_path)
