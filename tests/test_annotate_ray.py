"""grounded annotate --engine ray on a local Ray instance: the same manifest and datasets as the local engine,
from a folder, a Parquet list or a JSONL list, and after a resume."""

import json
import shutil
import sqlite3
import sys

import pytest

from grounded.cli import CliError, _build_parser, main
from grounded.cli.annotate import _build
from grounded.tasks.annotate import collect_images
from grounded.tasks.annotate import run_settings as _settings
from grounded.tasks.annotate_ray import AnnotateActor, _import_ray, actor_plan, actor_spec

ray = pytest.importorskip("ray")

CLASSES = "person: person, man; cup: cup, mug; flag"
NAMES = ["astronaut.png", "chelsea.png", "coffee.jpg", "corrupt.jpg"]


def _args(inputs, out, tiny_gdino, tiny_sam, *extra):
    return [
        "annotate",
        *map(str, inputs),
        "--out",
        str(out),
        "--classes",
        CLASSES,
        "--detector",
        str(tiny_gdino),
        "--segmenter",
        str(tiny_sam),
        "--box-threshold",
        "0.0",
        "--top-k",
        "4",
        "--batch-size",
        "2",
        "--format",
        "coco,yolo",
        "--val-fraction",
        "0.34",
        "--quiet",
        *extra,
    ]


def _rows(out):
    db = sqlite3.connect(out / "manifest.sqlite")
    rows = db.execute("SELECT file, status, error, result FROM images ORDER BY file").fetchall()
    db.close()
    return rows


def _dataset_bytes(out):
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest.sqlite")
    }


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def image_dir(image_files):
    return image_files["astronaut"].parent  # astronaut.png, coffee.jpg, chelsea.png, corrupt.jpg


