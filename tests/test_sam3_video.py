"""SAM 3 video as the text-driven tracker backend: a tiny random model saved and loaded like a user's, the
CLI end to end with the bundled track_sam3 pipeline, bounded state, the id/class mapping, clear errors."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from video_oracle import Scene, Shape, write_mp4

from grounded.adapters.sam3_video import SAM3Video, frame_detections
from grounded.cli import main
from grounded.core.errors import UserError
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt, PromptError
from grounded.core.rle import decode_rle
from grounded.evaluation.video import evaluate_mots
from grounded.models.sources import ModelSourceError
from grounded.models.testing import build_sam3_video

PROMPT = "cat . dog"
CAT, DOG = 0, 1


def pets_scene(frames: int = 10) -> Scene:
    """A cat walks right, a dog walks left in front of it; a second cat comes in halfway."""
    return Scene(
        shapes=[
            Shape(CAT, (18, 14), (4, 10), (70, 14), 0, frames - 1, depth=0, color=(220, 140, 60)),
            Shape(DOG, (20, 16), (76, 36), (6, 30), 0, frames - 1, depth=1, color=(90, 90, 200)),
            Shape(CAT, (14, 12), (40, 2), (44, 6), frames // 2, frames - 1, color=(230, 230, 230)),
        ],
        frames=frames,
        classes=("cat", "dog"),
    )


@pytest.fixture(scope="session")
def tiny_sam3_video(models_dir):
    from grounded.models.testing import make_sam3_video

    return make_sam3_video(models_dir / "sam3-video", size="tiny", seed=0)


def _frames(scene: Scene):
    return [LoadedImage(pixels=scene.pixels(t), name=f"v_{t:06d}") for t in range(scene.frames)]


# ---------------------------------------------------------------------------- the model on disk
def test_tiny_sam3_video_is_saved_and_loaded_like_a_users(tiny_sam3_video, tiny_sam3):
    config = json.loads((tiny_sam3_video / "config.json").read_text())
    assert config["model_type"] == "sam3_video"
    assert config["detector_config"]["model_type"] == "sam3"
    assert config["tracker_config"]["model_type"] == "sam3_tracker_video"
    assert (tiny_sam3_video / "processor_config.json").exists()
    tracker = SAM3Video(model=str(tiny_sam3_video), device="cpu")
    tracker.warm_up()  # the user path: family check, AutoProcessor, every weight from the checkpoint
    assert type(tracker._processor).__name__ == "Sam3VideoProcessor"
    assert type(tracker._model).__name__ == "Sam3VideoModel"
    # every weight as built (same seed): saved under the checkpoint's own names, loaded back by transformers
    assert len(load_file(str(tiny_sam3_video / "model.safetensors"))) > 400
    built = build_sam3_video("tiny", seed=0).state_dict()
    loaded = tracker._model.state_dict()
    assert built.keys() == loaded.keys() and all(torch.equal(loaded[k], v) for k, v in built.items())
    # the tracker reads the detector's features: sizes agree (the tiny config's point)
    tconf = tracker._model.config.tracker_config
    assert tconf.vision_config.backbone_feature_sizes == [[32, 32], [16, 16], [8, 8]]
    assert tracker._model.config.low_res_mask_size == 32  # 4 x the 8 x 8 grid (112 px, 14 px patches)
    # an image-only SAM 3 is another family: refused in one line
    with pytest.raises(ModelSourceError, match="is a 'sam3' model; the sam3_video adapter takes sam3_video"):
        SAM3Video(model=str(tiny_sam3), device="cpu").warm_up()


# ---------------------------------------------------------------------------- ids and classes
def test_object_ids_become_track_ids_and_keep_their_prompts_class():
    size = (6, 8)
    masks = torch.zeros((3, *size), dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:6, 0:2] = True  # object 5's mask was emptied by the non-overlap constraint: left out
    found = {
        "object_ids": torch.tensor([0, 3, 5]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "masks": masks[[0, 1, 2]],
    }
    prompt = Prompt.of(PROMPT)
    # object 0 found by the "dog" prompt (prompt id 1), object 3 by "cat" (0), object 5 by "dog"
    det = frame_detections(found, {0: 1, 3: 0, 5: 1}, {0: CAT, 1: DOG}, prompt, size)
    assert det.track_ids.tolist() == [1, 4]  # SAM 3 ids from 0; track ids from 1 (0 is background)
    assert det.class_ids.tolist() == [DOG, CAT] and det.phrases == ("dog", "cat")
    assert det.boxes.tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 4.0, 2.0, 6.0]]  # end-exclusive, as elsewhere
    assert torch.allclose(det.scores, torch.tensor([0.9, 0.8]))
    empty = frame_detections(
        {"object_ids": torch.zeros(0), "scores": torch.zeros(0), "masks": torch.zeros((0, *size))},
        {},
        {0: 0},
        prompt,
        size,
    )
    assert len(empty) == 0 and empty.track_ids.tolist() == [] and empty.has_masks


def test_prompt_ids_map_to_classes_and_the_session_is_fresh_per_video(tiny_sam3_video):
    tracker = SAM3Video(model=str(tiny_sam3_video), device="cpu")
    tracker.start((64, 96), Prompt.of("dog . cat . red car"))
    assert tracker._session.prompts == {0: "dog", 1: "cat", 2: "red car"}
    assert tracker._class_of_prompt == {0: 0, 1: 1, 2: 2}
    assert set(tracker._session.prompt_input_ids) == {0, 1, 2}
    first = tracker._session
    tracker.start((64, 96), Prompt.of("cat"))
    assert tracker._session is not first and tracker._session.prompts == {0: "cat"}
    with pytest.raises(PromptError, match="SAM 3 reads at most 32"):
        tracker.start((64, 96), Prompt.of("x" * 40))


def test_forgetting_counts_hidden_frames_in_a_row():
    tracker = SAM3Video(model="not-loaded", forget_after=3)

    class Session:
        def __init__(self) -> None:
            self.obj_ids = [0, 1]

    removed: list[int] = []
    tracker._session = session = Session()
    tracker._remove = lambda oid: (removed.append(oid), session.obj_ids.remove(oid))
    for t, visible in enumerate([{0, 1}, {1}, {1}, {0, 1}, {1}, {1}, {1}]):
        tracker._forget(t, visible)
    assert removed == [0] and tracker._hidden[1] == 0  # 0 was hidden 2, seen, then 3 in a row


# ---------------------------------------------------------------------------- the real tiny model
def _run(tracker: SAM3Video, scene: Scene) -> list:
    tracker.start(scene.size, Prompt.of(PROMPT))
    out = []
    for t, image in enumerate(_frames(scene)):
        det = tracker.detect(t, image)
        out.append((det, tracker.state_size(), len(tracker._session.obj_ids)))
    return out


def test_state_stays_bounded_and_pruning_changes_no_output(tiny_sam3_video, monkeypatch):
    scene = pets_scene(frames=16)
    params = {"model": str(tiny_sam3_video), "device": "cpu", "score_threshold": 0.0, "forget_after": 1000}
    pruned = _run(SAM3Video(**params), scene)
    for det, _, _ in pruned:
        assert det.track_ids is not None and det.has_masks and det.masks.shape[1:] == scene.size
    kept = SAM3Video(**params)
    monkeypatch.setattr(kept, "_prune", lambda index: None)
    unpruned = _run(kept, scene)
    for (a, _, _), (b, _, _) in zip(pruned, unpruned, strict=True):  # the pruned state holds all it reads
        assert a.track_ids.tolist() == b.track_ids.tolist() and torch.equal(a.masks, b.masks)
    ids = {t for det, _, _ in pruned for t in det.track_ids.tolist()}
    assert ids, "random weights at score_threshold 0 should find something"
    config = kept._model.config
    window = max(config.tracker_config.num_maskmem, config.tracker_config.max_object_pointers_in_encoder) + 1
    per_object = 2 * (window + 1) + 4 + 1 + config.hotstart_unmatch_thresh
    for _, size, objects in pruned:
        assert size <= 4 + objects * per_object + objects * objects * config.hotstart_dup_thresh
    # unpruned, the session holds every frame: it grows with the video (the bound above does not)
    assert unpruned[-1][1] >= unpruned[7][1] + 8


def test_dropping_an_object_frees_it_and_the_others_keep_their_ids(tiny_sam3_video):
    scene = pets_scene(frames=6)
    tracker = SAM3Video(model=str(tiny_sam3_video), device="cpu", score_threshold=0.0)
    tracker.start(scene.size, Prompt.of(PROMPT))
    frames = _frames(scene)
    classes: dict[int, int] = {}
    for t in range(3):
        det = tracker.detect(t, frames[t])
        classes.update(zip(det.track_ids.tolist(), det.class_ids.tolist(), strict=True))
    live = [oid + 1 for oid in tracker._session.obj_ids]
    assert len(live) >= 2
    gone = live[0]
    tracker.drop([gone])
    assert gone - 1 not in tracker._session.obj_ids and gone - 1 not in tracker._session.obj_id_to_prompt_id
    for t in range(3, 6):
        det = tracker.detect(t, frames[t])
        assert gone not in det.track_ids.tolist()
        for tid, cid in zip(det.track_ids.tolist(), det.class_ids.tolist(), strict=True):
            assert classes.setdefault(tid, cid) == cid  # a track keeps its class


# ---------------------------------------------------------------------------- the CLI
def test_cli_track_sam3_with_a_tiny_local_model_writes_valid_outputs(tiny_sam3_video, tmp_path, capsys):
    scene = pets_scene(frames=6)
    video = tmp_path / "pets.mp4"
    write_mp4(scene, video, fps=10)
    out = tmp_path / "run"
    code = main(
        [
            "track", str(video), "--pipeline", "track_sam3", "--prompt", PROMPT, "--tracker", str(tiny_sam3_video),
            "--set", "tracker.score_threshold=0.0", "--device", "cpu", "--format", "mp4,json,jsonl,mots,png",
            "--out", str(out), "-q",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with av.open(str(out / "video.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 6
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(6)) and len(list((out / "frames").glob("*.json"))) == 6
    category: dict[int, str] = {}
    for rec in records:
        assert rec == json.loads((out / "frames" / f"{rec['frame']:06d}.json").read_text())
        for d in rec["detections"]:
            assert d["category"] in ("cat", "dog") and d["track_id"] >= 1
            assert (
                category.setdefault(d["track_id"], d["category"]) == d["category"]
            )  # a track keeps its class
            assert decode_rle(d["segmentation"]).sum() == d["area"] > 0
        png = np.asarray(Image.open(out / "masks" / f"{rec['frame']:06d}.png"))
        assert set(np.unique(png)) <= {0, *(d["track_id"] for d in rec["detections"])}
    seen = [t for rec in records for t in {d["track_id"] for d in rec["detections"]}]
    assert max(seen.count(t) for t in set(seen)) >= 2  # ids carried across frames, not renumbered
    summary = json.loads((out / "tracks.json").read_text())
    assert category and set(category) == {t["track_id"] for t in summary["tracks"]}
    assert all(category[t["track_id"]] == t["category"] for t in summary["tracks"])
    assert summary["settings"]["tracker"]["type"] == "sam3_video" and summary["settings"]["detector"] is None
    assert summary["settings"]["detect_every"] == 1 and summary["settings"]["max_lost"] is None
    # MOTS: TrackEval reads it; class ids are the prompt's positions from 1; scored against itself it is perfect
    lines = (out / "mots.txt").read_text().splitlines()
    assert lines and all(
        int(x.split()[2]) == 1 + ("cat", "dog").index(category[int(x.split()[1])]) for x in lines
    )
    scores = evaluate_mots(out / "mots.txt", out / "mots.txt", frames=6)
    assert scores["HOTA"] == pytest.approx(1.0) and scores["IDSW"] == 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--reverse"], "--reverse does not apply to the text-driven sam3_video tracker"),
        (["--detect-every", "5"], "--detect-every does not apply"),
        (["--max-lost", "1", "--reverse"], "--max-lost and --reverse do not apply"),
    ],
)
def test_options_a_text_driven_tracker_cannot_honour_are_refused_in_one_line(
    tiny_sam3_video, tmp_path, capsys, flags, message
):
    video = tmp_path / "v.mp4"
    write_mp4(pets_scene(frames=2), video)
    out = tmp_path / "o"
    args = ["track", str(video), "--pipeline", "track_sam3", "-p", PROMPT, "--tracker", str(tiny_sam3_video)]
    code = main([*args, "--device", "cpu", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing written


def test_box_or_mask_prompts_and_detector_flags_are_refused(tiny_sam3_video, tmp_path, capsys):
    tracker = SAM3Video(model=str(tiny_sam3_video), device="cpu")
    with pytest.raises(UserError, match="takes no box or mask prompts"):
        tracker.add(0, {1: np.zeros((4, 4), dtype=bool)})
    video = tmp_path / "v.mp4"
    write_mp4(pets_scene(frames=2), video)
    code = main(
        [
            "track",
            str(video),
            "--pipeline",
            "track_sam3",
            "-p",
            PROMPT,
            "--detector",
            "x",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "unknown nodes ['detector']" in err and len(err.strip().splitlines()) == 1, err


def test_the_image_sam3_adapter_loads_the_detector_of_a_video_checkpoint(tiny_sam3_video, image_files):
    """The released ``facebook/sam3`` folder is a ``sam3_video`` model: the image adapter takes its detector."""
    from grounded.adapters.sam3 import SAM3
    from grounded.core.images import load_image

    image = load_image(image_files["coffee"])
    detector = SAM3(model=str(tiny_sam3_video), box_threshold=0.0, top_k=5, device="cpu")
    (found,) = detector.detect([image], "cup . spoon")
    built = build_sam3_video("tiny", seed=0).detector_model.state_dict()
    loaded = detector._model.state_dict()
    assert built.keys() == loaded.keys() and all(torch.equal(loaded[k], v) for k, v in built.items())
    assert (
        len(found) == 4 and found.has_masks
    )  # the tiny detector: 2 queries for each of the 2 classes and found.masks.shape[-2:] == image.size
