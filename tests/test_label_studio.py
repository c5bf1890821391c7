"""The Label Studio ML backend against the protocol of label-studio-ml-backend (golden requests in
tests/data/label_studio_protocol.json), its answers decoded with label-studio-sdk's own tools."""

from __future__ import annotations

import gc
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from label_studio_sdk.converter import brush
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from grounded.core.images import load_image
from grounded.core.rle import decode_rle
from grounded.integrations.annotator import Annotator
from grounded.integrations.label_studio import LabelStudioBackend, create_app
from grounded.integrations.label_studio.config import LabelingConfig
from grounded.tasks.datasets import mask_iou, polygons_to_mask

GOLDEN = json.loads((Path(__file__).parent / "data" / "label_studio_protocol.json").read_text())
TOKEN = "0123456789abcdef"


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory, astronaut) -> Path:
    folder = tmp_path_factory.mktemp("ls-media") / "upload" / "3"
    folder.mkdir(parents=True)
    path = folder / "astronaut.png"
    Image.fromarray(astronaut).resize((160, 128)).save(path)
    return path


@pytest.fixture(scope="module")
def label_studio(photo_file):
    """A stand-in Label Studio serving /data/upload/... only with ``Authorization: Token TOKEN``."""
    root = photo_file.parents[2]
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            path = root / self.path.removeprefix("/data/").split("?")[0]
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            if not path.is_file():
                self.send_response(404)
                self.end_headers()
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.fixture(scope="module")
def annotator(tiny_gdino, tiny_sam) -> Annotator:
    return Annotator(
        detector=str(tiny_gdino),
        segmenter=str(tiny_sam),
        device="cpu",
        overrides={"detector": {"box_threshold": 0.0, "top_k": 4, "nms_threshold": None}},
    )


@pytest.fixture()
def client(annotator, label_studio, monkeypatch):
    url, _ = label_studio
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    backend = LabelStudioBackend(annotator)
    with TestClient(create_app(backend)) as c:
        c.backend = backend  # type: ignore[attr-defined]
        yield c


def _request(name: str, image: str = "/data/upload/3/astronaut.png") -> dict[str, Any]:
    return json.loads(json.dumps(GOLDEN[name]["request"]).replace('"IMAGE"', json.dumps(image)))


def _form(value: Any) -> Any:
    """A JSON value's form: dicts by key, lists by their items' forms, numbers and strings by type."""
    if isinstance(value, dict):
        return {k: _form(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(_form(v), sort_keys=True) for v in value})
    if isinstance(value, bool) or value is None:
        return value
    return {int: "int", float: "float", str: "str"}[type(value)]


def _golden_form(value: Any) -> Any:
    """The same for a golden form, whose leaves name types ("int", "float", "str") or give exact values."""
    if isinstance(value, dict):
        return {k: _golden_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(_golden_form(v), sort_keys=True) for v in value})
    if value in ("int", "float", "str") or isinstance(value, bool) or value is None:
        return value
    return _form(value)


def _off_boundary(filled: np.ndarray, truth: np.ndarray) -> float:
    """How far (pixels) from the mask's outline the farthest pixel where ``filled`` and the mask differ lies."""
    from scipy import ndimage

    depth = np.where(truth, ndimage.distance_transform_edt(truth), ndimage.distance_transform_edt(~truth))
    return float(depth[filled != truth].max(initial=0.0))


def test_health_setup_webhook_match_the_protocol(client):
    assert client.get("/health").json() == GOLDEN["health"]["response"]
    assert client.get("/").json() == GOLDEN["health"]["response"]
    setup = client.post("/setup", json=_request("setup")).json()
    assert list(setup) == GOLDEN["setup"]["response_keys"] and setup["model_version"].startswith("grounded-")
    for name in ("webhook", "webhook_unknown"):
        answer = client.post("/webhook", json=_request(name))
        assert answer.status_code == GOLDEN[name]["status"] and answer.json() == GOLDEN[name]["response"]
    assert client.backend.memory("5") == {"prompt": "Cat: tabby", "box_threshold": 0.25}


