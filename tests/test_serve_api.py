"""``grounded serve``'s API through FastAPI's test client, on tiny random models: every route, every error
status, session reuse without the image encoder, LRU eviction, the token, the bounded queue."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from fastapi.testclient import TestClient

from grounded.cli import main
from grounded.core.rle import decode_rle
from grounded.serve import ServeConfig, Service, create_app

PROMPT = "cup . plate . spoon"


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(tiny_gdino, tiny_sam):
    return {
        "detector": {"model": str(tiny_gdino), "box_threshold": 0.0, "top_k": 4},
        "segmenter": {"model": str(tiny_sam)},
    }


@pytest.fixture(scope="module")
def service(models):
    return Service(ServeConfig(overrides=models, shared={"device": "cpu"}))


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service))


@pytest.fixture(scope="module")
def coffee_png(image_files):
    return image_files["coffee"].read_bytes()  # a JPEG file, as a user sends it


class EncoderCalls:
    """Counts the SAM image encoder's calls (the vision tower, whatever calls it)."""

    def __init__(self, segmenter) -> None:
        segmenter.warm_up()
        self.model = segmenter._model
        self.original = self.model.get_image_embeddings
        self.count = 0

        def counted(*args, **kwargs):
            self.count += 1
            return self.original(*args, **kwargs)

        self.model.get_image_embeddings = counted

    def close(self) -> None:
        self.model.get_image_embeddings = self.original


@pytest.fixture
def encoder_calls(service):
    calls = EncoderCalls(service.segmenter)
    yield calls
    calls.close()


def _open(client, payload: bytes, name: str = "coffee.jpg"):
    return client.post("/v1/images", files={"image": (name, payload, "image/jpeg")})


# ---------------------------------------------------------------------- segment
def test_segment_returns_the_document_grounded_segment_writes(client, models, image_files, tmp_path):
    out = tmp_path / "cli"
    args = [
        "segment",
        str(image_files["coffee"]),
        "--prompt",
        PROMPT,
        "--out",
        str(out),
        "--device",
        "cpu",
        "-q",
    ]
    args += ["--detector", models["detector"]["model"], "--segmenter", models["segmenter"]["model"]]
    args += ["--box-threshold", "0", "--top-k", "4"]
    assert main(args) == 0
    cli_doc = json.loads((out / "coffee.json").read_text())
    response = client.post(
        "/v1/segment",
        files={"image": ("coffee.jpg", image_files["coffee"].read_bytes(), "image/jpeg")},
        data={"prompt": PROMPT},
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert len(doc["detections"]) == 4
    assert doc == cli_doc  # the same records, masks (RLE), file name and recorded settings
    labels = client.post(
        "/v1/segment",
        files={"image": ("coffee.jpg", image_files["coffee"].read_bytes(), "image/jpeg")},
        data={"prompt": PROMPT, "output": "labels"},
    )
    assert labels.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(labels.content)))
    np.testing.assert_array_equal(got, np.asarray(Image.open(out / "coffee_labels.png")))
    overlay = client.post(
        "/v1/segment",
        files={"image": ("coffee.jpg", image_files["coffee"].read_bytes(), "image/jpeg")},
        data={"prompt": PROMPT, "output": "overlay"},
    )
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB")),
        np.asarray(Image.open(out / "coffee.png").convert("RGB")),
    )


def test_per_request_thresholds_apply_to_that_request_only(client, coffee_png):
    def segment(**fields):
        files = {"image": ("coffee.jpg", coffee_png, "image/jpeg")}
        response = client.post("/v1/segment", files=files, data={"prompt": PROMPT, **fields})
        assert response.status_code == 200, response.text
        return response.json()

    everything = segment()
    scores = sorted(d["score"] for d in everything["detections"])
    cut = (scores[0] + scores[-1]) / 2
    fewer = segment(box_threshold=str(cut), top_k="2")
    assert 0 < len(fewer["detections"]) <= 2
    assert all(d["score"] > cut for d in fewer["detections"])
    assert fewer["grounded"]["pipeline"]["nodes"]["detector"]["params"]["box_threshold"] == cut
    assert segment() == everything  # the server's defaults are back


