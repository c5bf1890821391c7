"""grounded track: checkpoints and resume (kill -9 mid-run, then the same outputs as an uninterrupted run), the
SAM 2 video tracker's state round trip, and awkward input (rotation metadata, variable frame rate)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from video_oracle import SCENES, Scene, Shape, crossing_scene, write_mp4

from grounded.cli import main
from grounded.core.images import LoadedImage
from grounded.core.prompts import Prompt
from grounded.core.rle import decode_rle
from grounded.core.tracks import TrackBook
from grounded.core.video import open_video
from grounded.tasks.track import TrackState, build_tracking, track
from grounded.tasks.track_resume import Checkpoint, load_checkpoint, save_checkpoint

PROMPT = "car . pedestrian"
TESTS = Path(__file__).parent
RUN = """
import sys
sys.path.insert(0, {tests!r})
import video_oracle
video_oracle.SCENES["kill"] = video_oracle.crossing_scene()
from grounded.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _pipeline(tmp_path: Path, scene: str, detector: str = "oracle_detector") -> str:
    path = tmp_path / f"oracle_{scene}.yaml"
    path.write_text(
        "name: oracle\n"
        "nodes:\n"
        f"  detector: {{type: {detector}, params: {{scene: {scene}}}}}\n"
        f"  tracker: {{type: oracle_tracker, params: {{scene: {scene}}}}}\n"
        "inputs: {images: [detector.images], prompt: [detector.prompt]}\n"
        "outputs: {detections: detector.detections}\n"
    )
    return str(path)


def _records(frames) -> list[tuple[int, list]]:
    return [(f.index, f.detections.to_coco_records()) for f in frames]