def test_predict_every_label_type_decodes_to_our_detections(client, annotator, photo_file, label_studio):
    body = _request("predict")
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["results"]
    assert _form(answer.json()) == _golden_form(GOLDEN["predict"]["response_form"])
    interface = LabelInterface(body["label_config"])
    assert interface.validate_prediction(prediction)
    assert prediction["model_version"] == annotator.model_version()
    assert label_studio[1][-1] == f"Token {TOKEN}"

    config = LabelingConfig.parse(body["label_config"])
    det = annotator.detect(load_image(photo_file), config.outputs[0].ontology())
    assert set(det.classes) == {"Cat", "Person"}
    regions = {
        kind: [r for r in prediction["result"] if r["type"] == kind]
        for kind in ("rectanglelabels", "polygonlabels", "brushlabels")
    }
    assert len(regions["rectanglelabels"]) == len(det) > 0
    for r, box, cid, score in zip(
        regions["rectanglelabels"],
        det.boxes.tolist(),
        det.class_ids.tolist(),
        det.scores.tolist(),
        strict=True,
    ):
        v, w, h = r["value"], r["original_width"], r["original_height"]
        assert (w, h) == (160, 128) and v["rectanglelabels"] == [det.classes[cid]]
        back = [
            v["x"] * w / 100,
            v["y"] * h / 100,
            (v["x"] + v["width"]) * w / 100,
            (v["y"] + v["height"]) * h / 100,
        ]
        assert np.abs(np.array(back) - box).max() <= 1.0 and r["score"] == pytest.approx(score, abs=1e-6)
    kept = [i for i in range(len(det)) if det.mask_array(i).any()]
    assert len(regions["brushlabels"]) == len(kept)
    for r, i in zip(regions["brushlabels"], kept, strict=True):
        flat = brush.decode_rle(r["value"]["rle"])
        mask = np.reshape(flat, (128, 160, 4))[:, :, 3] > 0
        assert np.array_equal(mask, decode_rle(det.rles()[i]))
        assert r["value"]["brushlabels"] == [det.classes[int(det.class_ids[i])]]
    for label in ("Cat", "Person"):
        polys = [r for r in regions["polygonlabels"] if r["value"]["polygonlabels"] == [label]]
        truth = np.zeros((128, 160), bool)
        for i in kept:
            if det.classes[int(det.class_ids[i])] == label:
                truth |= det.mask_array(i)
        for r in polys:
            pts = np.array(r["value"]["points"])
            assert pts.shape[0] >= 3 and pts.min() >= 0 and pts.max() <= 100 and r["value"]["closed"]
        flat_polys = [(np.array(r["value"]["points"]) * [1.6, 1.28]).reshape(-1).tolist() for r in polys]
        filled = polygons_to_mask(flat_polys, 128, 160)
        assert _off_boundary(filled, truth) <= 1.0  # at most a pixel on the outline differs
        assert mask_iou(filled, truth) > 0.97 or not truth.any()


def test_typed_prompt_and_thresholds_are_remembered_per_project(client, annotator, photo_file):
    answer = client.post("/predict", json=_request("predict_prompt")).json()
    (prediction,) = answer["results"]
    labels = {r["value"][r["type"]][0] for r in prediction["result"] if r["type"].endswith("labels")}
    assert labels == {"Person"}
    echoed = {r["from_name"]: r["value"] for r in prediction["result"] if r["type"] in ("textarea", "number")}
    assert echoed == {"prompt": {"text": ["Person: astronaut, person"]}, "box_threshold": {"number": 0.2}}
    assert all(r["score"] >= 0.2 for r in prediction["result"] if "score" in r)
    later = _request("predict")  # the same project, no context: the remembered prompt
    (again,) = client.post("/predict", json=later).json()["results"]
    assert {r["value"][r["type"]][0] for r in again["result"] if r["type"].endswith("labels")} == {"Person"}
    other = {**later, "project": "9.1"}
    (fresh,) = client.post("/predict", json=other).json()["results"]
    assert not [r for r in fresh["result"] if r["type"] == "textarea"]