# ---------------------------------------------------------------------- sessions
def test_a_session_encodes_once_and_clicks_only_decode(client, service, coffee_png, encoder_calls):
    service.sessions._items.clear()
    service.segmenter._cache.clear()  # the adapter's own cache holds coffee from an earlier test
    first = _open(client, coffee_png)
    assert first.status_code == 201 and first.json()["created"] is True
    image_id = first.json()["image_id"]
    assert image_id == service.load(coffee_png, "coffee.jpg").key  # the content hash
    assert encoder_calls.count == 1
    again = _open(client, coffee_png, "another-name.jpg")
    assert again.status_code == 200 and again.json() == {
        **first.json(),
        "created": False,
        "file_name": "another-name",
    }
    for points in ([[300, 200]], [[300, 200], [100, 50]]):
        answer = client.post(f"/v1/images/{image_id}/masks", json={"points": points})
        assert answer.status_code == 200, answer.text
    detected = client.post(f"/v1/images/{image_id}/detect", json={"prompt": PROMPT})
    assert detected.status_code == 200
    assert encoder_calls.count == 1  # two clicks and a detection later: the encoder ran once
    segmented = client.post(
        "/v1/segment", files={"image": ("coffee.jpg", coffee_png, "image/jpeg")}, data={"prompt": PROMPT}
    ).json()
    assert detected.json()["detections"] == segmented["detections"]


def test_click_levels_are_the_granularity_levels(client, service, coffee_png):
    image_id = _open(client, coffee_png).json()["image_id"]
    answer = client.post(f"/v1/images/{image_id}/masks", json={"points": [[300, 200]]}).json()
    (expected,) = service.segmenter.predict_levels(
        service.sessions.get(image_id).image, points=torch.tensor([[300.0, 200.0]])
    )
    assert [lv["level"] for lv in answer["levels"]] == list(expected.levels)
    for lv, mask, area in zip(answer["levels"], expected.masks, expected.areas, strict=True):
        np.testing.assert_array_equal(decode_rle(lv["segmentation"]), mask.numpy())
        assert lv["area"] == area
        ys, xs = np.nonzero(mask.numpy())
        assert lv["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    assert answer["best"] == int(np.argmax([lv["score"] for lv in answer["levels"]]))


def test_negative_points_box_and_mask_input_reach_the_decoder(client, service, coffee_png):
    image_id = _open(client, coffee_png).json()["image_id"]
    session = service.sessions.get(image_id)
    first = client.post(f"/v1/images/{image_id}/masks", json={"points": [[300, 200]]}).json()
    logits_id = first["levels"][first["best"]]["logits_id"]
    body = {
        "points": [[300, 200], [120, 80]],
        "labels": [1, 0],
        "box": [50, 40, 500, 380],
        "mask_input": logits_id,
    }
    refined = client.post(f"/v1/images/{image_id}/masks", json=body)
    assert refined.status_code == 200, refined.text
    masks, _, _ = service.segmenter.decode_prompt(
        session.embedding,
        points=torch.tensor(body["points"], dtype=torch.float32),
        labels=torch.tensor([1, 0]),
        box=torch.tensor(body["box"], dtype=torch.float32),
        mask_input=session.logits.get(logits_id),
    )
    got = {decode_rle(lv["segmentation"]).tobytes() for lv in refined.json()["levels"]}
    assert got <= {m.numpy().tobytes() for m in masks}
    plain = client.post(f"/v1/images/{image_id}/masks", json={**body, "mask_input": None}).json()
    assert [lv["segmentation"] for lv in plain["levels"]] != [
        lv["segmentation"] for lv in refined.json()["levels"]
    ]
    one = client.post(f"/v1/images/{image_id}/masks", json={"box": [50, 40, 500, 380], "multimask": False})
    assert len(one.json()["levels"]) == 1


def test_sessions_are_evicted_least_recently_used_by_memory(models, coffee_png, astronaut):
    probe = Service(ServeConfig(overrides=models, shared={"device": "cpu"}))
    session, _ = probe.open_session(probe.load(coffee_png, "coffee.jpg"))
    service = Service(ServeConfig(overrides=models, shared={"device": "cpu"}, cache_bytes=2 * session.nbytes))
    client = TestClient(create_app(service))
    ids = [_open(client, payload).json()["image_id"] for payload in (coffee_png, _png(astronaut))]
    assert (
        client.post(f"/v1/images/{ids[0]}/masks", json={"points": [[5, 5]]}).status_code == 200
    )  # A used last
    third = _open(client, _png(np.ascontiguousarray(astronaut[::-1]))).json()["image_id"]
    assert client.post(f"/v1/images/{ids[1]}/masks", json={"points": [[5, 5]]}).status_code == 404
    for kept in (ids[0], third):
        assert client.post(f"/v1/images/{kept}/masks", json={"points": [[5, 5]]}).status_code == 200
    assert service.sessions.evictions == 1 and service.sessions.bytes <= 2 * session.nbytes
    assert "grounded_session_cache_evictions 1.0" in client.get("/metrics").text


# ---------------------------------------------------------------------- render
def test_render_gives_coco_a_label_image_and_the_overlay(client, coffee_png):
    from pycocotools.coco import COCO

    image_id = _open(client, coffee_png).json()["image_id"]
    records = client.post(f"/v1/images/{image_id}/detect", json={"prompt": PROMPT}).json()["detections"]
    records[0]["category"] = "mug"  # renamed on the page
    del records[1]  # deleted on the page
    coco_doc = client.post(
        f"/v1/images/{image_id}/render", json={"detections": records, "format": "coco"}
    ).json()
    coco = COCO()
    coco.dataset = coco_doc
    coco.createIndex()
    assert coco.loadCats(coco.getCatIds(catNms=["mug"]))[0]["name"] == "mug"
    assert len(coco.getAnnIds()) == len(records)
    for ann, record in zip(coco.loadAnns(coco.getAnnIds()), records, strict=True):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), decode_rle(record["segmentation"]))
    png = client.post(f"/v1/images/{image_id}/render", json={"detections": records, "format": "labels"})
    labels = np.asarray(Image.open(io.BytesIO(png.content)))
    assert labels.shape == (400, 600) and set(np.unique(labels)) <= set(range(len(records) + 1))
    overlay = client.post(f"/v1/images/{image_id}/render", json={"detections": records, "format": "overlay"})
    assert Image.open(io.BytesIO(overlay.content)).size == (600, 400)


