"""Shared fixtures: tiny random models saved in the on-disk format users load, and real skimage images."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from grounded.models.testing import make_grounding_dino, make_sam


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_gdino(models_dir) -> Path:
    return make_grounding_dino(models_dir / "grounding-dino", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sam(models_dir) -> Path:
    return make_sam(models_dir / "sam", size="tiny", hq=False, seed=0)


@pytest.fixture(scope="session")
def tiny_sd(models_dir) -> Path:
    from grounded.models.testing import make_sd_inpainting

    return make_sd_inpainting(models_dir / "sd-inpainting", seed=0)


@pytest.fixture(scope="session")
def tiny_sam_hq(models_dir) -> Path:
    return make_sam(models_dir / "sam-hq", size="tiny", hq=True, seed=0)


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """Real photos from skimage.data as files, plus a corrupt one."""
    folder = tmp_path_factory.mktemp("images")
    files = {}
    for name, ext in (("astronaut", "png"), ("coffee", "jpg"), ("chelsea", "png")):
        path = folder / f"{name}.{ext}"
        Image.fromarray(getattr(data, name)()).save(path)
        files[name] = path
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(files["coffee"].read_bytes()[:2000])
    files["corrupt"] = corrupt
    return files


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="session")
def tiny_sam2(models_dir) -> Path:
    from grounded.models.testing import make_sam2

    return make_sam2(models_dir / "sam2", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_mm_gdino(models_dir) -> Path:
    return make_grounding_dino(models_dir / "mm-grounding-dino", size="tiny", seed=0, mm=True)


@pytest.fixture(scope="session")
def tiny_owlv2(models_dir) -> Path:
    from grounded.models.testing import make_owlv2

    return make_owlv2(models_dir / "owlv2", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_sam3(models_dir) -> Path:
    from grounded.models.testing import make_sam3

    return make_sam3(models_dir / "sam3", size="tiny", seed=0)


@pytest.fixture(scope="session")
def server(tmp_path_factory, models_dir):
    """``grounded serve`` as a user starts it from a clean checkout without real models (--random-weights),
    with a tiny inpainter for the edit, on a free loopback port; yields its URL. One process for the session:
    the Chromium and the Firefox page tests share it (each opens its own image sessions)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from grounded.models.testing import make_sd_inpainting

    sd = make_sd_inpainting(models_dir / "browser-sd", seed=0)
    cache = tmp_path_factory.mktemp("serve-cache")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "GROUNDED_CACHE": str(cache), "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    log = (cache / "server.log").open("w")
    command = [sys.executable, "-m", "grounded", "serve", "--random-weights", "--device", "cpu"]
    command += ["--inpainter", str(sd), "--edit-steps", "2"]
    proc = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {(cache / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not answer /health within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
