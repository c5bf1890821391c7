"""``grounded serve --engine ray``: the same app as a Ray Serve deployment on a local Ray instance answers the
same JSON as the plain server (slow: Ray Serve takes ~40 s to start on 2 cores)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'ray[serve]')")

import httpx
from fastapi.testclient import TestClient

from grounded.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_serve_answers_what_the_plain_server_answers(tiny_gdino, tiny_sam, image_files):
    import ray
    from ray import serve

    from grounded.serve.ray_engine import deployment

    config = ServeConfig(
        overrides={
            "detector": {"model": str(tiny_gdino), "box_threshold": 0.0, "top_k": 4},
            "segmenter": {"model": str(tiny_sam)},
        },
        shared={"device": "cpu"},
    )
    payload = image_files["coffee"].read_bytes()
    files = {"image": ("coffee.jpg", payload, "image/jpeg")}
    plain = TestClient(create_app(config))
    expected = plain.post("/v1/segment", files=files, data={"prompt": "cup . plate"}).json()
    image_id = plain.post("/v1/images", files=files).json()["image_id"]
    click = plain.post(f"/v1/images/{image_id}/masks", json={"points": [[300, 200]]}).json()

    port = _free_port()
    started = not ray.is_initialized()
    if started:
        env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(config, replicas=1), name="grounded", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        got = httpx.post(f"{url}/v1/segment", files=files, data={"prompt": "cup . plate"}, timeout=120)
        assert got.status_code == 200 and got.json() == expected
        opened = httpx.post(f"{url}/v1/images", files=files, timeout=120).json()
        assert opened["image_id"] == image_id
        answer = httpx.post(
            f"{url}/v1/images/{image_id}/masks", json={"points": [[300, 200]]}, timeout=60
        ).json()
        assert [lv["segmentation"] for lv in answer["levels"]] == [
            lv["segmentation"] for lv in click["levels"]
        ]
        assert httpx.post(f"{url}/v1/images/nope/masks", json={"points": [[1, 1]]}).json()["error"]
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
