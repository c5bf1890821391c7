"""Editing end to end with a tiny random Stable Diffusion inpainting pipeline loaded from a local folder.

The pixel guarantees are checked on uint8 arrays, exactly: everything outside the dilated + feathered mask is
bit-identical to the input, and the output has the input's size (odd sizes, extreme aspect ratios).
"""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from grounded.cli import _build_parser, main
from grounded.core.detections import Detections
from grounded.core.images import load_image
from grounded.core.maskops import dilate
from grounded.engine import load_pipeline, pipeline_from_dict
from grounded.models.sources import ModelSourceError
from grounded.models.testing import make_sd_inpainting

FAST = {"steps": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their spin-waits cost up to
    10x: run this module single-threaded (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sd_plain_unet(models_dir):
    return make_sd_inpainting(models_dir / "sd-4-channel", seed=0, in_channels=4)


def _photo(size):
    """A real photo (skimage coffee) resized to ``(height, width)``."""
    return np.ascontiguousarray(np.asarray(Image.fromarray(data.coffee()).resize((size[1], size[0]))))


def _ellipse(size, center, radii):
    yy, xx = np.mgrid[: size[0], : size[1]]
    return ((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2 <= 1


def _detections(masks, classes=("sofa",)):
    masks = np.asarray(masks, bool)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    n = len(masks)
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32),
        scores=torch.linspace(0.9, 0.5, n),
        class_ids=torch.zeros(n, dtype=torch.int64),
        classes=classes,
        phrases=classes * n,
        image_size=masks.shape[1:],
        masks=torch.from_numpy(masks),
    )


def _edit_pipeline(model, mask_params=None, **inpainter):
    """mask_ops -> sd_inpaint, built from a YAML-style description (the inpainter loads ``model`` by path)."""
    spec = {
        "name": "edit_only",
        "nodes": {
            "mask_ops": {"type": "mask_ops", "params": {"dilate": 4, "feather": 6, **(mask_params or {})}},
            "inpainter": {"type": "sd_inpaint", "params": {"model": str(model), **FAST, **inpainter}},
        },
        "edges": ["mask_ops.masks -> inpainter.masks"],
        "inputs": {
            "detections": "mask_ops.detections",
            "images": "inpainter.images",
            "edit": "inpainter.prompt",
        },
        "outputs": {"images": "inpainter.images", "masks": "mask_ops.masks", "windows": "inpainter.windows"},
    }
    return pipeline_from_dict(spec)


def _check_pixels_outside_unchanged(before, after, raw_masks, grow):
    """Outside the raw masks grown by dilate + feather, every pixel is bit-identical; inside, the edit shows."""
    assert after.shape == before.shape and after.dtype == np.uint8
    reach = dilate(np.any(raw_masks, axis=0), grow)
    assert (~reach).any()
    assert np.array_equal(after[~reach], before[~reach])
    inside = np.any(raw_masks, axis=0)
    assert (after[inside] != before[inside]).any(axis=1).mean() > 0.5


@pytest.mark.parametrize(
    ("size", "center", "radii"),
    [
        ((333, 517), (150, 260), (60, 90)),
        ((60, 900), (30, 400), (20, 150)),
        ((900, 60), (500, 30), (200, 18)),
        ((333, 517), (320, 510), (25, 25)),  # cut by the image corner
    ],
)
def test_pixels_outside_the_mask_are_bit_identical_at_any_size(tiny_sd, size, center, radii):
    image = load_image(_photo(size), name="photo")
    mask = _ellipse(size, center, radii)
    pipe = _edit_pipeline(tiny_sd)
    out = pipe.run(detections=[_detections([mask])], images=[image], edit="a green leather armchair")
    edited = out["images"][0]
    assert edited.size == size and edited.name == "photo"
    _check_pixels_outside_unchanged(image.pixels, edited.pixels, [mask], 4 + 6)
    em = out["masks"][0]
    assert np.array_equal(edited.pixels[~em.support], image.pixels[~em.support])
    window = out["windows"][0]
    assert window.height % 8 == 0 and window.width % 8 == 0
    assert max(window.height, window.width) <= 128  # the tiny model's working size (64) at most doubled


def test_the_window_is_a_crop_not_the_whole_image(tiny_sd):
    size = (400, 600)
    mask = _ellipse(size, (100, 120), (30, 40))
    out = _edit_pipeline(tiny_sd).run(
        detections=[_detections([mask])], images=[load_image(_photo(size))], edit="a lamp"
    )
    w = out["windows"][0]
    wh, ww = w.size
    assert wh < 200 and ww < 250  # about the mask plus 32 px of context, not 400x600
    assert abs(ww / wh - w.width / w.height) < 0.02  # the crop's aspect ratio is kept


def test_same_seed_same_output_different_seed_different_output(tiny_sd):
    size = (333, 517)
    image = load_image(_photo(size))
    det = [_detections([_ellipse(size, (160, 250), (70, 100))])]

    def edit(seed, **extra):
        pipe = _edit_pipeline(tiny_sd, seed=seed, **extra)
        return pipe.run(detections=det, images=[image], edit="a green leather armchair")["images"][0].pixels

    first = edit(7)
    assert np.array_equal(first, edit(7))  # a new adapter, the same seed: identical uint8 output
    assert not np.array_equal(first, edit(8))
    assert np.array_equal(edit(7, scheduler="ddim"), edit(7, scheduler="ddim"))
    assert not np.array_equal(edit(7, scheduler="ddim"), first)


@pytest.mark.parametrize("mode", ["remove", "restyle", "replace"])
def test_every_mode_keeps_the_pixel_guarantee(tiny_sd, mode):
    size = (300, 451)
    image = load_image(np.ascontiguousarray(data.chelsea()))
    masks = [_ellipse(size, (150, 150), (60, 60)), _ellipse(size, (100, 350), (40, 50))]
    pipe = _edit_pipeline(tiny_sd, mode=mode)
    edit = None if mode == "remove" else "sunset, dramatic clouds"
    out = pipe.run(detections=[_detections(masks)], images=[image], **({"edit": edit} if edit else {}))
    _check_pixels_outside_unchanged(image.pixels, out["images"][0].pixels, masks, 4 + 6)
    adapter = pipe.adapter("inpainter")
    assert adapter.effective_strength() == (0.75 if mode == "restyle" else 1.0)


def test_a_text_to_image_unet_inpaints_too(tiny_sd_plain_unet):
    size = (333, 517)
    image = load_image(_photo(size))
    mask = _ellipse(size, (150, 250), (50, 80))
    out = _edit_pipeline(tiny_sd_plain_unet).run(detections=[_detections([mask])], images=[image], edit="x")
    _check_pixels_outside_unchanged(image.pixels, out["images"][0].pixels, [mask], 10)


def test_empty_selection_returns_the_input_without_loading_the_model(tiny_sd):
    image = load_image(_photo((100, 120)))
    pipe = _edit_pipeline(tiny_sd, mask_params={"min_score": 0.95})
    det = _detections([_ellipse((100, 120), (50, 60), (20, 20))])
    out = pipe.run(detections=[det, Detections.empty((100, 120))], images=[image, image], edit="x")
    assert out["images"][0] is image and out["images"][1] is image
    assert out["windows"] == [None, None]
    assert out["masks"][0].reason == "no detection scores at least 0.95"
    assert out["masks"][1].reason == "no detections"
    assert pipe.adapter("inpainter")._pipe is None


def test_precision_auto_is_fp32_on_cpu_and_bf16_runs(tiny_sd):
    from grounded.engine import get_adapter

    auto = get_adapter("sd_inpaint")(model=str(tiny_sd), device="cpu", **FAST)
    auto.warm_up()
    assert auto._pipe.unet.dtype == torch.float32
    bf16 = _edit_pipeline(tiny_sd, device="cpu", precision="bf16")
    size = (120, 160)
    image = load_image(_photo(size))
    mask = _ellipse(size, (60, 80), (25, 30))
    out = bf16.run(detections=[_detections([mask])], images=[image], edit="x")
    assert bf16.adapter("inpainter")._pipe.unet.dtype == torch.bfloat16
    _check_pixels_outside_unchanged(image.pixels, out["images"][0].pixels, [mask], 10)


def test_bad_models_and_options_fail_clearly(tmp_path):
    from grounded.engine import get_adapter

    cls = get_adapter("sd_inpaint")
    (tmp_path / "not-a-pipeline").mkdir()
    for model, message in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "not-a-pipeline", "has no model_index.json"),
    ):
        with pytest.raises(ModelSourceError, match=message):
            cls(model=str(model)).warm_up()
    checkpoint = tmp_path / "sd.safetensors"
    checkpoint.write_bytes(b"0")
    with pytest.raises(ModelSourceError, match="single checkpoint file"):
        cls(model=str(checkpoint)).warm_up()
    for kwargs, message in (
        ({"mode": "erase"}, "mode must be one of"),
        ({"strength": 0.0}, "strength must lie in"),
        ({"steps": 2, "strength": 0.3}, "steps \\* strength"),
        ({"scheduler": "fastest"}, "unknown scheduler"),
        ({"resolution": 100}, "multiple of 8"),
        ({"precision": "int8"}, "precision must be"),
    ):
        with pytest.raises(ValueError, match=message):
            cls(**kwargs)
    with pytest.raises(ValueError, match="pick must be one of"):
        get_adapter("mask_ops")(pick="smallest")


