"""grounded track: association, track life cycle, outputs and TrackEval metrics on synthetic videos with an
oracle detector and tracker (the logic, independent of model quality), and the SAM 2 video wiring."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image
from video_oracle import SCENES, Scene, Shape, crossing_scene, write_mp4

from grounded.cli import main
from grounded.core.detections import Detections
from grounded.core.rle import decode_rle, encode_masks
from grounded.core.tracks import TrackBook, assign, greedy_assign, mask_iou_matrix
from grounded.core.video import VideoError, VideoWriter, open_video
from grounded.evaluation.video import evaluate_mots
from grounded.tasks.track import build_tracking, track

PROMPT = "car . pedestrian"
CAR, PED = 0, 1  # as in video_oracle


@pytest.fixture
def oracle_pipeline(tmp_path):
    def make(scene: Scene, name: str = "s", drop=()) -> str:
        SCENES[name] = scene
        path = tmp_path / f"oracle_{name}.yaml"
        path.write_text(
            "name: oracle\n"
            "nodes:\n"
            f"  detector: {{type: oracle_detector, params: {{scene: {name}, drop: {json.dumps([list(d) for d in drop])}}}}}\n"
            f"  tracker: {{type: oracle_tracker, params: {{scene: {name}}}}}\n"
            "inputs: {images: [detector.images], prompt: [detector.prompt]}\n"
            "outputs: {detections: detector.detections}\n"
        )
        return str(path)

    return make


@pytest.fixture
def scene_video(tmp_path):
    scene = crossing_scene()
    path = tmp_path / "street.mp4"
    write_mp4(scene, path, fps=10)
    return scene, path


def _ids_per_object(scene: Scene, frames) -> dict[int, set[int]]:
    """For each true object, the track ids whose masks cover it (IoU >= 0.5) over the video."""
    seen: dict[int, set[int]] = {}
    for frame in frames:
        truth = scene.masks(frame.index)
        det = frame.detections
        for i, tid in enumerate(det.track_ids.tolist()):
            m = det.mask_array(i)
            best = max(truth, key=lambda k: (truth[k] & m).sum() / (truth[k] | m).sum())
            assert (truth[best] & m).sum() / (truth[best] | m).sum() >= 0.5
            seen.setdefault(best, set()).add(tid)
    return seen


# ---------------------------------------------------------------------------- association
def test_hungarian_beats_first_come_on_a_constructed_case():
    # track 0 overlaps both detections; first-come gives it detection 0, leaving track 1 unmatched
    iou = np.array([[0.6, 0.5], [0.55, 0.0]])
    pairs, lost, new = assign(iou, 0.3)
    assert pairs == [(0, 1), (1, 0)] and lost == [] and new == []
    g_pairs, g_lost, g_new = greedy_assign(iou, 0.3)
    assert g_pairs == [(0, 0)] and g_lost == [1] and g_new == [1]


def test_mask_iou_matrix_matches_dense_iou():
    rng = np.random.default_rng(0)
    a = rng.random((3, 20, 30)) > 0.5
    b = rng.random((2, 20, 30)) > 0.4
    expected = np.array([[(x & y).sum() / (x | y).sum() for y in b] for x in a])
    np.testing.assert_allclose(mask_iou_matrix(encode_masks(a), encode_masks(b)), expected, atol=1e-9)


def test_track_book_ages_ends_and_never_reuses_ids():
    book = TrackBook(max_lost=1, min_iou=0.5)
    up = book.key_frame(0, np.zeros((0, 2)), [], [0, 1], [0.9, 0.8])
    assert up.new == {0: 1, 1: 2}
    up = book.key_frame(5, np.array([[0.9], [0.1]]), [1, 2], [0], [0.7])  # track 2 missed once: kept
    assert up.matched == {0: 1} and up.ended == [] and book.live[2].lost == 1
    up = book.key_frame(10, np.array([[0.9], [0.0]]), [1, 2], [0], [0.7])  # missed twice: ended
    assert up.ended == [2] and 2 in book.ended and book.ended[2].end_frame == 10
    up = book.key_frame(15, np.array([[0.0, 0.0]]), [1], [1, 1], [0.6, 0.6])  # class-aware: no match
    assert sorted(up.new.values()) == [3, 4] and book.live[1].lost == 1


# ---------------------------------------------------------------------------- the job with the oracle
def test_ids_stay_stable_through_crossings_and_new_objects_get_new_ids(scene_video, oracle_pipeline):
    scene, path = scene_video
    tracking = build_tracking(oracle_pipeline(scene))
    book = TrackBook()
    frames = list(track(path, PROMPT, tracking, detect_every=5, max_lost=1, reverse=True, book=book))
    assert [f.index for f in frames] == list(range(40))
    per_object = _ids_per_object(scene, frames)
    assert all(len(ids) == 1 for ids in per_object.values()), per_object  # one id per object, always
    ids = [next(iter(per_object[k])) for k in range(4)]
    assert sorted(ids[:2]) == [1, 2] and ids[2] == 3 and ids[3] == 4  # in order of first detection
    summary = {t["track_id"]: t for t in book.summary(("car", "pedestrian"))}
    car = summary[ids[2]]
    # first detected on key frame 15, followed back to its first frame (12) by the reverse pass
    assert car["first_frame"] == 12 and car["last_frame"] == 27
    # gone after frame 27: missed at key frames 30 and 35 -> more than max_lost=1 -> ended at 35
    assert car["ended_at"] == 35 and tracking.tracker.dropped == [ids[2]]
    assert summary[ids[3]]["first_frame"] == 31  # appears at 31: detected at 35, filled back to 31
    assert all(f.detections.track_ids is not None for f in frames)


def test_without_reverse_an_object_starts_at_its_first_key_frame(scene_video, oracle_pipeline):
    scene, path = scene_video
    book = TrackBook()
    list(track(path, PROMPT, build_tracking(oracle_pipeline(scene)), detect_every=5, book=book))
    firsts = sorted(t["first_frame"] for t in book.summary(("car", "pedestrian")))
    assert firsts == [0, 0, 15, 35]


def test_a_missed_detection_keeps_the_track_and_max_lost_zero_ends_it(scene_video, oracle_pipeline):
    scene, path = scene_video
    # the detector misses pedestrian 0 at key frame 10
    kept = TrackBook()
    list(
        track(
            path,
            PROMPT,
            build_tracking(oracle_pipeline(scene, "d1", [(10, 0)])),
            detect_every=5,
            max_lost=1,
            book=kept,
        )
    )
    assert len(kept.summary(("car", "pedestrian"))) == 4  # same ids, no new track
    ended = TrackBook()
    list(
        track(
            path,
            PROMPT,
            build_tracking(oracle_pipeline(scene, "d2", [(10, 0)])),
            detect_every=5,
            max_lost=0,
            book=ended,
        )
    )
    tracks = ended.summary(("car", "pedestrian"))
    assert len(tracks) == 5  # the pedestrian's first track ended at 10, it came back as a new id at 15
    ids = [t["track_id"] for t in tracks]
    assert ids == sorted(set(ids)) == list(range(1, 6))  # never reused


def test_memory_stays_flat_on_a_long_video(tmp_path, oracle_pipeline):
    """2,000 frames (a frames folder would be slow to write; a long scene with objects coming and going)."""
    shapes = [
        Shape(PED, (8, 8), (0, 10 + 10 * (k % 4)), (88, 10 + 10 * (k % 4)), 100 * k, 100 * k + 150)
        for k in range(20)
    ]
    scene = Scene(shapes=shapes, frames=2000, size=(64, 96))
    path = tmp_path / "long.mp4"
    write_mp4(scene, path, fps=25)
    tracking = build_tracking(oracle_pipeline(scene, "long"))
    book = TrackBook()
    import tracemalloc

    tracemalloc.start()
    peaks = []
    for frame in track(path, PROMPT, tracking, detect_every=10, max_lost=1, book=book):
        if frame.index in (300, 1999):
            peaks.append(tracemalloc.get_traced_memory()[0])
            assert tracking.tracker.state_size() <= 3  # only the live objects
    tracemalloc.stop()
    assert frame.index == 1999
    assert len(book.summary(("car", "pedestrian"))) == 20 and len(book.live) <= 2
    assert peaks[1] < peaks[0] + 2_000_000, peaks  # no growth with length (bytes held by Python)


# ---------------------------------------------------------------------------- files, CLI, metrics
def _gt_mots(scene: Scene, path) -> None:
    lines = []
    for t in range(scene.frames):
        for k, m in scene.masks(t).items():
            cls = scene.shapes[k].class_id + 1
            rle = encode_masks(m[None])[0]
            lines.append(f"{t + 1} {cls * 1000 + k + 1} {cls} {m.shape[0]} {m.shape[1]} {rle['counts']}\n")
    path.write_text("".join(lines))


def test_cli_writes_mp4_json_mots_png_and_trackeval_scores_them(
    scene_video, oracle_pipeline, tmp_path, capsys
):
    scene, path = scene_video
    out = tmp_path / "run"
    code = main(
        [
            "track", str(path), "--prompt", PROMPT, "--pipeline", oracle_pipeline(scene),
            "--detect-every", "5", "--max-lost", "1", "--reverse",
            "--format", "mp4,json,jsonl,mots,png", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "40 frame(s), 4 track(s)" in capsys.readouterr().err
    # the mp4: same frame count, size and rate, H.264 yuv420p
    with av.open(str(out / "video.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.pix_fmt == "yuv420p"
        assert (s.width, s.height) == (96, 64) and s.average_rate == Fraction(10)
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
    assert len(decoded) == 40
    # per-frame JSON with RLE masks and track ids, same as the JSON Lines file
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 40 and len(list((out / "frames").glob("*.json"))) == 40
    rec = json.loads((out / "frames" / "000020.json").read_text())
    assert rec == json.loads(lines[20]) and rec["frame"] == 20
    ids = {d["track_id"] for d in rec["detections"]}
    assert len(ids) == 3 and all(decode_rle(d["segmentation"]).sum() == d["area"] for d in rec["detections"])
    # DAVIS-style indexed PNG: palette image whose values are the track ids
    png = Image.open(out / "masks" / "000020.png")
    assert png.mode == "P" and set(np.unique(np.asarray(png))) == {0, *ids}
    summary = json.loads((out / "tracks.json").read_text())
    assert [t["track_id"] for t in summary["tracks"]] == [1, 2, 3, 4] and summary["frames"] == 40
    # TrackEval reads the MOTS txt: perfect tracks -> HOTA = MOTSA = IDF1 = 1
    _gt_mots(scene, tmp_path / "gt.txt")
    perfect = evaluate_mots(tmp_path / "gt.txt", out / "mots.txt", frames=40)
    assert perfect["HOTA"] == pytest.approx(1.0) and perfect["MOTSA"] == pytest.approx(1.0)
    assert perfect["IDF1"] == pytest.approx(1.0) and perfect["IDSW"] == 0
    # a deliberate id switch between the two pedestrians from frame 25 on lowers association, not detection
    ped = sorted(
        ids_ped for ids_ped in {t["track_id"] for t in summary["tracks"] if t["category"] == "pedestrian"}
    )
    swapped = []
    for line in (out / "mots.txt").read_text().splitlines(keepends=True):
        f, tid, *rest = line.split(" ")
        if int(f) > 25 and int(tid) in ped:
            tid = str(ped[1 - ped.index(int(tid))])
        swapped.append(" ".join([f, tid, *rest]))
    (tmp_path / "swapped.txt").write_text("".join(swapped))
    switched = evaluate_mots(tmp_path / "gt.txt", tmp_path / "swapped.txt", frames=40)
    assert switched["DetA"] == pytest.approx(1.0) and switched["IDSW"] == 2
    assert 0.5 < switched["HOTA"] < 0.9 and switched["IDF1"] < 0.9


def test_cli_refuses_a_finished_run_and_bad_videos_in_one_line(
    scene_video, oracle_pipeline, tmp_path, capsys
):
    scene, path = scene_video
    args = ["track", str(path), "-p", PROMPT, "--pipeline", oracle_pipeline(scene), "-q", "--format", "json"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    for bad, message in (
        (corrupt, "cannot read the video"),
        (empty, "no frame images"),
        (tmp_path / "nope.mp4", "no such"),
    ):
        code = main(
            [
                "track",
                str(bad),
                "-p",
                PROMPT,
                "--pipeline",
                oracle_pipeline(scene),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()  # nothing written


def test_truncated_video_keeps_the_readable_frames_and_says_so(
    scene_video, oracle_pipeline, tmp_path, capsys
):
    scene, _ = scene_video
    whole = tmp_path / "whole.mp4"
    with VideoWriter(whole, 10, scene.size) as w:  # +faststart: the index comes first, the cut hits frames
        for t in range(scene.frames):
            w.write(scene.pixels(t))
    cut = tmp_path / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "c"
    code = main(
        [
            "track",
            str(cut),
            "-p",
            PROMPT,
            "--pipeline",
            oracle_pipeline(scene),
            "-q",
            "--out",
            str(out),
            "--format",
            "json,mp4",
        ]
    )
    err = capsys.readouterr().err
    summary = json.loads((out / "tracks.json").read_text())
    written = len(list((out / "frames").glob("*.json")))
    assert code == 1 and "truncated" in err and "of its 40 frames" in summary["error"]
    assert 0 < written == summary["frames"] < 40
    with av.open(str(out / "video.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == written


def test_frames_folder_with_mixed_sizes_or_non_images_is_refused_before_any_work(
    tmp_path, oracle_pipeline, capsys
):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, size in enumerate([(32, 48), (32, 48), (40, 48)]):
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(VideoError, match="2.png: frame of 48x40 in a folder of 48x32 frames"):
        open_video(folder)  # the headers are read up front
    (folder / "2.png").write_text("not an image")
    with pytest.raises(VideoError, match="2.png: not a readable image"):
        open_video(folder)
    (folder / "2.png").unlink()
    assert open_video(folder).frame_count == 2
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(folder / "3.png")
    code = main(["track", str(folder), "-p", PROMPT, "--pipeline", oracle_pipeline(crossing_scene()),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "all frames must have one size" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written


def test_frames_folder_over_the_pixel_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    write_mp4(Scene(shapes=[], frames=2), path)
    monkeypatch.setenv("GROUNDED_MAX_PIXELS", "1000")
    with pytest.raises(VideoError, match="exceed the limit"):
        open_video(path)


def test_video_writer_pads_odd_sizes_and_aborts_cleanly(tmp_path):
    with VideoWriter(tmp_path / "odd.mp4", 12, (31, 45)) as w:
        for _ in range(3):
            w.write(np.zeros((31, 45, 3), np.uint8))
    with av.open(str(tmp_path / "odd.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (46, 32)
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "gone.mp4", 12, (32, 32)) as w:
        w.write(np.zeros((32, 32, 3), np.uint8))
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == [tmp_path / "odd.mp4"]


def test_detections_keep_track_ids_through_slicing_concatenation_and_supervision():
    det = Detections(
        boxes=torch.tensor([[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 1, 1]], dtype=torch.float32),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        class_ids=torch.tensor([0, 1, 0]),
        classes=("a", "b"),
        phrases=("a", "b", "a"),
        image_size=(4, 4),
    ).with_track_ids([7, 3, 9])
    assert det[1:].track_ids.tolist() == [3, 9] and det[det.scores > 0.75].track_ids.tolist() == [7, 3]
    assert Detections.cat([det[:1], det[2:]]).track_ids.tolist() == [7, 9]
    sv_det = det.to_supervision()
    assert sv_det.tracker_id.tolist() == [7, 3, 9]
    assert Detections.from_supervision(sv_det, (4, 4)).track_ids.tolist() == [7, 3, 9]
    assert [r["track_id"] for r in det.to_coco_records()] == [7, 3, 9]
    assert Detections.cat([det, det.with_track_ids([1, 2, 3])[:0]]).track_ids.tolist() == [7, 3, 9]
    with pytest.raises(ValueError, match="track_ids"):
        det.with_track_ids([1, 2])


# ---------------------------------------------------------------------------- SAM 2 video, tiny random model
@pytest.fixture(scope="session")
def tiny_sam2_video(models_dir):
    from grounded.models.testing import make_sam2_video

    return make_sam2_video(models_dir / "sam2-video", size="tiny", seed=0)


def test_sam2_video_tracker_follows_added_objects_and_prunes_its_state(tiny_sam2_video):
    from grounded.adapters.sam2_video import SAM2Video
    from grounded.core.images import LoadedImage
    from grounded.core.prompts import Prompt

    scene = crossing_scene()
    tracker = SAM2Video(model=str(tiny_sam2_video), device="cpu")
    tracker.start(scene.size, Prompt.of(PROMPT))
    for t in range(8):
        masks = tracker.step(t, LoadedImage(pixels=scene.pixels(t), name=f"v_{t:06d}"))
        if t == 0:
            assert masks == {}
            truth = scene.masks(0)
            masks = tracker.add(0, {1: truth[0], 2: np.array([80, 24, 92, 40], dtype=np.float32)})
            assert sorted(masks) == [1, 2]
            # the mask given comes back on its own frame (through the model's 128 px input and 32 px masks)
            iou = (masks[1] & truth[0]).sum() / (masks[1] | truth[0]).sum()
            assert iou > 0.9, iou
        assert sorted(masks) == ([1, 2] if t < 5 else [2]) and all(
            m.shape == scene.size for m in masks.values()
        )
        if t == 4:
            tracker.drop([1])
    # pruned: one stored frame, and per object at most the memory window plus its conditioning frames
    config = tracker._model.config
    window = max(config.num_maskmem, config.max_object_pointers_in_encoder) + 1
    assert len(tracker._session.processed_frames) == 1
    assert tracker.state_size() <= 1 + 2 * (window + 1) + tracker.max_cond_frames


def test_sam2_video_end_to_end_from_yaml(tiny_sam2_video, oracle_pipeline, scene_video, tmp_path):
    scene, path = scene_video
    SCENES["sam2"] = scene
    yaml = tmp_path / "sam2_track.yaml"
    yaml.write_text(
        "name: oracle_sam2\n"
        "nodes:\n"
        "  detector: {type: oracle_detector, params: {scene: sam2}}\n"
        f"  tracker: {{type: sam2_video, params: {{model: {tiny_sam2_video}, device: cpu}}}}\n"
        "inputs: {images: [detector.images], prompt: [detector.prompt]}\n"
        "outputs: {detections: detector.detections}\n"
    )
    import grounded

    frames = []
    for frame in grounded.track(path, PROMPT, pipeline=str(yaml), detect_every=3, reverse=True):
        frames.append(frame)
        if frame.index == 4:
            break
    assert [f.index for f in frames] == list(range(5))
    key = frames[3].detections  # a key frame with refresh: the tracks are the detector's masks
    assert key.track_ids is not None and len(key) >= 2
    assert set(frames[0].detections.track_ids.tolist()) <= {1, 2}


def test_cli_default_pipeline_with_tiny_local_models(tiny_gdino, tiny_sam2, tiny_sam2_video, tmp_path):
    """The user path: grounded track VIDEO with the bundled track_grounded_sam2 pipeline (Grounding DINO ->
    SAM 2 on key frames, SAM 2 video between them), tiny random models from local folders."""
    scene = crossing_scene()
    scene.frames = 8
    path = tmp_path / "short.mp4"
    write_mp4(scene, path)
    out = tmp_path / "run"
    code = main(
        [
            "track", str(path), "--prompt", PROMPT, "--out", str(out), "-q", "--detect-every", "4",
            "--detector", str(tiny_gdino), "--segmenter", str(tiny_sam2), "--tracker", str(tiny_sam2_video),
            "--box-threshold", "0.0", "--set", "detector.top_k=1", "--device", "cpu", "--format", "mp4,jsonl,mots",
        ]
    )  # fmt: skip
    assert code == 0
    with av.open(str(out / "video.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(8))
    summary = json.loads((out / "tracks.json").read_text())
    assert summary["settings"]["tracker"]["type"] == "sam2_video" and summary["settings"]["detect_every"] == 4
    ids = {d["track_id"] for r in records for d in r["detections"]}
    assert ids == {t["track_id"] for t in summary["tracks"]} and ids  # random weights: some tracks, ids 1..n
    assert ids == set(range(1, len(ids) + 1))


def test_a_text_driven_tracker_needs_no_detector_and_its_ids_are_kept(scene_video, tmp_path):
    scene, path = scene_video
    SCENES["text"] = scene
    yaml = tmp_path / "text.yaml"
    yaml.write_text("name: text\nnodes:\n  tracker: {type: oracle_text_tracker, params: {scene: text}}\n")
    tracking = build_tracking(str(yaml))
    assert tracking.detector is None
    book = TrackBook()
    frames = list(track(path, PROMPT, tracking, book=book))
    assert {k: ids for k, ids in _ids_per_object(scene, frames).items()} == {k: {k + 1} for k in range(4)}
    assert [t["first_frame"] for t in book.summary(scene.classes)] == [0, 0, 12, 31]


def test_a_pipeline_without_tracker_or_detector_is_refused_in_one_line(tmp_path, capsys):
    no_tracker = tmp_path / "a.yaml"
    no_tracker.write_text("name: a\nnodes:\n  detector: {type: oracle_detector}\n")
    no_detector = tmp_path / "b.yaml"
    no_detector.write_text("name: b\nnodes:\n  tracker: {type: oracle_tracker}\n")
    for yaml, message in ((no_tracker, "no 'tracker' node"), (no_detector, "needs detector nodes")):
        code = main(["track", "x.mp4", "-p", "car", "--pipeline", str(yaml), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