def test_a_prompt_class_that_is_no_label_is_refused_in_one_line(client):
    body = _request("predict_prompt")
    body["params"]["context"]["result"][0]["value"]["text"] = ["spaceship"]
    answer = client.post("/predict", json=body)
    assert answer.status_code == 400
    assert "'spaceship' is no label of <box> (Cat, Person)" in answer.json()["error"]


def test_smart_click_then_box_reuse_the_cached_embedding(client, annotator, photo_file, monkeypatch):
    segmenter = annotator.segmenter
    calls: list[int] = []
    encode_batch = segmenter._encode_batch
    monkeypatch.setattr(
        segmenter, "_encode_batch", lambda batch: calls.append(len(batch)) or encode_batch(batch)
    )
    segmenter._cache.clear()
    first = client.post("/predict", json=_request("predict_keypoint")).json()
    assert _form(first) == _golden_form(GOLDEN["predict_keypoint"]["response_form"])
    second = client.post("/predict", json=_request("predict_rectangle")).json()
    assert calls == [1]  # the box on the same image: decoder only
    image = load_image(photo_file)
    for answer, want in (
        (first, annotator.click(image, [[80.0, 40.0]], [1])),
        (second, annotator.click(image, box=[32.0, 12.8, 112.0, 89.6])),
    ):
        (region,) = answer["results"][0]["result"]
        mask = np.reshape(brush.decode_rle(region["value"]["rle"]), (128, 160, 4))[:, :, 3] > 0
        assert np.array_equal(mask, want.mask.numpy())
        assert region["score"] == pytest.approx(want.score, abs=1e-6)
    assert second["results"][0]["result"][0]["value"]["brushlabels"] == ["Orange"]
    assert LabelInterface(GOLDEN["smart_config"]).validate_prediction(second["results"][0])


def test_images_fetch_errors_are_one_line(client, monkeypatch, tmp_path, photo_file):
    body = _request("predict", image="/data/upload/3/missing.png")
    answer = client.post("/predict", json=body)
    assert answer.status_code == 400 and "HTTP 404" in answer.json()["error"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "wrong")
    client.backend.fetch._images.clear()
    answer = client.post("/predict", json=_request("predict"))
    assert answer.status_code == 400 and "LABEL_STUDIO_API_KEY" in answer.json()["error"]
    monkeypatch.delenv("LABEL_STUDIO_URL")
    answer = client.post(
        "/predict", json=_request("predict", image="/data/local-files/?d=upload/3/astronaut.png")
    )
    assert answer.status_code == 400 and "LABEL_STUDIO_URL" in answer.json()["error"]
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(photo_file.parents[2]))
    answer = client.post(
        "/predict", json=_request("predict", image="/data/local-files/?d=upload/3/astronaut.png")
    )
    assert answer.status_code == 200 and answer.json()["results"][0]["result"]
    answer = client.post("/predict", json=_request("predict", image="/data/local-files/?d=../../etc/passwd"))
    assert answer.status_code == 400 and "leaves LOCAL_FILES_DOCUMENT_ROOT" in answer.json()["error"]


def test_download_limit_and_basic_auth(client, monkeypatch):
    client.backend.fetch.max_bytes = 100
    client.backend.fetch._images.clear()
    answer = client.post("/predict", json=_request("predict"))
    assert answer.status_code == 400 and "more than the limit of 100" in answer.json()["error"]
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "secret")
    assert client.get("/health").status_code == 401
    assert client.get("/health", auth=("ls", "secret")).status_code == 200