def test_a_yaml_pipeline_chains_two_edits(tiny_gdino, tiny_sam, tiny_sd):
    """Two edit stages in one YAML: the second detects, segments and inpaints the first one's output image,
    and the result equals two runs of the bundled single-edit pipeline, one after the other."""
    models = {
        "detector": {"model": str(tiny_gdino), "box_threshold": 0.0, "top_k": 3},
        "segmenter": {"model": str(tiny_sam)},
        "mask_ops": {"pick": "best", "fill_holes": False, "dilate": 2, "feather": 3},
        "inpainter": {"model": str(tiny_sd), **FAST},
    }
    stage = {
        "detector": "grounding_dino",
        "segmenter": "sam",
        "mask_ops": "mask_ops",
        "inpainter": "sd_inpaint",
    }
    nodes = {}
    for suffix, mode in (("", "replace"), ("_2", "restyle")):
        for node, kind in stage.items():
            params = dict(models[node])
            if node == "inpainter":
                params["mode"] = mode
            nodes[node + suffix] = {"type": kind, "params": params}
    spec = {
        "name": "two_edits",
        "nodes": nodes,
        "edges": [
            "detector.detections -> segmenter.detections",
            "segmenter.detections -> mask_ops.detections",
            "mask_ops.masks -> inpainter.masks",
            "inpainter.images -> detector_2.images",
            "inpainter.images -> segmenter_2.images",
            "inpainter.images -> inpainter_2.images",
            "detector_2.detections -> segmenter_2.detections",
            "segmenter_2.detections -> mask_ops_2.detections",
            "mask_ops_2.masks -> inpainter_2.masks",
        ],
        "inputs": {
            "images": ["detector.images", "segmenter.images", "inpainter.images"],
            "prompt": ["detector.prompt"],
            "edit": ["inpainter.prompt"],
            "prompt_2": ["detector_2.prompt"],
            "edit_2": ["inpainter_2.prompt"],
        },
        "outputs": {
            "first": "inpainter.images",
            "images": "inpainter_2.images",
            "masks": "mask_ops.masks",
            "masks_2": "mask_ops_2.masks",
        },
    }
    chain = pipeline_from_dict(spec)
    image = load_image(np.ascontiguousarray(data.chelsea()), name="chelsea")
    out = chain.run(images=[image], prompt="cat", edit="a dog", prompt_2="sofa", edit_2="oil painting")
    first, final = out["first"][0], out["images"][0]
    support_1, support_2 = out["masks"][0].support, out["masks_2"][0].support
    assert not out["masks"][0].empty and not out["masks_2"][0].empty
    assert final.size == image.size
    assert np.array_equal(first.pixels[~support_1], image.pixels[~support_1])
    assert np.array_equal(final.pixels[~support_2], first.pixels[~support_2])
    untouched = ~(support_1 | support_2)
    assert np.array_equal(final.pixels[untouched], image.pixels[untouched])
    assert (final.pixels[support_2] != first.pixels[support_2]).any()
    # the two inpainter nodes share one set of weights
    assert chain.adapter("inpainter")._base is chain.adapter("inpainter_2")._base
    # the same as two runs of the bundled pipeline, the first one's output image feeding the second
    overrides = {k: dict(v) for k, v in models.items()}
    one = load_pipeline("grounded_sam_edit", overrides).run(images=[image], prompt="cat", edit="a dog")
    overrides["inpainter"]["mode"] = "restyle"
    two = load_pipeline("grounded_sam_edit", overrides).run(
        images=one["images"], prompt="sofa", edit="oil painting"
    )
    assert np.array_equal(one["images"][0].pixels, first.pixels)
    assert np.array_equal(two["images"][0].pixels, final.pixels)


