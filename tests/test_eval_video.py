"""grounded eval video: DAVIS 2017 J&F and MOTSChallenge HOTA / MOTSA / IDF1 through TrackEval, on small
DAVIS- and MOTS-layout folders made here from synthetic moving shapes (tests/video_oracle.py).

Expected values are derived by hand from the definitions (not from the code under test): perfect results
score 1; an id swap or a shifted mask scores what the metric's definition gives for it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from video_oracle import SCENES, Scene, Shape

from grounded.cli import main
from grounded.core.rle import encode_masks
from grounded.tasks.datasets import voc_palette

pytest.importorskip("trackeval")

SEQ = "shapes"


@pytest.fixture(scope="session")
def tiny_sam2_video(models_dir):
    from grounded.models.testing import make_sam2_video

    return make_sam2_video(models_dir / "sam2-video", size="tiny", seed=0)


def two_objects(frames: int, size: tuple[int, int] = (48, 64)) -> Scene:
    """Two 10x12 boxes in rows far apart (never touching), both visible on every frame."""
    return Scene(
        shapes=[
            Shape(0, (10, 12), (4, 6), (30, 6), 0, frames - 1, color=(220, 60, 60)),
            Shape(0, (10, 12), (40, 28), (10, 28), 0, frames - 1, color=(60, 220, 60)),
        ],
        frames=frames,
        size=size,
    )


def _indexed(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def scene_labels(scene: Scene, t: int) -> np.ndarray:
    labels = np.zeros(scene.size, dtype=np.int64)
    for k, mask in scene.masks(t).items():
        labels[mask] = k + 1
    return labels


def write_davis(root: Path, scene: Scene, name: str = SEQ) -> Path:
    """A DAVIS 2017 folder of one sequence: JPEG frames, indexed-PNG annotations (object k+1), val.txt."""
    for t in range(scene.frames):
        frame = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
        frame.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.pixels(t)).save(frame, quality=95)
        _indexed(scene_labels(scene, t), root / "Annotations" / "480p" / name / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text(name + "\n")
    return root


def write_results(root: Path, scene: Scene, relabel=lambda t, labels: labels, name: str = SEQ) -> Path:
    for t in range(scene.frames):
        _indexed(relabel(t, scene_labels(scene, t)), root / name / f"{t:05d}.png")
    return root


def mots_line(t: int, tid: int, cls: int, mask: np.ndarray) -> str:
    rle = encode_masks(mask[None])[0]
    return f"{t + 1} {tid} {cls} {mask.shape[0]} {mask.shape[1]} {rle['counts']}\n"


def write_mots(root: Path, scene: Scene, name: str = SEQ) -> Path:
    """A MOTSChallenge split folder of one sequence: seqinfo.ini, gt/gt.txt (pedestrians: class 2), img1/."""
    folder = root / name
    (folder / "gt").mkdir(parents=True)
    (folder / "img1").mkdir()
    for t in range(scene.frames):
        Image.fromarray(scene.pixels(t)).save(folder / "img1" / f"{t + 1:06d}.jpg", quality=95)
    lines = [mots_line(t, 2000 + k + 1, 2, m) for t in range(scene.frames) for k, m in scene.masks(t).items()]
    (folder / "gt" / "gt.txt").write_text("".join(lines))
    h, w = scene.size
    (folder / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate=10\nseqLength={scene.frames}\nimWidth={w}\n"
        f"imHeight={h}\nimExt=.jpg\n"
    )
    return root


def run_eval(*args: str) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["eval", "video", "--quiet", *args])
    return code, err.getvalue()


def report_of(out: Path) -> dict:
    assert (out / "report.md").is_file()
    return json.loads((out / "report.json").read_text())


def oracle_yaml(tmp_path: Path, scene: Scene, name: str) -> str:
    SCENES[name] = scene
    path = tmp_path / f"oracle_{name}.yaml"
    path.write_text(
        "name: oracle\n"
        "nodes:\n"
        f"  detector: {{type: oracle_detector, params: {{scene: {name}}}}}\n"
        f"  tracker: {{type: oracle_tracker, params: {{scene: {name}}}}}\n"
        "inputs: {images: [detector.images], prompt: [detector.prompt]}\n"
        "outputs: {detections: detector.detections}\n"
    )
    return str(path)


# ---------------------------------------------------------------------------- DAVIS
@pytest.fixture
def davis(tmp_path):
    scene = two_objects(8)
    return scene, write_davis(tmp_path / "DAVIS", scene)


def test_davis_perfect_results_score_one(davis, tmp_path, capsys):
    scene, data = davis
    results = write_results(tmp_path / "perfect", scene)
    out = tmp_path / "report"
    code, err = run_eval(
        "--data", str(data), "--format", "davis", "--predictions", str(results), "--out", str(out)
    )
    assert code == 0, err
    assert "J&F 100.0 (J 100.0, F 100.0) over 1 sequence(s), 2 object(s)" in err
    assert capsys.readouterr().out == ""
    report = report_of(out)
    assert report["summary"]["J&F"] == 1.0 and report["summary"]["J"] == 1.0 and report["summary"]["F"] == 1.0
    assert report["summary"]["frames"] == 8 and report["run"]["ran_models"] is False
    assert set(report["objects"]) == {f"{SEQ}_1", f"{SEQ}_2"}
    assert "| shapes | 8 | 2 | 100.0 |" in (out / "report.md").read_text()


def test_davis_id_swap_and_shifted_mask_score_what_the_definitions_give(davis, tmp_path):
    scene, data = davis
    # ids 1 and 2 swapped from frame 4 on: frames 1..6 are scored (not the first and last), 3 of 6 are wrong
    # (the objects never touch: IoU 0 and no boundary within 1 pixel) -> J = F = 3/6 for both objects
    swapped = write_results(
        tmp_path / "swapped", scene, lambda t, lab: np.choose(lab, [0, 2, 1]) if t >= 4 else lab
    )
    code, err = run_eval(
        "--data", str(data), "--format", "davis", "--predictions", str(swapped), "--out", str(tmp_path / "a")
    )
    assert code == 0, err
    s = report_of(tmp_path / "a")["summary"]
    assert s["J"] == pytest.approx(0.5) and s["F"] == pytest.approx(0.5) and s["J&F"] == pytest.approx(0.5)

    # swapped on every scored frame: semi-supervised DAVIS scores id k against object k, so J = F = 0 (an
    # optimal id assignment, TrackEval's unsupervised JAndF as it is, would forgive the swap and give 1)
    everywhere = write_results(
        tmp_path / "everywhere", scene, lambda t, lab: np.choose(lab, [0, 2, 1]) if t >= 1 else lab
    )
    code, err = run_eval(
        "--data", str(data), "--format", "davis", "--predictions", str(everywhere), "--out", str(tmp_path / "c")
    )  # fmt: skip
    assert code == 0, err
    assert report_of(tmp_path / "c")["summary"]["J&F"] == 0.0

    # object 1 shifted 4 pixels right on every frame: a 10x12 box against itself moved by 4 has IoU
    # (12-4)/(12+4) = 0.5; object 2 is exact -> J = (0.5 + 1) / 2
    def shift(t, lab):
        out = np.where(lab == 1, 0, lab)
        out[np.roll(lab == 1, 4, axis=1)] = 1
        return out

    shifted = write_results(tmp_path / "shifted", scene, shift)
    code, err = run_eval(
        "--data", str(data), "--format", "davis", "--predictions", str(shifted), "--out", str(tmp_path / "b")
    )
    assert code == 0, err
    report = report_of(tmp_path / "b")
    assert report["objects"][f"{SEQ}_1"]["J"] == pytest.approx(0.5)
    assert report["objects"][f"{SEQ}_2"]["J"] == pytest.approx(1.0)
    assert report["summary"]["J"] == pytest.approx(0.75)
    f1 = report["objects"][f"{SEQ}_1"]["F"]
    assert 0.0 < f1 < 1.0 and report["summary"]["J&F"] == pytest.approx((0.75 + (f1 + 1.0) / 2) / 2)


def test_davis_oracle_tracker_end_to_end_scores_one(davis, tmp_path):
    scene, data = davis
    out = tmp_path / "run"
    code, err = run_eval(
        "--data",
        str(data),
        "--format",
        "davis",
        "--pipeline",
        oracle_yaml(tmp_path, scene, "davis"),
        "--out",
        str(out),
    )
    assert code == 0, err
    report = report_of(out)
    assert report["summary"]["J&F"] == 1.0 and report["run"]["ran_models"] is True
    pngs = sorted((out / "predictions" / SEQ).glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(8)]
    first = Image.open(pngs[3])
    assert first.mode == "P" and np.array_equal(np.asarray(first), scene_labels(scene, 3))
    assert report["pipeline"]["tracker"]["type"] == "oracle_tracker"
    # the written results score the same through --predictions (the metrics are reproducible without models)
    code, err = run_eval(
        "--data",
        str(data),
        "--format",
        "davis",
        "--predictions",
        str(out / "predictions"),
        "--out",
        str(tmp_path / "again"),
    )
    assert code == 0 and report_of(tmp_path / "again")["summary"] == report["summary"]


def test_davis_bad_folders_and_results_fail_in_one_line(davis, tmp_path):
    scene, data = davis
    results = write_results(tmp_path / "res", scene)
    (results / SEQ / "00003.png").unlink()
    cases = [
        (tmp_path / "nope", None, "no such folder"),
        (tmp_path, None, "not a DAVIS 2017 folder"),
        (data, results, "00003.png: missing"),
    ]
    extra = write_results(tmp_path / "extra", scene, lambda t, lab: np.where(lab == 2, 7, lab))
    cases.append((data, extra, "ids [7] that are not objects"))
    for root, preds, message in cases:
        args = ["--data", str(root), "--format", "davis", "--out", str(tmp_path / "bad")]
        args += (
            ["--predictions", str(preds)] if preds else ["--pipeline", oracle_yaml(tmp_path, scene, "bad")]
        )
        code, err = run_eval(*args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()  # nothing written
    shutil.rmtree(data / "Annotations" / "480p" / SEQ)
    (data / "Annotations" / "480p" / SEQ).mkdir()
    code, err = run_eval(
        "--data", str(data), "--format", "davis", "--predictions", str(extra), "--out", str(tmp_path / "bad")
    )
    assert code == 2 and "every frame needs its annotation" in err


def test_a_run_that_fails_mid_sequence_leaves_nothing_behind(davis, tmp_path):
    scene, data = davis
    (data / "JPEGImages" / "480p" / SEQ / "00005.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "crash"
    yaml = oracle_yaml(tmp_path, scene, "crash")
    code, err = run_eval("--data", str(data), "--format", "davis", "--pipeline", yaml, "--out", str(out))
    assert code == 2 and "00005.jpg" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # no report, no half sequence of PNGs, no empty folders


def test_sequences_option_picks_sequences(tmp_path):
    scene = two_objects(5)
    data = write_davis(tmp_path / "DAVIS", scene, name="a")
    write_davis(data, scene, name="b")  # val.txt now lists only b
    results = write_results(write_results(tmp_path / "res", scene, name="a"), scene, name="b")
    out = tmp_path / "r"
    code, err = run_eval(
        "--data",
        str(data),
        "--format",
        "davis",
        "--predictions",
        str(results),
        "--sequences",
        "a,b",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert [s["name"] for s in report_of(out)["sequences"]] == ["a", "b"]
    code, err = run_eval(
        "--data", str(data), "--format", "davis", "--predictions", str(results), "--out", str(out)
    )
    assert code == 0 and [s["name"] for s in report_of(out)["sequences"]] == ["b"]
    code, err = run_eval(
        "--data",
        str(data),
        "--format",
        "davis",
        "--predictions",
        str(results),
        "--split",
        "train",
        "--out",
        str(out),
    )
    assert code == 2 and "no ImageSets/2017/train.txt" in err


def test_davis_tiny_random_sam2_video_through_the_command(tmp_path, tiny_sam2_video):
    tracker = tiny_sam2_video
    scene = two_objects(4)
    data = write_davis(tmp_path / "DAVIS", scene)
    out = tmp_path / "sam2"
    code, err = run_eval(
        "--data",
        str(data),
        "--format",
        "davis",
        "--tracker",
        str(tracker),
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert code == 0, err
    report = report_of(out)
    assert report["pipeline"]["tracker"]["type"] == "sam2_video" and report["run"]["frames_run"] == 4
    values = [report["summary"][k] for k in ("J&F", "J", "F", "J-Recall", "F-Recall")]
    assert all(v is not None and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), values
    assert len(list((out / "predictions" / SEQ).glob("*.png"))) == 4


# ---------------------------------------------------------------------------- MOTS
@pytest.fixture
def mots(tmp_path):
    scene = two_objects(10)
    return scene, write_mots(tmp_path / "MOTS20", scene)


def write_mots_result(path: Path, scene: Scene, swap_from: int | None = None) -> Path:
    lines = []
    for t in range(scene.frames):
        for k, m in scene.masks(t).items():
            tid = k + 1 if swap_from is None or t < swap_from else 2 - k
            lines.append(mots_line(t, tid, 2, m))
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{SEQ}.txt").write_text("".join(lines))
    return path


def test_mots_perfect_results_score_one(mots, tmp_path, capsys):
    scene, data = mots
    results = write_mots_result(tmp_path / "perfect", scene)
    out = tmp_path / "report"
    code, err = run_eval(
        "--data", str(data), "--format", "mots", "--predictions", str(results), "--out", str(out)
    )
    assert code == 0, err
    s = report_of(out)["summary"]
    assert (
        s["HOTA"] == pytest.approx(1.0)
        and s["MOTSA"] == pytest.approx(1.0)
        and s["IDF1"] == pytest.approx(1.0)
    )
    assert s["IDSW"] == 0 and s["sequences"] == 1 and s["frames"] == 10
    assert "HOTA 100.0 (MOTSA 100.0, IDF1 100.0, IDSW 0)" in err
    assert capsys.readouterr().out == ""  # TrackEval's printing is kept out of the user's stdout
    report = report_of(out)
    assert report["prompt"] is None and report["protocol"][0].startswith("Results read from --predictions")


def test_mots_id_switch_at_the_middle_scores_what_the_definitions_give(mots, tmp_path):
    """Two objects on all T = 10 frames, masks exact, ids swapped from frame 6 (k = 5 frames before).
    HOTA: DetA = 1 and every true positive's association IoU is k / (T + T - k) = 5 / 15, so
    HOTA = sqrt(DetA * AssA) = sqrt(1/3). IDF1: the best one-to-one id matching keeps 5 of each object's 10
    frames, IDF1 = 2 * 10 / (20 + 20) = 0.5. MOTSA = (TP - FP - IDSW) / GT = (20 - 0 - 2) / 20 = 0.9."""
    scene, data = mots
    results = write_mots_result(tmp_path / "swapped", scene, swap_from=5)
    out = tmp_path / "report"
    code, err = run_eval(
        "--data", str(data), "--format", "mots", "--predictions", str(results), "--out", str(out)
    )
    assert code == 0, err
    s = report_of(out)["summary"]
    assert s["DetA"] == pytest.approx(1.0) and s["AssA"] == pytest.approx(1 / 3)
    assert s["HOTA"] == pytest.approx(math.sqrt(1 / 3))
    assert s["IDF1"] == pytest.approx(0.5) and s["MOTSA"] == pytest.approx(0.9) and s["IDSW"] == 2


def test_mots_oracle_pipeline_end_to_end_scores_one(mots, tmp_path):
    scene, data = mots
    out = tmp_path / "run"
    yaml = oracle_yaml(tmp_path, scene, "mots")
    code, err = run_eval(
        "--data", str(data), "--format", "mots", "--pipeline", yaml, "--detect-every", "4", "--out", str(out)
    )
    assert code == 0, err
    report = report_of(out)
    assert report["summary"]["HOTA"] == pytest.approx(1.0) and report["summary"]["IDSW"] == 0
    assert report["prompt"] == "pedestrian" and report["classes"] == {"2": "pedestrian"}
    assert report["settings"]["detect_every"] == 4
    lines = (out / "predictions" / f"{SEQ}.txt").read_text().splitlines()
    assert len(lines) == 20 and {line.split()[2] for line in lines} == {"2"}  # written as MOTS pedestrians
    code, err = run_eval(
        "--data",
        str(data),
        "--format",
        "mots",
        "--prompt",
        "person . car",
        "--pipeline",
        yaml,
        "--out",
        str(tmp_path / "bad"),
    )
    assert code == 2 and "give one text per evaluated class" in err and not (tmp_path / "bad").exists()


def test_mots_bad_folders_fail_in_one_line(mots, tmp_path):
    scene, data = mots
    results = write_mots_result(tmp_path / "res", scene)
    code, err = run_eval(
        "--data",
        str(tmp_path / "res"),
        "--format",
        "mots",
        "--predictions",
        str(results),
        "--out",
        str(tmp_path / "bad"),
    )
    assert code == 2 and "not a MOTSChallenge folder" in err and len(err.strip().splitlines()) == 1
    (results / f"{SEQ}.txt").rename(results / "other.txt")
    code, err = run_eval(
        "--data", str(data), "--format", "mots", "--predictions", str(results), "--out", str(tmp_path / "bad")
    )
    assert code == 2 and f"{SEQ}.txt: missing" in err
    (results / "other.txt").rename(results / f"{SEQ}.txt")
    (data / SEQ / "img1" / "000010.jpg").unlink()
    code, err = run_eval(
        "--data", str(data), "--format", "mots", "--predictions", str(results), "--out", str(tmp_path / "bad")
    )
    assert code == 2 and "seqLength=10" in err
    assert not (tmp_path / "bad").exists()


def test_mots_tiny_random_grounded_sam2_pipeline_through_the_command(
    tiny_gdino, tiny_sam2, tiny_sam2_video, tmp_path
):
    tracker = tiny_sam2_video
    scene = two_objects(5)
    data = write_mots(tmp_path / "MOTS20", scene)
    out = tmp_path / "run"
    code, err = run_eval(
        "--data", str(data), "--format", "mots", "--out", str(out), "--detect-every", "4", "--device", "cpu",
        "--detector", str(tiny_gdino), "--segmenter", str(tiny_sam2), "--tracker", str(tracker),
        "--box-threshold", "0.0", "--set", "detector.top_k=1",
    )  # fmt: skip
    assert code == 0, err
    report = report_of(out)
    values = [report["summary"][k] for k in ("HOTA", "DetA", "AssA", "IDF1")]
    assert all(v is not None and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), values
    assert math.isfinite(report["summary"]["MOTSA"]) and report["summary"]["MOTSA"] <= 1.0  # MOTA may be < 0
    assert (
        report["pipeline"]["tracker"]["type"] == "sam2_video"
        and (out / "predictions" / f"{SEQ}.txt").is_file()
    )


def test_mots_with_a_text_driven_tracker_takes_its_own_defaults(mots, tmp_path):
    """A text-driven tracker (SAM 3 video's kind) detects on every frame: `eval video` asks it no key-frame
    options unless given, and refuses them in one line when given, as `grounded track` does."""
    scene, data = mots
    SCENES["mots_text"] = scene
    yaml = tmp_path / "text.yaml"
    yaml.write_text(
        "name: text\nnodes:\n  tracker: {type: oracle_text_tracker, params: {scene: mots_text}}\n"
    )
    out = tmp_path / "run"
    code, err = run_eval("--data", str(data), "--format", "mots", "--pipeline", str(yaml), "--out", str(out))
    assert code == 0, err
    report = report_of(out)
    assert report["settings"] == {"detect_every": 1, "max_lost": None, "reverse": False}
    assert report["summary"]["HOTA"] == pytest.approx(1.0) and report["summary"]["IDSW"] == 0
    code, err = run_eval(
        "--data", str(data), "--format", "mots", "--pipeline", str(yaml), "--detect-every", "4",
        "--out", str(tmp_path / "refused"),
    )  # fmt: skip
    assert code == 2 and "--detect-every does not apply" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()
