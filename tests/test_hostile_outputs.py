"""Outputs under hostile conditions: nothing lost (no file the run did not write is replaced, no folder it did
not create is deleted), nothing half-written (temporary files cleaned), one line and exit 2 for a refusal."""

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from grounded.cli import main
from grounded.core.files import atomic_write_bytes

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)

DEAD_PID = 999_999_999  # above any pid_max: never a running process
TINY_SAM = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
}


def _tree(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (hidden ones too) -> its content hash (``dir`` for folders)."""
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("grounded: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".grounded-"))


@pytest.fixture
def segment(tiny_gdino, tiny_sam):
    """``grounded segment`` with the tiny models; returns the exit code."""

    def run(*argv):
        models = ["--detector", str(tiny_gdino), "--segmenter", str(tiny_sam), "--box-threshold", "0"]
        return main(["segment", *models, "--top-k", "3", "-q", *map(str, argv)])  # later options win

    return run


@pytest.fixture(scope="module")
def sam_pth(tmp_path_factory) -> Path:
    """A small checkpoint in the official segment-anything layout."""
    from segment_anything.build_sam import _build_sam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("official") / "sam_vit_b_tiny.pth"
    torch.save(_build_sam(**TINY_SAM, checkpoint=None).state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _conversion_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------- convert (case 1)
def test_convert_refuses_a_folder_with_other_files_and_keeps_it(sam_pth, tmp_path, capsys):
    target = tmp_path / "m"
    (target / "sub").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    (target / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    before = _tree(tmp_path)
    assert main(["convert", str(sam_pth), str(target)]) == 2
    _one_error_line(capsys, str(target), "notes.txt", "not a grounded conversion")
    assert _tree(tmp_path) == before  # nothing removed, no temporary folder left


def test_convert_refuses_the_checkpoints_folder_its_ancestors_dot_and_dotdot(
    sam_pth, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "ck"
    work.mkdir()
    source = work / "sam.pth"
    source.write_bytes(sam_pth.read_bytes())
    (tmp_path / "keep.txt").write_text("parent's file")
    before = _tree(tmp_path)
    monkeypatch.chdir(work)
    for target, why in (
        (str(work), "holds the checkpoint"),
        (str(tmp_path), "holds the checkpoint"),
        ("..", "not . or .."),
        (".", "not . or .."),
        ("./", "not . or .."),
        (str(work / ".." / "ck"), "holds the checkpoint"),
    ):
        assert main(["convert", str(source), target]) == 2
        _one_error_line(capsys, why)
    assert _tree(tmp_path) == before


def test_convert_refuses_an_existing_file_without_leaving_a_temporary_folder(sam_pth, tmp_path, capsys):
    target = tmp_path / "model.bin"
    target.write_bytes(b"user data")
    assert main(["convert", str(sam_pth), str(target)]) == 2
    _one_error_line(capsys, "exists and is not a folder")
    assert target.read_bytes() == b"user data" and _temps(tmp_path) == []


def test_convert_writes_a_new_or_empty_folder_and_replaces_only_its_own_conversion(sam_pth, tmp_path, capsys):
    from grounded.models.checkpoints import CONVERSION_MARKER

    new = tmp_path / "deep" / "new"
    assert main(["convert", str(sam_pth), str(new)]) == 0
    assert (new / "config.json").is_file() and (new / CONVERSION_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", str(sam_pth), str(empty)]) == 0 and (empty / "config.json").is_file()
    (new / "stale-extra.txt").write_text("left by the previous conversion")
    assert main(["convert", str(sam_pth), str(new)]) == 0  # a previous conversion: replaced as a whole
    assert not (new / "stale-extra.txt").exists() and (new / "config.json").is_file()
    assert _temps(tmp_path) == [] and _temps(tmp_path / "deep") == []
    capsys.readouterr()


def test_a_killed_conversion_leaves_a_temporary_folder_that_the_next_one_removes(sam_pth, tmp_path, capsys):
    stale = tmp_path / f".grounded-{DEAD_PID}-abcd1234.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 1000)
    user = tmp_path / ".grounded-notes.tmp"  # not our pattern: a user's file is never removed
    user.write_text("mine")
    assert main(["convert", str(sam_pth), str(tmp_path / "out")]) == 0
    assert not stale.exists() and user.read_text() == "mine"
    capsys.readouterr()


# ---------------------------------------------------------------------- files the run did not write (case 2)
def test_segment_refuses_to_replace_a_file_it_did_not_write(segment, image_files, tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    photo = folder / "coffee.jpg"
    photo.write_bytes(image_files["coffee"].read_bytes())
    Image.new("RGB", (8, 8), "red").save(folder / "coffee.png")  # the user's own coffee.png, not an input
    before = _tree(folder)
    assert segment(photo, "-p", "cup", "--out", folder) == 2
    _one_error_line(capsys, str(folder / "coffee.png"), "--overwrite")
    assert _tree(folder) == before
    assert segment(photo, "-p", "cup", "--out", folder, "--overwrite") == 0  # asked for explicitly
    assert photo.read_bytes() == image_files["coffee"].read_bytes()  # inputs are never replaced
    assert (folder / "coffee.json").is_file() and Image.open(folder / "coffee.png").size == (600, 400)
    capsys.readouterr()
    assert segment(photo, "-p", "cup", "--out", folder) == 0  # its own results: replaced on a rerun
    assert segment(photo, "-p", "cup", "--out", folder, "--overwrite", "--format", "coco") == 0


def test_coco_json_of_another_tool_is_not_replaced(segment, image_files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    before = _tree(out)
    assert segment(image_files["chelsea"], "-p", "cat", "--out", out, "--format", "coco") == 2
    _one_error_line(capsys, "coco.json", "not a result")
    assert _tree(out) == before


# ---------------------------------------------------------------------- --skip-existing and settings (case 3)
def test_skip_existing_refuses_results_of_other_settings(segment, image_files, tmp_path, capsys):
    out = tmp_path / "out"
    both = [image_files["chelsea"], image_files["astronaut"]]
    assert segment(both[0], "-p", "person . cup", "--out", out) == 0  # a partial run: one image of two
    capsys.readouterr()
    before = _tree(out)
    assert segment(*both, "-p", "dog", "--out", out, "--skip-existing") == 2
    _one_error_line(capsys, "chelsea", "other settings", "prompt")
    assert (
        segment(*both, "-p", "person . cup", "--out", out, "--skip-existing", "--box-threshold", "0.5") == 2
    )
    _one_error_line(capsys, "detector.params.box_threshold")
    assert segment(*both, "-p", "dog", "--out", out) == 2  # a fresh run would replace them too
    _one_error_line(capsys, "other settings")
    assert _tree(out) == before
    assert segment(*both, "-p", "person . cup", "--out", out, "--skip-existing") == 0  # the same settings
    err = capsys.readouterr().err
    assert "1 image(s) processed" in err and "1 skipped" in err
    assert _tree(out)["chelsea.json"] == before["chelsea.json"]
    docs = [json.loads((out / f"{n}.json").read_text()) for n in ("chelsea", "astronaut")]
    assert docs[0]["grounded"] == docs[1]["grounded"] and docs[1]["grounded"]["prompt"] == ["person", "cup"]
    assert segment(*both, "-p", "dog", "--out", out, "--skip-existing", "--overwrite") == 0  # redone
    assert all(
        json.loads((out / f"{n}.json").read_text())["classes"] == ["dog"] for n in ("chelsea", "astronaut")
    )


# ---------------------------------------------------------------------- long names (case 7)
def test_a_250_character_file_name_is_shortened_and_the_run_completes(segment, image_files, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    long_photo = folder / ("x" * 246 + ".png")
    long_photo.write_bytes(image_files["chelsea"].read_bytes())
    out = tmp_path / "out"
    assert segment(long_photo, image_files["astronaut"], "-p", "cat", "--out", out) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 6 and "astronaut.json" in names and max(len(n.encode()) for n in names) <= 255
    (short,) = [n for n in names if n.startswith("xxx") and n.endswith(".json")]
    assert json.loads((out / short).read_text())["image"]["file_name"] == long_photo.name
    capsys.readouterr()
    assert segment(long_photo, image_files["astronaut"], "-p", "cat", "--out", out, "--skip-existing") == 0
    assert "2 skipped" in capsys.readouterr().err  # the same short name on a resume


def test_an_output_name_too_long_for_the_file_system_fails_that_image_only(
    segment, image_files, tmp_path, monkeypatch, capsys
):
    import grounded.tasks.segment_files as segment_files

    monkeypatch.setattr(segment_files, "fit_name", lambda name, _: name)  # a file system with no room left
    folder = tmp_path / "in"
    folder.mkdir()
    long_photo = folder / ("y" * 246 + ".png")
    long_photo.write_bytes(image_files["chelsea"].read_bytes())
    out = tmp_path / "out"
    assert segment(long_photo, image_files["astronaut"], "-p", "cat", "--out", out) == 1
    err = capsys.readouterr().err
    assert "too long for the file system" in err and "Traceback" not in err and "1 failed" in err
    assert (out / "astronaut.json").is_file() and not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------- unusable --out (case 8)
@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if a pipeline is built (the refusal must come first)."""
    import grounded.api

    def refuse(*args, **kwargs):
        raise AssertionError("a pipeline was built before --out was checked")

    monkeypatch.setattr(grounded.api, "build_pipeline", refuse)


@pytest.mark.parametrize("command", [["segment"], ["run", "grounded_sam"]])
def test_out_that_is_a_file_is_refused_before_loading(
    command, no_model_loading, image_files, tmp_path, capsys
):
    target = tmp_path / "results.txt"
    target.write_text("user data")
    argv = [*command, str(image_files["chelsea"]), "-p", "cat", "--out", str(target)]
    assert main(argv) == 2
    _one_error_line(capsys, "is not a folder")
    assert target.read_text() == "user data" and sorted(os.listdir(tmp_path)) == ["results.txt"]


@pytest.mark.parametrize(
    "out", ["/proc/grounded-results", "/proc/self", "/sys/grounded-results", "/sys/kernel"]
)
def test_out_under_proc_or_sys_is_refused_before_loading(out, no_model_loading, image_files, capsys):
    if not Path("/proc/self").is_dir() or not Path("/sys/kernel").is_dir():
        pytest.skip("no /proc or /sys here")
    assert main(["segment", str(image_files["chelsea"]), "-p", "cat", "--out", out]) == 2
    _one_error_line(capsys, out)
    assert not Path(out).exists() or out in ("/proc/self", "/sys/kernel")


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:  # pragma: no cover - depends on the user running the tests
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True)
    if mount.returncode != 0:  # pragma: no cover
        pytest.skip("cannot mount a read-only file system here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_out_on_a_read_only_mount_is_refused_before_loading(
    read_only_folder, no_model_loading, image_files, capsys
):
    for out in (read_only_folder, read_only_folder / "new" / "results"):
        assert main(["segment", str(image_files["chelsea"]), "-p", "cat", "--out", str(out)]) == 2
        _one_error_line(capsys, str(out))
    assert os.listdir(read_only_folder) == []