def test_the_command_serves_the_protocol(tiny_gdino, tiny_sam, tmp_path):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "grounded",
        "label-studio-backend",
        "--port",
        str(port),
        "--device",
        "cpu",
    ]
    command += [
        "--detector",
        str(tiny_gdino),
        "--segmenter",
        str(tiny_sam),
        "--set",
        "detector.box_threshold=0.2",
    ]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    health = json.load(r)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                time.sleep(0.1)
        assert health == GOLDEN["health"]["response"]
        request = urllib.request.Request(
            url + "/setup",
            data=json.dumps(_request("setup")).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.load(r)["model_version"].startswith("grounded-0.1.0-grounded_sam-")
    finally:
        server.terminate()
        server.wait(10)
    assert server.returncode is not None
    bad = subprocess.run(
        [sys.executable, "-m", "grounded", "label-studio-backend", "--port", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--port" in bad.stderr


def test_a_prompt_in_the_task_and_a_batch_with_a_bad_task(client):
    body = _request("predict")
    body["label_config"] = body["label_config"].replace('name="prompt"', 'name="prompt" value="$caption"')
    body["project"] = "21.1"
    good = {"id": 11, "data": {"image": "/data/upload/3/astronaut.png", "caption": "Person: astronaut"}}
    bad = {"id": 12, "data": {"image": "/data/upload/3/missing.png"}}
    body["tasks"] = [good, bad]
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200
    first, second = answer.json()["results"]
    labels = {r["value"][r["type"]][0] for r in first["result"] if r["type"].endswith("labels")}
    assert labels == {"Person"}
    assert {"text": ["Person: astronaut"]} in [r["value"] for r in first["result"] if r["type"] == "textarea"]
    assert second["result"] == [] and second["model_version"] == first["model_version"]


def test_a_negative_click_changes_the_mask(client, annotator, photo_file):
    body = _request("predict_keypoint")
    negative = {**body["params"]["context"]["result"][0], "is_positive": False, "id": "neg"}
    negative["value"] = {**negative["value"], "x": 25.0, "y": 75.0}
    body["params"]["context"]["result"].append(negative)
    (region,) = client.post("/predict", json=body).json()["results"][0]["result"]
    mask = np.reshape(brush.decode_rle(region["value"]["rle"]), (128, 160, 4))[:, :, 3] > 0
    want = annotator.click(load_image(photo_file), [[80.0, 40.0], [40.0, 96.0]], [1, 0])
    only_positive = annotator.click(load_image(photo_file), [[80.0, 40.0]], [1])
    assert np.array_equal(mask, want.mask.numpy())
    assert not np.array_equal(want.mask.numpy(), only_positive.mask.numpy())


def test_a_labels_prompts_are_shared_by_every_control():
    config = LabelingConfig.parse(
        '<View><Image name="im" value="$url"/>'
        '<RectangleLabels name="b" toName="im" model_score_threshold="0.4">'
        '<Label value="Car" predicted_values="car, automobile"/><Label value="Dog"/></RectangleLabels>'
        '<BrushLabels name="m" toName="im"><Label value="Car"/><Label value="Dog"/></BrushLabels>'
        '<RectangleLabels name="s" toName="im" smart="true"><Label value="Car"/></RectangleLabels></View>'
    )
    assert config.image == "im" and config.image_key == "url" and config.smart == {"s"}
    assert [o.from_name for o in config.outputs] == ["b", "m"] and config.outputs[0].score_threshold == 0.4
    for out in config.outputs:
        assert out.ontology().to_spec() == "Car: car, automobile; Dog: Dog"
    assert config.outputs[1].ontology("dog, automobile").to_spec() == "Dog: dog; Car: automobile"
    assert config.mask_output().from_name == "m"


def test_a_smart_region_without_coordinates_is_a_one_line_error(client):
    body = _request("predict_keypoint")
    del body["params"]["context"]["result"][0]["value"]["x"]
    answer = client.post("/predict", json=body)
    assert (
        answer.status_code == 400
        and answer.json()["error"] == "smart region 'fBWv1t0S2L' of <tag2> has no x/y in percent"
    )


def test_grounded_serve_answers_the_protocol_under_label_studio(
    tiny_gdino, tiny_sam, label_studio, monkeypatch
):
    """``grounded serve --label-studio``: the same backend at ``/label-studio`` beside the serve API (whose
    ``/health`` stays its own), with predictions of the serve pipeline's models."""
    from grounded.serve import ServeConfig, Service
    from grounded.serve import create_app as serve_app
    from grounded.serve.label_studio import label_studio_routes

    url, _ = label_studio
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    overrides = {
        "detector": {"model": str(tiny_gdino), "box_threshold": 0.0, "top_k": 4, "nms_threshold": None},
        "segmenter": {"model": str(tiny_sam)},
    }
    config = ServeConfig(overrides=overrides, shared={"device": "cpu"})
    with TestClient(serve_app(Service(config), extra_routers=[label_studio_routes(config)])) as c:
        assert c.get("/label-studio/health").json() == GOLDEN["health"]["response"]
        assert c.get("/health").json() != GOLDEN["health"]["response"]  # serve's own health document
        answer = c.post("/label-studio/predict", json=_request("predict"))
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["results"]
        assert _form(answer.json()) == _golden_form(GOLDEN["predict"]["response_form"])
        assert LabelInterface(_request("predict")["label_config"]).validate_prediction(prediction)
        boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert len(boxes) == 4  # top_k of the serve configuration's detector


def test_serve_label_studio_with_ray_is_one_line(capsys):
    from grounded.cli import main

    assert main(["serve", "--label-studio", "--engine", "ray"]) == 2
    assert "--label-studio runs with --engine local only" in capsys.readouterr().err


def _codec_masks() -> list[np.ndarray]:
    """Masks for the brush codec: tiny, empty, full, random, ragged, and runs past one record's 65,536."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    masks = [np.zeros((3, 5), bool), np.ones((1, 1), bool), np.ones((300, 300), bool)]
    long = np.zeros((300, 300), bool)
    long[0, 0] = True
    long[200:, :] = True  # 80,000 pixels: 320,000 values in one run
    masks.append(long)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        masks.append(rng.random((h, w)) > rng.random())
    masks += [ndimage.gaussian_filter(rng.standard_normal((200, 300)), s) > 0 for s in (1.0, 4.0)]
    return masks


def test_brush_codec_writes_and_reads_what_label_studio_sdk_does():
    """grounded.core.brush_rle: the bytes of label-studio-sdk's mask2rle and the values of its decode_rle,
    on every mask (a 17-bit and a 1-bit run, whole-byte streams, runs over 65,536 values); faster."""
    import time

    from grounded.core.brush_rle import decode_brush, encode_brush

    sdk = ours = 0.0
    for mask in _codec_masks():
        expected = brush.mask2rle(mask.astype(np.uint8) * 255)
        assert encode_brush(mask) == expected
        gc.disable()  # a collection of the test session's heap inside one timing would decide the comparison
        try:
            start = time.perf_counter()
            values = brush.decode_rle(expected)
            sdk += time.perf_counter() - start
            start = time.perf_counter()
            got = decode_brush(expected)
            ours += time.perf_counter() - start
        finally:
            gc.enable()
        np.testing.assert_array_equal(got, values)
        assert got.dtype == np.uint8
    # a stream the SDK's encoder does not write: literal words (a 0 bit), other field sizes
    stream = "".join([f"{6:032b}", f"{7:05b}", "0001", "0010", "0011", "0100"])
    stream += "0" + "01" + "001" + f"{7:08b}" + f"{200:08b}"  # field 1 (3 bits): 2 literal words, 7 and 200
    stream += "1" + "10" + "0011" + f"{9:08b}"  # field 2 (4 bits): a run of 4 nines
    stream += "0" * (8 - len(stream) % 8)
    data = [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]
    np.testing.assert_array_equal(decode_brush(data), brush.decode_rle(data))
    np.testing.assert_array_equal(decode_brush(data), [7, 200, 9, 9, 9, 9])
    print(f"decode_rle {sdk:.3f} s, decode_brush {ours:.3f} s")
    assert ours < sdk / 3


def test_broken_brush_streams_are_value_errors():
    from grounded.core.brush_rle import decode_brush, encode_brush

    good = encode_brush(np.eye(8, dtype=bool))
    with pytest.raises(ValueError, match="ends early"):
        decode_brush(good[: len(good) // 2])
    with pytest.raises(ValueError, match="bytes"):
        decode_brush([300, *good[1:]])
    with pytest.raises(ValueError, match="no pixels"):
        encode_brush(np.zeros((0, 4), bool))