# ---------------------------------------------------------------------- the command line
@pytest.fixture
def edit_cli(tiny_gdino, tiny_sam, tiny_sd):
    """``grounded edit`` with the tiny models; random SAM masks, kept unfilled so they leave pixels untouched."""

    def run(*argv):
        models = ["--detector", str(tiny_gdino), "--segmenter", str(tiny_sam), "--inpainter", str(tiny_sd)]
        fast = ["--box-threshold", "0", "--steps", "2", "--no-fill-holes", "--dilate", "2", "--feather", "3"]
        return main(["edit", *models, *fast, *map(str, argv)])  # later options win: tests may override these

    return run


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize(
    ("image_name", "select", "mode"),
    [
        ("coffee", "sofa", ["--replace", "a green leather armchair"]),
        ("astronaut", "car . person", ["--remove"]),
        ("chelsea", "sky", ["--restyle", "sunset, dramatic clouds", "--seed", "7"]),
    ],
)
def test_the_three_issue_commands(edit_cli, image_files, tmp_path, capsys, image_name, select, mode):
    source = image_files[image_name]
    out, mask_path, compare = tmp_path / "edited.png", tmp_path / "mask.png", tmp_path / "compare.png"
    code = edit_cli(
        source, "--select", select, *mode, "--out", out, "--mask-out", mask_path, "--compare", compare
    )
    assert code == 0
    before, after = _read(source), _read(out)
    mask = np.asarray(Image.open(mask_path))
    assert after.shape == before.shape and mask.shape == before.shape[:2]
    assert (mask == 0).any() and (mask == 255).any()
    assert np.array_equal(after[mask == 0], before[mask == 0])  # bit-identical outside the mask used
    assert (after[mask == 255] != before[mask == 255]).any()
    assert np.array_equal(_read(compare), np.concatenate([before, after], axis=1))
    err = capsys.readouterr().err
    verb = {"--replace": "replaced", "--remove": "removed", "--restyle": "restyled"}[mode[0]]
    assert f"grounded: {verb} " in err and "working size" in err
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("size", [(333, 517), (60, 900)])
def test_cli_output_size_equals_input_size(edit_cli, tmp_path, size):
    source = tmp_path / f"photo_{size[0]}x{size[1]}.png"
    Image.fromarray(_photo(size)).save(source)
    out, mask_path = tmp_path / "out.png", tmp_path / "mask.png"
    assert (
        edit_cli(source, "-s", "sofa", "--replace", "a lamp", "-o", out, "--mask-out", mask_path, "-q") == 0
    )
    before, after, mask = _read(source), _read(out), np.asarray(Image.open(mask_path))
    assert after.shape == (*size, 3)
    assert np.array_equal(after[mask == 0], before[mask == 0])