def test_annotate_refuses_an_out_that_is_a_file(tiny_gdino, tiny_sam, image_files, tmp_path, capsys):
    target = tmp_path / "dataset"
    target.write_text("user data")
    argv = ["annotate", str(image_files["chelsea"]), "--classes", "cat", "--out", str(target)]
    assert main([*argv, "--detector", str(tiny_gdino), "--segmenter", str(tiny_sam), "-q"]) == 2
    _one_error_line(capsys, "is not a folder")
    assert target.read_text() == "user data"


# ---------------------------------------------------------------------- a failed run leaves no empty --out
def test_a_failed_run_removes_only_the_folders_it_created(segment, image_files, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert segment(image_files["corrupt"], "-p", "cat", "--out", out) == 1  # nothing could be written
    assert not (tmp_path / "new").exists()
    assert segment(image_files["chelsea"], "-p", "cat", "--out", out, "--pipeline", "no-such-pipeline") == 2
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert segment(image_files["corrupt"], "-p", "cat", "--out", existing) == 1
    assert existing.is_dir() and os.listdir(existing) == []  # not created by the run: kept
    capsys.readouterr()


# ---------------------------------------------------------------------- temporary files (case 12, ENAMETOOLONG)
def test_temporary_names_are_short_and_stale_ones_are_cleaned(segment, image_files, tmp_path, capsys):
    target = tmp_path / ("z" * 250 + ".json")
    atomic_write_bytes(target, b"{}")  # the temporary name does not grow with the target's
    assert target.read_bytes() == b"{}" and os.listdir(tmp_path) == [target.name]
    out = tmp_path / "out"
    out.mkdir()
    stale_file = out / f".grounded-{DEAD_PID}-k2j4h5g6.tmp"
    stale_file.write_bytes(b"half a PNG")
    stale_dir = out / f".grounded-{DEAD_PID}-q9w8e7r6.tmp"
    stale_dir.mkdir()
    live = out / f".grounded-{os.getpid()}-a1b2c3d4.tmp"  # a running process's: kept
    live.write_bytes(b"in flight")
    mine = out / ".chelsea.png.tmp"  # not grounded's pattern
    mine.write_bytes(b"user")
    assert segment(image_files["chelsea"], "-p", "cat", "--out", out) == 0
    assert not stale_file.exists() and not stale_dir.exists() and live.exists() and mine.exists()
    live.unlink()
    capsys.readouterr()


def test_a_write_killed_by_sigkill_leaves_a_temp_file_that_the_next_run_removes(
    segment, image_files, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from grounded.core import files\n"
        "def hang(fd):\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "os.fsync = hang\n"
        "files.atomic_write_bytes(Path(sys.argv[1]) / 'chelsea.png', b'half' * 1000)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    finally:
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(timeout=30)
    assert len(_temps(out)) == 1 and not (out / "chelsea.png").exists()
    assert segment(image_files["chelsea"], "-p", "cat", "--out", out) == 0
    assert _temps(out) == [] and sorted(os.listdir(out)) == [
        "chelsea.json",
        "chelsea.png",
        "chelsea_labels.png",
    ]
    capsys.readouterr()


def test_output_folder_keeps_what_it_did_not_create(tmp_path):
    from grounded.core.files import OutputFolder, remove_stale_temps

    with OutputFolder(tmp_path / "a" / "b") as folder:
        assert folder.path.is_dir()
    assert not (tmp_path / "a").exists()
    with OutputFolder(tmp_path / "a" / "b") as folder:
        (folder.path / "result.json").write_text("{}")
    assert (tmp_path / "a" / "b" / "result.json").is_file()
    assert remove_stale_temps(tmp_path) == []


# ---------------------------------------------------------------------- granularity and edit
def test_granularity_replaces_its_own_results_only(tiny_sam, image_files, tmp_path, capsys):
    out = tmp_path / "levels"
    out.mkdir()
    Image.new("RGB", (4, 4)).save(out / "coffee_levels.png")  # someone else's file
    argv = ["granularity", str(image_files["coffee"]), "--segmenter", str(tiny_sam), "--out", str(out)]
    assert main([*argv, "--point", "300,200"]) == 2
    _one_error_line(capsys, "coffee_levels.png", "--overwrite")
    assert Image.open(out / "coffee_levels.png").size == (4, 4)
    assert main([*argv, "--point", "300,200", "--overwrite"]) == 0
    assert main([*argv, "--point", "300,200"]) == 0  # the same settings: its own results
    capsys.readouterr()
    assert main([*argv, "--point", "100,100"]) == 2  # another click would replace them
    _one_error_line(capsys, "other settings", "point")
    assert json.loads((out / "coffee_levels.json").read_text())["prompts"][0]["point"] == [300.0, 200.0]


def test_edit_refuses_an_existing_output_file_before_loading(image_files, tmp_path, capsys):
    out = tmp_path / "edited.png"
    out.write_bytes(b"user's picture")
    argv = ["edit", str(image_files["chelsea"]), "-s", "cat", "--remove", "-o", str(out)]
    assert main([*argv, "--detector", str(tmp_path / "no-model"), "-q"]) == 2
    _one_error_line(capsys, str(out), "--overwrite")
    assert out.read_bytes() == b"user's picture"
    new = tmp_path / "new" / "edited.png"
    assert main(["edit", str(image_files["chelsea"]), "-s", "cat", "--remove", "-o", str(new)]) == 2
    _one_error_line(capsys, "inpainter")  # no inpainting model here: the run fails
    assert not (tmp_path / "new").exists()  # created for the output, removed when nothing was written
    capsys.readouterr()