# ---------------------------------------------------------------------- errors
def test_every_error_is_one_json_line_with_its_status(client, coffee_png):
    image_id = _open(client, coffee_png).json()["image_id"]
    files = {"image": ("x.jpg", coffee_png, "image/jpeg")}
    cases = [
        (
            client.post(
                "/v1/segment", files={"image": ("x.png", b"not an image", "image/png")}, data={"prompt": "a"}
            ),
            400,
        ),
        (
            client.post(
                "/v1/segment", files={"image": ("x.png", coffee_png[:500], "image/png")}, data={"prompt": "a"}
            ),
            400,
        ),
        (client.post("/v1/segment", files=files, data={"prompt": "  "}), 400),
        (client.post("/v1/segment", files=files, data={"prompt": "a" * 3000}), 400),
        (client.post("/v1/segment", files=files, data={"prompt": "a", "box_threshold": "2"}), 400),
        (client.post("/v1/segment", files=files, data={"prompt": "a", "box_threshold": "nan"}), 400),
        (client.post("/v1/segment", files=files, data={"prompt": "a", "granularity": "huge"}), 400),
        (client.post("/v1/segment", files=files, data={"prompt": "a", "output": "gif"}), 400),
        (client.post("/v1/segment", data={"prompt": "a"}), 400),
        (client.post("/v1/images/0123/masks", json={"points": [[1, 1]]}), 404),
        (client.post("/v1/images/0123/detect", json={"prompt": "a"}), 404),
        (client.post(f"/v1/images/{image_id}/masks", json={"points": [[601, 1]]}), 400),
        (client.post(f"/v1/images/{image_id}/masks", json={"points": [[1, 1]], "labels": [2]}), 400),
        (client.post(f"/v1/images/{image_id}/masks", json={"box": [10, 10, 5, 50]}), 400),
        (client.post(f"/v1/images/{image_id}/masks", json={}), 400),
        (client.post(f"/v1/images/{image_id}/masks", json={"points": [[1, 1]] * 65}), 400),
        (client.post(f"/v1/images/{image_id}/masks", json={"points": [[1, 1]], "mask_input": "zz"}), 404),
        (
            client.post(
                f"/v1/images/{image_id}/masks",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            400,
        ),
        (client.post(f"/v1/images/{image_id}/render", json={"detections": [{"bbox": [1]}]}), 400),
        (client.post("/v1/edit", data={"mode": "remove", "image_id": image_id, "select": "cup"}), 501),
        (client.get("/v1/nothing"), 404),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        body = response.json()
        assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    assert client.get("/health").json()["status"] == "ok"  # still serving


def test_uploads_over_the_size_or_pixel_limit_are_413(models, coffee_png):
    service = Service(ServeConfig(overrides=models, max_upload_bytes=50_000, max_pixels=200 * 200))
    client = TestClient(create_app(service))
    big = client.post("/v1/images", files={"image": ("big.jpg", coffee_png + b"\0" * 60_000, "image/jpeg")})
    assert big.status_code == 413 and "larger than" in big.json()["error"]

    def streamed():  # no Content-Length: refused as the bytes arrive
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(2000):
            yield b"0" * 1000
        yield b"\r\n--x--\r\n"

    chunked = client.post(
        "/v1/images", content=streamed(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert chunked.status_code == 413 and "larger than" in chunked.json()["error"]
    # a decompression bomb: a tiny PNG file whose header says 3000 x 3000 pixels, refused before decoding
    bomb = _png(np.zeros((3000, 3000, 3), np.uint8))
    assert len(bomb) < 50_000
    response = client.post("/v1/images", files={"image": ("bomb.png", bomb, "image/png")})
    assert response.status_code == 413 and "too large" in response.json()["error"]


def test_an_unexpected_failure_is_a_500_line_and_the_server_goes_on(models, coffee_png, monkeypatch):
    service = Service(ServeConfig(overrides=models))
    client = TestClient(create_app(service), raise_server_exceptions=False)

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nwith a second line")

    monkeypatch.setattr(service, "segment", broken)
    files = {"image": ("x.jpg", coffee_png, "image/jpeg")}
    response = client.post("/v1/segment", files=files, data={"prompt": "cup"})
    assert response.status_code == 500 and response.json() == {
        "error": "internal error (RuntimeError); the server keeps serving"
    }
    monkeypatch.undo()
    assert client.post("/v1/segment", files=files, data={"prompt": "cup"}).status_code == 200


def test_the_token_guards_the_api_and_metrics_not_health_or_the_page(models, coffee_png):
    client = TestClient(create_app(Service(ServeConfig(overrides=models, token="s3cret"))))
    files = {"image": ("x.jpg", coffee_png, "image/jpeg")}
    assert client.get("/health").json()["auth"] is True
    assert client.get("/").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        assert client.post("/v1/images", files=files, headers=headers).status_code == 401
        assert client.get("/metrics", headers=headers).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/images", files=files, headers=good).status_code in (200, 201)
    assert client.get("/metrics", headers=good).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(models, coffee_png):
    service = Service(ServeConfig(overrides=models, queue_size=0))
    client = TestClient(create_app(service))
    files = {"image": ("x.jpg", coffee_png, "image/jpeg")}
    entered, release = threading.Event(), threading.Event()

    def hold():
        with service.gates["segmenter"].hold():
            entered.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(10)
        busy = client.post("/v1/images", files=files)
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
        assert "busy" in busy.json()["error"]
        assert 'grounded_model_busy{model="segmenter"} 1.0' in client.get("/metrics").text
    finally:
        release.set()
        holder.join()
    assert client.post("/v1/images", files=files).status_code in (200, 201)


def test_metrics_count_requests_latency_queues_and_cache_hits(models, coffee_png):
    client = TestClient(create_app(Service(ServeConfig(overrides=models))))
    image_id = _open(client, coffee_png).json()["image_id"]
    for _ in range(3):
        client.post(f"/v1/images/{image_id}/masks", json={"points": [[10, 10]]})
    client.post("/v1/images/unknown/masks", json={"points": [[10, 10]]})
    text = client.get("/metrics").text
    assert (
        'grounded_requests_total{method="POST",route="/v1/images/{image_id}/masks",status="200"} 3.0' in text
    )
    assert (
        'grounded_requests_total{method="POST",route="/v1/images/{image_id}/masks",status="404"} 1.0' in text
    )
    assert 'grounded_request_seconds_count{route="/v1/images/{image_id}/masks"} 4.0' in text
    assert 'grounded_queue_length{model="detector"} 0.0' in text
    assert "grounded_session_cache_hits 3.0" in text and "grounded_session_cache_misses 2.0" in text


def test_openapi_documents_every_route(client):
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {
        "/v1/segment",
        "/v1/images",
        "/v1/images/{image_id}/masks",
        "/v1/images/{image_id}/detect",
        "/v1/images/{image_id}/render",
        "/v1/edit",
        "/health",
        "/metrics",
    } <= paths
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert client.get("/static/app.js").status_code == 200


# ---------------------------------------------------------------------- edit
def test_edit_inpaints_inside_the_selection_only(models, coffee_png, models_dir):
    from grounded.models.testing import make_sd_inpainting

    sd = make_sd_inpainting(models_dir / "serve-sd", seed=0)
    config = ServeConfig(
        overrides=models, inpainter=str(sd), inpainter_params={"steps": 2}, shared={"device": "cpu"}
    )
    client = TestClient(create_app(Service(config)))
    assert client.get("/health").json()["edit"] is True
    image_id = _open(client, coffee_png).json()["image_id"]
    mask = np.zeros((400, 600), np.uint8)
    mask[150:250, 250:400] = 255
    response = client.post(
        "/v1/edit",
        data={"image_id": image_id, "mode": "replace", "text": "a red apple"},
        files={"mask": ("mask.png", _png(np.repeat(mask[..., None], 3, 2)), "image/png")},
    )
    assert response.status_code == 200, response.text
    edited = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    original = np.asarray(Image.open(io.BytesIO(coffee_png)).convert("RGB"))
    far = np.ones((400, 600), bool)
    far[150 - 20 : 250 + 20, 250 - 20 : 400 + 20] = False  # the selection, dilated and feathered
    np.testing.assert_array_equal(edited[far], original[far])
    assert np.abs(edited[150:250, 250:400].astype(int) - original[150:250, 250:400]).mean() > 1
    bad = client.post("/v1/edit", data={"image_id": image_id, "mode": "replace", "select": "cup"})
    assert bad.status_code == 400 and "needs a text" in bad.json()["error"]
    wrong = client.post(
        "/v1/edit",
        data={"image_id": image_id, "mode": "remove"},
        files={"mask": ("m.png", _png(np.zeros((10, 10, 3), np.uint8)), "image/png")},
    )
    assert wrong.status_code == 400 and "600x400" in wrong.json()["error"]


# ---------------------------------------------------------------------- the command
def test_serve_command_refuses_bad_options_in_one_line(capsys):
    assert main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == "grounded: error: --port must lie in 1..65535"
    assert main(["serve", "--port", "8000", "--queue", "-1", "--random-weights"]) == 2
    assert "queue_size" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["sam", "sam_hq", "sam2"])
def test_decode_prompt_agrees_with_predict_levels_for_every_family(
    family, tiny_sam, tiny_sam_hq, tiny_sam2, astronaut
):
    from grounded.adapters import SAM, SAM2, SAMHQ
    from grounded.core.images import load_image

    cls, path = {"sam": (SAM, tiny_sam), "sam_hq": (SAMHQ, tiny_sam_hq), "sam2": (SAM2, tiny_sam2)}[family]
    segmenter = cls(model=str(path), device="cpu")
    image = load_image(astronaut)
    (embedding,) = segmenter.encode([image])
    masks, iou, low_res = segmenter.decode_prompt(embedding, points=torch.tensor([[200.0, 150.0]]))
    (levels,) = segmenter.predict_levels(image, points=torch.tensor([[200.0, 150.0]]))
    assert masks.shape == (3, 512, 512) and iou.shape == (3,) and low_res.shape[0] == 3
    assert {m.numpy().tobytes() for m in levels.masks} <= {m.numpy().tobytes() for m in masks}
    refined, _, _ = segmenter.decode_prompt(
        embedding,
        points=torch.tensor([[200.0, 150.0], [400.0, 400.0]]),
        labels=torch.tensor([1, 0]),
        box=torch.tensor([100.0, 50.0, 350.0, 300.0]),
        mask_input=low_res[int(iou.argmax())],
    )
    assert refined.shape == masks.shape and not torch.equal(refined, masks)