def test_cli_same_seed_same_file_different_seed_different_file(edit_cli, image_files, tmp_path):
    source = image_files["chelsea"]
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        outs[name] = tmp_path / f"{name}.png"
        assert (
            edit_cli(source, "-s", "cat", "--replace", "a dog", "--seed", seed, "-o", outs[name], "-q") == 0
        )
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    assert not np.array_equal(_read(outs["a"]), _read(outs["c"]))


def test_cli_empty_selection_writes_the_input_unchanged_and_exits_3(edit_cli, image_files, tmp_path, capsys):
    source = image_files["chelsea"]
    same_format = tmp_path / "same.png"
    assert edit_cli(source, "-s", "cat", "--remove", "-o", same_format, "--box-threshold", "1.0") == 3
    assert same_format.read_bytes() == source.read_bytes()  # a byte-for-byte copy
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("grounded")]
    assert lines == [
        f"grounded: nothing selected for 'cat' in chelsea.png (no detections); wrote the input unchanged to {same_format}"
    ]
    other_format = tmp_path / "other.jpg"
    jpeg_source = image_files["coffee"]
    png_out = tmp_path / "coffee.png"
    assert edit_cli(jpeg_source, "-s", "cup", "--replace", "x", "-o", png_out, "--index", "99") == 3
    assert np.array_equal(_read(png_out), load_image(jpeg_source).pixels)  # decoded pixels, losslessly
    assert "index 99 is out of range" in capsys.readouterr().err
    assert edit_cli(source, "-s", "cat", "--remove", "-o", other_format, "--min-score", "1.0") == 3
    assert other_format.is_file()