class _KeepAll:
    """Checkpoints at every segment end, each saved and read back through the checkpoint file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.saved: list[int] = []

    def due(self, index: int) -> bool:
        return True

    def save(self, state: TrackState) -> None:
        folder = self.folder / str(state.next_index)
        folder.mkdir()
        save_checkpoint(folder, Checkpoint({}, state, {}))
        self.saved.append(state.next_index)

    def load(self, index: int) -> TrackState:
        checkpoint = load_checkpoint(self.folder / str(index))
        assert checkpoint is not None
        return checkpoint.state


@pytest.fixture
def crossing(tmp_path):
    SCENES["kill"] = crossing_scene()
    path = tmp_path / "street.mp4"
    write_mp4(SCENES["kill"], path, fps=10)
    return path


# ---------------------------------------------------------------------------- resume in process
@pytest.mark.parametrize("text_driven", [False, True])
def test_track_resumed_from_any_checkpoint_gives_the_frames_of_an_uninterrupted_run(
    crossing, tmp_path, text_driven
):
    if text_driven:
        yaml = tmp_path / "text.yaml"
        yaml.write_text("name: text\nnodes:\n  tracker: {type: oracle_text_tracker, params: {scene: kill}}\n")
        pipeline = str(yaml)
    else:
        pipeline = _pipeline(tmp_path, "kill")
    keep = _KeepAll(tmp_path)
    book = TrackBook()
    # a text-driven tracker takes no key-frame options: each frame ends a segment
    options = {} if text_driven else {"detect_every": 5, "max_lost": 1, "reverse": True}
    whole = _records(
        track(crossing, PROMPT, build_tracking(pipeline), book=book, checkpoints=keep, **options)
    )
    step = 1 if text_driven else 5
    assert keep.saved == list(range(step, len(whole), step))  # every segment end but the first frame
    assert text_driven or keep.saved == [5, 10, 15, 20, 25, 30, 35]
    for index in (10, 25, 35):  # 25: the first car is followed, 35: it has ended and a new one started
        again = TrackBook()
        state = keep.load(index)
        resumed = _records(
            track(crossing, PROMPT, build_tracking(pipeline), book=again, resume=state, **options)
        )
        assert resumed == whole[index:], index
        assert again.summary(crossing_scene().classes) == book.summary(crossing_scene().classes)


# ---------------------------------------------------------------------------- kill -9, then resume
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_kill_9_mid_run_then_resume_gives_byte_identical_outputs(crossing, tmp_path, capsys):
    args = [
        "track", str(crossing), "-p", PROMPT, "--pipeline", _pipeline(tmp_path, "kill"), "-q",
        "--detect-every", "5", "--max-lost", "1", "--reverse", "--checkpoint-every", "0",
        "--format", "mp4,json,jsonl,mots,png",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    script = tmp_path / "run.py"
    script.write_text(RUN.format(tests=str(TESTS)))
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), "ORACLE_STALL_AT": "27"}
    log = tmp_path / "run.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args, "--out", str(out)], env=env, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 120
        while True:  # the tracker hangs at frame 27: wait for the checkpoint at key frame 25
            assert proc.poll() is None, log.read_text()
            checkpoint = (
                load_checkpoint(out / "checkpoint") if (out / "checkpoint" / "state.pt").exists() else None
            )
            if checkpoint is not None and checkpoint.state.next_index == 25:
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(list((out / "frames").glob("*.json"))) == 25 and not (out / "tracks.json").exists()
    assert not (out / "frames.jsonl").exists() and not (out / "video.mp4").exists()  # streams not in place
    for name in ("frames.jsonl", "mots.txt", "render.jsonl"):  # a kill in mid-write leaves half a line
        with open(out / "checkpoint" / name, "a") as stream:
            stream.write('{"frame": 25, "ima')
    # another prompt or other settings: refused in one line, the checkpoint kept
    for change, key in ((["-p", "car . person"], "classes"), (["--detect-every", "4"], "detect_every")):
        assert main([*args, *change, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert (
            "interrupted run of other settings" in err and key in err and len(err.strip().splitlines()) == 1
        )
    assert (out / "checkpoint" / "state.pt").exists()
    # the same command again resumes at frame 25
    assert main([*args, "--out", str(out)]) == 0
    assert "40 frame(s) (resumed at frame 25), 4 track(s)" in capsys.readouterr().err
    whole, resumed = _files(tmp_path / "whole"), _files(out)
    assert sorted(resumed) == sorted(whole) and "checkpoint/state.pt" not in resumed
    for name in whole:
        if name == "tracks.json":
            a, b = json.loads(whole[name]), json.loads(resumed[name])
            a.pop("frames_per_second"), b.pop("frames_per_second")  # the one value that is timing
            assert a == b and a["frames"] == 40 and len(a["tracks"]) == 4
        else:
            assert resumed[name] == whole[name], name  # per-frame JSON, PNGs, JSONL, MOTS and the mp4
    decoded, reference = _decoded(out / "video.mp4"), _decoded(tmp_path / "whole" / "video.mp4")
    assert len(decoded) == 40 and all(np.array_equal(a, b) for a, b in zip(decoded, reference, strict=True))


def test_a_run_killed_before_its_first_checkpoint_starts_over(crossing, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "frames.jsonl").write_text('{"frame": 0, "ima')  # no state.pt: nothing to resume
    args = ["track", str(crossing), "-p", PROMPT, "--pipeline", _pipeline(tmp_path, "kill"), "-q"]
    assert main([*args, "--format", "jsonl", "--out", str(out)]) == 0
    assert "resumed" not in capsys.readouterr().err
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(40))
    assert sorted(p.name for p in out.iterdir()) == ["frames.jsonl", "tracks.json"]
    # a damaged checkpoint is refused in one line (--overwrite starts over)
    (out / "tracks.json").unlink()
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    assert main([*args, "--format", "jsonl", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot read the checkpoint" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--format", "jsonl", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "checkpoint").exists()


def test_a_frames_folder_image_broken_after_its_header_stops_reading_with_a_message(tmp_path, capsys):
    from PIL import Image

    scene = crossing_scene()
    SCENES["folder"] = scene
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(6):
        Image.fromarray(scene.pixels(t)).save(folder / f"{t:03d}.jpg", quality=95)
    data = (folder / "004.jpg").read_bytes()
    (folder / "004.jpg").write_bytes(data[: len(data) // 2])  # the header is whole, the pixels are not
    out = tmp_path / "run"
    args = ["track", str(folder), "-p", PROMPT, "--pipeline", _pipeline(tmp_path, "folder"), "-q"]
    assert main([*args, "--format", "json", "--out", str(out)]) == 1  # as a video that breaks off
    err = capsys.readouterr().err
    assert "reading stopped after 4 frame(s)" in err and "004.jpg" in err
    summary = json.loads((out / "tracks.json").read_text())
    assert summary["frames"] == 4 and len(list((out / "frames").glob("*.json"))) == 4
    # a PNG cut short fails its header read (PIL reads its chunks): refused before any work
    Image.fromarray(scene.pixels(4)).save(folder / "004.png")
    (folder / "004.jpg").unlink()
    data = (folder / "004.png").read_bytes()
    (folder / "004.png").write_bytes(data[: len(data) // 2])
    assert main([*args, "--format", "json", "--out", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    assert "004.png: not a readable image" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "png").exists()


# ---------------------------------------------------------------------------- SAM 2 video state
@pytest.fixture(scope="session")
def tiny_sam2_video_model(models_dir):
    from grounded.models.testing import make_sam2_video

    # seed 2: random weights whose masks are neither empty nor full on these frames (seed 0's are empty on
    # some since the official prompted-frame memory, tests/test_sam2_parity.py)
    return make_sam2_video(models_dir / "sam2-video-resume", size="tiny", seed=2)


def test_sam2_video_state_saved_and_loaded_gives_the_same_masks_as_continuing(tiny_sam2_video_model):
    from grounded.adapters.sam2_video import SAM2Video

    scene = crossing_scene()
    prompt = Prompt.of(PROMPT)
    frame = [LoadedImage(pixels=scene.pixels(t), name=f"v_{t:06d}") for t in range(6)]
    truth = [scene.masks(t) for t in range(6)]
    a = SAM2Video(model=str(tiny_sam2_video_model), device="cpu")
    a.start(scene.size, prompt)
    a.step(0, frame[0])
    a.add(0, {1: truth[0][0], 2: np.array([80, 24, 92, 40], dtype=np.float32)})
    a.step(1, frame[1])
    a.step(2, frame[2])
    a.add(2, {2: truth[2][1]})  # a corrected object: a second conditioning frame
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    saved = buffer.getvalue()
    state = torch.load(io.BytesIO(saved), weights_only=True)  # plain tensors and values only
    assert "high_res_masks" not in repr(state["outputs"].keys()) and sorted(state["obj_ids"]) == [1, 2]
    b = SAM2Video(model=str(tiny_sam2_video_model), device="cpu")
    b.start(scene.size, prompt)
    b.load_state_dict(state)
    for t in (3, 4, 5):
        ma, mb = a.step(t, frame[t]), b.step(t, frame[t])
        if t == 4:  # a new object, then one dropped: the same on both sides
            ma, mb = a.add(4, {3: truth[4][1]}), b.add(4, {3: truth[4][1]})
            a.drop([1])
            b.drop([1])
        assert sorted(ma) == sorted(mb) == ([1, 2] if t == 3 else [2, 3] if t == 5 else [1, 2, 3])
        assert all(np.array_equal(ma[k], mb[k]) for k in ma), t
        assert all(0 < m.sum() < m.size for m in ma.values()), t  # masks that can differ
    assert len(saved) < 2_000_000, len(saved)  # the pruned session only


# ---------------------------------------------------------------------------- rotation, variable frame rate
def _portrait_scene() -> Scene:
    """A portrait video (96 tall, 64 wide): two objects, one moving down, one moving right."""
    return Scene(
        shapes=[
            Shape(1, (14, 10), (4, 2), (4, 70), 0, 11, color=(220, 60, 60)),
            Shape(0, (10, 18), (2, 80), (40, 80), 0, 11, color=(60, 60, 220)),
        ],
        frames=12,
        size=(96, 64),
    )


def _write_rotated(scene: Scene, path: Path, degrees: int, fps: int = 10) -> None:
    """Store each upright frame turned by ``-degrees`` and a display matrix turning it back (counter-
    clockwise ``degrees``, as a phone held sideways records)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stored = np.rot90(scene.pixels(0), k=-degrees // 90)
        stream.height, stream.width = stored.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        for t in range(scene.frames):
            pixels = np.ascontiguousarray(np.rot90(scene.pixels(t), k=-degrees // 90))
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("degrees", [90, 180, -90])
def test_rotation_metadata_gives_upright_frames(tmp_path, degrees):
    scene = _portrait_scene()
    path = tmp_path / "rotated.mp4"
    _write_rotated(scene, path, degrees)
    with av.open(str(path)) as container:  # what is stored is not what is shown
        stream = container.streams.video[0]
        stored = (stream.codec_context.height, stream.codec_context.width)
        assert next(container.decode(stream)).rotation % 360 == degrees % 360
    source = open_video(path)
    assert source.size == (96, 64) and stored == ((64, 96) if degrees % 180 else (96, 64))
    for t, image in enumerate(source.frames()):
        error = np.abs(image.pixels.astype(int) - scene.pixels(t)).mean()
        assert error < 4, (t, error)  # upright (H.264 loses a little); a wrong turn is off by far more


def test_a_rotated_video_is_tracked_and_written_upright(tmp_path, capsys):
    scene = _portrait_scene()
    SCENES["portrait"] = scene
    path = tmp_path / "phone.mp4"
    _write_rotated(scene, path, 90)
    out = tmp_path / "run"
    code = main(
        ["track", str(path), "-p", PROMPT, "--pipeline", _pipeline(tmp_path, "portrait", "color_detector"),
         "-q", "--detect-every", "4", "--format", "mp4,jsonl", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with av.open(str(out / "video.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 96) and stream.average_rate == Fraction(10)
        frames = [f for f in container.decode(stream)]
    assert len(frames) == 12 and all(f.rotation == 0 for f in frames)  # upright pixels, no display matrix
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    for record in records:  # masks (found from the pixels) land on the objects in the upright frame
        assert record["image"]["height"] == 96 and record["image"]["width"] == 64
        truth = scene.masks(record["frame"])
        assert len(record["detections"]) == len(truth) == 2
        for det in record["detections"]:
            mask = decode_rle(det["segmentation"])
            assert mask.shape == (96, 64)
            assert max((mask & m).sum() / (mask | m).sum() for m in truth.values()) > 0.8


def test_variable_frame_rate_video_keeps_every_frame_and_a_sane_rate(tmp_path, capsys):
    scene = crossing_scene()
    SCENES["vfr"] = scene
    path = tmp_path / "vfr.mp4"
    gaps = [1, 1, 3, 1, 2]  # in 1/30 s: 30, 30, 10, 30, 15 frames/s in turn
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = scene.size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        pts = 0
        for t in range(scene.frames):
            frame = av.VideoFrame.from_ndarray(scene.pixels(t), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 30)
            pts += gaps[t % len(gaps)]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    assert len(times) == 40 and len(set(np.round(np.diff(times), 3))) == 3  # 1, 2 and 3 ticks apart
    out = tmp_path / "run"
    args = [
        "track",
        str(path),
        "-p",
        PROMPT,
        "--pipeline",
        _pipeline(tmp_path, "vfr"),
        "-q",
        "--format",
        "mp4,json",
    ]
    assert main([*args, "--out", str(out)]) == 0, capsys.readouterr().err
    with av.open(str(out / "video.mp4")) as container:
        rate = container.streams.video[0].average_rate
        assert sum(1 for _ in container.decode(video=0)) == 40
    assert len(list((out / "frames").glob("*.json"))) == 40
    mean = 30 / (sum(gaps) / len(gaps))  # 18.75 frames/s on average
    assert 10 <= float(rate) <= 30 and abs(float(rate) - mean) / mean < 0.2, (rate, mean)