@pytest.fixture(scope="module")
def local_run(image_dir, tiny_gdino, tiny_sam, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotate-ray") / "local"
    assert main(_args([image_dir], out, tiny_gdino, tiny_sam)) == 1  # corrupt.jpg fails
    return out


@pytest.fixture(scope="module")
def lists(image_dir, tmp_path_factory):
    """A Parquet list (relative paths, resolved against its folder) and a JSONL list (absolute paths + keys)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("lists")
    for name in NAMES:
        shutil.copyfile(image_dir / name, folder / name)
    parquet = folder / "images.parquet"
    pq.write_table(pa.table({"path": list(reversed(NAMES)), "extra": list(range(4))}), parquet)
    jsonl = tmp_path_factory.mktemp("elsewhere") / "images.jsonl"
    jsonl.write_text("".join(json.dumps({"path": str(image_dir / n), "key": n}) + "\n" for n in NAMES) + "\n")
    return {"parquet": parquet, "jsonl": jsonl}


def test_parquet_list_equals_the_folder(lists, local_run, tiny_gdino, tiny_sam, tmp_path):
    files = collect_images([lists["parquet"]])
    assert list(files) == NAMES  # sorted by key, whatever the list's order
    # relative paths resolve against the list's folder, not the working directory
    assert files["coffee.jpg"] == lists["parquet"].parent / "coffee.jpg"
    out = tmp_path / "parquet"
    assert main(_args([lists["parquet"]], out, tiny_gdino, tiny_sam)) == 1
    got, want = _rows(out), _rows(local_run)
    assert [(f, s) for f, s, _, _ in got] == [(f, s) for f, s, _, _ in want]
    assert [r for r in got if r[1] == "done"] == [r for r in want if r[1] == "done"]
    # the corrupt file's error names its path, which is the copy's here
    assert str(lists["parquet"].parent / "corrupt.jpg") in got[3][2]
    got_files, want_files = _dataset_bytes(out), _dataset_bytes(local_run)
    assert sorted(got_files) == sorted(want_files)
    for name in got_files:
        if name != "validation.json":  # it lists the failed file's error
            assert got_files[name] == want_files[name], name


def test_list_keys_paths_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    lines = [
        {"path": "sub/a.png"},  # key: the path relative to the list's folder
        {"path": str(tmp_path / "sub" / "b.png")},  # absolute, inside the folder: the same
        {"path": str(outside)},  # absolute, outside: the file name
        {"path": "c.png", "key": "renamed/c.png"},  # a key given is kept
    ]
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps(entry) + "\n" for entry in lines))
    files = collect_images([listing])
    assert files == {
        outside.name: outside,
        "renamed/c.png": tmp_path / "c.png",
        "sub/a.png": tmp_path / "sub" / "a.png",
        "sub/b.png": tmp_path / "sub" / "b.png",
    }  # missing files are kept: the run lists them as failed images, as for files given on the command line
    for entry, message in (
        ({"path": "s3://bucket/a.jpg"}, "is a URL"),
        ({"path": "a.jpg", "key": "../a.jpg"}, "'key' must be a relative name"),
        ({"path": 3}, "'path' must be a non-empty string"),
    ):
        listing.write_text(json.dumps(entry) + "\n")
        with pytest.raises(CliError, match=message):
            collect_images([listing])
    listing.write_text('{"path": "a.png"}\n{"path": "a.png"}\n{"path": "sub/../a.png"}\n')
    assert collect_images([listing]) == {"a.png": tmp_path / "a.png"}  # the same file twice is one image
    listing.write_text('{"path": "a.png"}\n{"path": "sub/a.png", "key": "a.png"}\n')
    with pytest.raises(CliError, match="same name 'a.png'"):
        collect_images([listing])


def test_ray_run_resumed_from_a_jsonl_list_equals_the_local_run(
    local_ray, lists, local_run, image_dir, tiny_gdino, tiny_sam, tmp_path, capsys
):
    """One Ray run (actors start in seconds, not milliseconds) checks the engine, a list input and a resume."""
    assert collect_images([lists["jsonl"]]) == collect_images([image_dir])  # keys given, absolute paths
    out = tmp_path / "ray"
    out.mkdir()
    shutil.copyfile(local_run / "manifest.sqlite", out / "manifest.sqlite")
    db = sqlite3.connect(out / "manifest.sqlite")
    # astronaut.png stays done: its chunk (with chelsea.png) runs whole, but only chelsea.png is committed
    db.execute("DELETE FROM images WHERE file != 'astronaut.png'")
    db.commit()
    db.close()
    capsys.readouterr()
    args = _args([lists["jsonl"]], out, tiny_gdino, tiny_sam, "--engine", "ray", "--ray-actors", "1")
    assert main(args) == 1  # corrupt.jpg fails, as in the local run
    assert "3 image(s) annotated now, 1 resumed from the manifest, 1 failed" in capsys.readouterr().err
    rows = _rows(out)
    assert [(f, s) for f, s, _, _ in rows] == [
        ("astronaut.png", "done"),
        ("chelsea.png", "done"),
        ("coffee.jpg", "done"),
        ("corrupt.jpg", "error"),
    ]
    assert rows == _rows(local_run)  # the same results, and the same error message (naming the same path)
    got, want = _dataset_bytes(out), _dataset_bytes(local_run)
    assert sorted(got) == sorted(want)
    assert sum(name.startswith("yolo/labels/") for name in got) == 3
    coco = json.loads(got["coco/annotations/instances_train.json"])
    assert len(coco["annotations"]) == 4 * len(coco["images"]) > 0
    for name in got:
        assert got[name] == want[name], name  # byte-identical COCO JSON, YOLO labels, validation.json


def test_actor_in_process_gives_the_local_results(local_run, image_dir, tiny_gdino, tiny_sam):
    args = _build_parser().parse_args(_args([image_dir], "unused", tiny_gdino, tiny_sam))
    pipeline, ontology = _build(args)
    actor = AnnotateActor(pipeline.to_dict(), ontology.to_spec(), threads=None, gpu=False)
    chunks = [NAMES[:2], NAMES[2:]]
    batch = {"chunk": [json.dumps([[n, str(image_dir / n), str(image_dir / n)] for n in c]) for c in chunks]}
    out = actor(batch)
    assert list(out) == ["key", "status", "text", "note"]
    got = sorted(zip(out["key"], out["status"], out["text"], out["note"], strict=True))
    want = _rows(local_run)
    assert [(k, s) for k, s, _, _ in got] == [(f, s) for f, s, _, _ in want]
    for (key, status, text, note), (_, _, error, result) in zip(got, want, strict=True):
        if status == "done":
            assert json.loads(text) == json.loads(result), key
        else:
            assert text == error and note == error  # the decode error names the path, as the local run's

    broken = pipeline.to_dict()
    broken["nodes"]["detector"]["params"]["model"] = str(image_dir / "no-such-model")
    actor = AnnotateActor(broken, ontology.to_spec(), threads=None, gpu=False)
    out = actor({"chunk": batch["chunk"][:1]})
    assert list(out["status"]) == ["fatal"] and "no-such-model" in out["text"][0]  # the driver stops on it


def test_actor_spec_maps_any_gpu_to_the_actors_own(image_dir, tiny_gdino, tiny_sam):
    args = _build_parser().parse_args(_args([image_dir], "x", tiny_gdino, tiny_sam, "--device", "cuda:1"))
    pipeline, ontology = _build(args)
    spec = pipeline.to_dict()
    on_gpu = actor_spec(spec, gpu=True)
    assert {n["params"]["device"] for n in spec["nodes"].values()} == {"cuda:1"}
    assert {n["params"]["device"] for n in on_gpu["nodes"].values()} == {"cuda"}
    assert actor_spec(spec, gpu=False) == spec
    # engine options and the device are not fingerprinted: a run resumes with the other engine
    assert _settings(pipeline, ontology) == _settings(
        *_build(
            _build_parser().parse_args(
                _args([image_dir], "x", tiny_gdino, tiny_sam, "--engine", "ray", "--ray-actors", "3")
            )
        )
    )


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CliError, match=r"pip install 'grounded\[ray\]'"):
        _import_ray()


def test_actor_plan_and_option_errors(image_dir, tiny_gdino, tiny_sam, tmp_path, capsys):
    assert actor_plan(2, [16.0], None, None) == (2, 1.0, 1.0)  # one actor per GPU
    assert actor_plan(2, [16.0], 1, "cuda:1") == (1, 1.0, 1.0)
    assert actor_plan(0, [2.0], None, None) == (1, 0.0, 2.0)  # one CPU actor using the CPUs
    assert actor_plan(0, [8.0, 4.0], 3, None) == (3, 0.0, 4.0)  # none reserves more than a node has
    assert actor_plan(0, [2.0], 5, None) == (2, 0.0, 1.0)
    assert actor_plan(1, [2.0], 4, "cpu") == (2, 0.0, 1.0)
    with pytest.raises(CliError, match="no GPU"):
        actor_plan(0, [4.0], None, "cuda")

    bad = tmp_path / "bad.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"file": ["a.jpg"]}), bad)
    assert main(_args([bad], tmp_path / "x", tiny_gdino, tiny_sam)) == 2
    (tmp_path / "bad.jsonl").write_text('{"path": "a.jpg"}\n{"file": "b.jpg"}\n')
    assert main(_args([tmp_path / "bad.jsonl"], tmp_path / "y", tiny_gdino, tiny_sam)) == 2
    assert main(_args([image_dir], tmp_path / "z", tiny_gdino, tiny_sam, "--ray-actors", "2")) == 2
    err = capsys.readouterr().err
    assert "needs a 'path' column; it has file" in err
    assert "bad.jsonl:2: each line needs a 'path' field" in err
    assert "--ray-actors need --engine ray" in err
    assert "Traceback" not in err