def test_cli_chained_edits(edit_cli, image_files, tmp_path):
    source = image_files["coffee"]
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    mask_1, mask_2 = tmp_path / "m1.png", tmp_path / "m2.png"
    assert (
        edit_cli(source, "-s", "cup", "--replace", "a red cup", "-o", first, "--mask-out", mask_1, "-q") == 0
    )
    assert (
        edit_cli(first, "-s", "table", "--restyle", "marble", "-o", second, "--mask-out", mask_2, "-q") == 0
    )
    m1, m2 = np.asarray(Image.open(mask_1)) > 0, np.asarray(Image.open(mask_2)) > 0
    original, a, b = _read(source), _read(first), _read(second)
    assert np.array_equal(b[~m2], a[~m2])
    assert np.array_equal(b[~(m1 | m2)], original[~(m1 | m2)])
    assert (b[m2] != a[m2]).any()


def test_cli_errors(edit_cli, image_files, tmp_path, capsys):
    source = image_files["chelsea"]
    assert edit_cli(source, "-s", "cat", "--remove", "-o", source) == 2
    assert "would overwrite the input image" in capsys.readouterr().err
    assert edit_cli(source, "-s", "cat", "--remove", "-o", tmp_path / "out.gif") == 2
    assert "cannot write" in capsys.readouterr().err
    assert edit_cli(source, "-s", "cat", "--replace", "  ", "-o", tmp_path / "o.png") == 2
    assert "--replace needs a non-empty text" in capsys.readouterr().err
    assert edit_cli(tmp_path / "missing.png", "-s", "cat", "--remove", "-o", tmp_path / "o.png") == 1
    assert "missing.png: file not found" in capsys.readouterr().err
    assert edit_cli(image_files["corrupt"], "-s", "cat", "--remove", "-o", tmp_path / "o.png") == 1
    assert "corrupt.jpg: corrupt or truncated image" in capsys.readouterr().err
    argv = ["edit", str(source), "-s", "cat", "--remove", "-o", str(tmp_path / "o.png")]
    assert main([*argv, "--inpainter", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inpainter folder" in err and "does not exist" in err
    assert (
        edit_cli(source, "-s", "cat", "--remove", "-o", tmp_path / "o.png", "--set", "inpainter.mode=erase")
        == 2
    )
    assert "mode must be one of" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_edit_help_documents_exit_codes_and_every_option(capsys):
    edit = _build_parser()._subparsers._group_actions[0].choices["edit"]
    help_text = edit.format_help()
    for action in edit._actions:
        if action.dest != "help":
            assert action.help, f"option {action.option_strings or action.dest} has no help"
        for flag in action.option_strings:
            assert flag in help_text
    for code in (
        "0  the image was edited",
        "1  the input image",
        "2  bad options",
        "3  nothing was selected",
    ):
        assert code in help_text
    with pytest.raises(SystemExit) as exc:
        main(["edit", "--help"])
    assert exc.value.code == 0 and "exit codes:" in capsys.readouterr().out
