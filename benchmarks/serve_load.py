"""Issue 16 benchmark: ``grounded serve`` on loopback: click latency on an encoded image (decoder only), a new
prompt on an encoded image (detector only), then N concurrent clients for a bounded time.

Reports requests/s, p50 / p95 latency of ``segment`` and of a click, the status codes (only 503 is allowed when
the queue is full), the server's peak memory (VmHWM), and checks the server is alive and answers a click the
same way after the load. Models: ``--size real`` (default) builds real-size configs with random weights
(Grounding DINO Swin-T + SAM ViT-B, nothing downloaded), ``--size tiny`` the test models.

Run: ``.venv/bin/python benchmarks/serve_load.py [--size tiny] [--clients 4] [--seconds 30] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _models(size: str, folder: Path) -> tuple[Path, Path]:
    from grounded.models.testing import make_grounding_dino, make_sam

    det, seg = folder / f"gdino-{size}", folder / f"sam-{size}"
    if not (det / "config.json").is_file():
        make_grounding_dino(det, size="tiny" if size == "tiny" else "swin-t")
    if not (seg / "config.json").is_file():
        make_sam(seg, size="tiny" if size == "tiny" else "vit-b")
    return det, seg


def _jpeg(name: str) -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clicks", type=int, default=30, help="sequential clicks timed before the load")
    parser.add_argument("--queue", type=int, default=4, help="the server's --queue")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "grounded-serve-bench")
    args = parser.parse_args()

    det, seg = _models(args.size, args.models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "grounded", "serve", "--detector", str(det), "--segmenter", str(seg)]
    command += ["--box-threshold", "0", "--top-k", "10", "--device", args.device, "--port", str(port)]
    command += ["--queue", str(args.queue)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=600)
    try:
        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        load_s = time.perf_counter() - start
        coffee, astronaut = _jpeg("coffee"), _jpeg("astronaut")
        files = {"image": ("coffee.jpg", coffee, "image/jpeg")}

        t = time.perf_counter()
        first = client.post("/v1/segment", files=files, data={"prompt": "cup . plate"})
        segment_first = time.perf_counter() - t
        assert first.status_code == 200, first.text
        t = time.perf_counter()
        image_id = client.post("/v1/images", files={"image": ("a.jpg", astronaut, "image/jpeg")}).json()[
            "image_id"
        ]
        encode_s = time.perf_counter() - t
        clicks = []
        for k in range(args.clicks):
            body = {"points": [[100 + 10 * k, 200 + 5 * k]]}
            t = time.perf_counter()
            answer = client.post(f"/v1/images/{image_id}/masks", json=body)
            clicks.append(time.perf_counter() - t)
            assert answer.status_code == 200, answer.text
        reference = client.post(f"/v1/images/{image_id}/masks", json={"points": [[256, 256]]}).json()
        detects = []
        for prompt in ("person . flag", "helmet . glove", "rocket"):
            t = time.perf_counter()
            assert client.post(f"/v1/images/{image_id}/detect", json={"prompt": prompt}).status_code == 200
            detects.append(time.perf_counter() - t)

        # the load: each client mixes segment (1 in 5) and clicks, for a bounded time
        results: list[tuple[str, int, float]] = []
        lock = threading.Lock()
        stop = time.perf_counter() + args.seconds

        def worker(index: int) -> None:
            with httpx.Client(base_url=url, timeout=600) as own:
                k = 0
                while time.perf_counter() < stop:
                    kind = "segment" if (k + index) % 5 == 0 else "click"
                    t0 = time.perf_counter()
                    if kind == "segment":
                        r = own.post("/v1/segment", files=files, data={"prompt": "cup . spoon"})
                    else:
                        r = own.post(f"/v1/images/{image_id}/masks", json={"points": [[50 + k % 400, 300]]})
                    with lock:
                        results.append((kind, r.status_code, time.perf_counter() - t0))
                    k += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        alive = client.get("/health").json()["status"] == "ok"
        after = client.post(f"/v1/images/{image_id}/masks", json={"points": [[256, 256]]}).json()
        same = [lv["segmentation"] for lv in after["levels"]] == [
            lv["segmentation"] for lv in reference["levels"]
        ]
        peak = _peak_mib(server.pid)
    finally:
        server.terminate()
        server.wait(30)

    statuses = Counter(code for _, code, _ in results)
    ok = {kind: [s for k, c, s in results if k == kind and c == 200] for kind in ("segment", "click")}
    bad = {c: n for c, n in statuses.items() if c not in (200, 503)}
    rows: list[tuple[str, Any]] = [
        ("models", f"{args.size} ({det.name} + {seg.name}), device {args.device}, torch threads default"),
        ("server start (models loaded)", f"{load_s:.1f} s"),
        ("first /v1/segment, coffee 600x400", f"{segment_first:.2f} s"),
        ("/v1/images (encode astronaut 512x512)", f"{encode_s:.2f} s"),
        (
            f"click, sequential x{args.clicks}: p50 / p95",
            f"{_pct(clicks, 0.5):.3f} / {_pct(clicks, 0.95):.3f} s",
        ),
        ("new prompt on the encoded image (detect): median", f"{statistics.median(detects):.2f} s"),
        (f"load: {args.clients} clients x {wall:.0f} s", f"{len(results) / wall:.2f} requests/s"),
        (
            "load: segment p50 / p95 (200s)",
            f"{_pct(ok['segment'], 0.5):.2f} / {_pct(ok['segment'], 0.95):.2f} s",
        ),
        ("load: click p50 / p95 (200s)", f"{_pct(ok['click'], 0.5):.3f} / {_pct(ok['click'], 0.95):.3f} s"),
        ("load: status codes", ", ".join(f"{c}: {n}" for c, n in sorted(statuses.items()))),
        ("errors other than 503", sum(bad.values())),
        ("server peak memory (VmHWM)", f"{peak:.0f} MiB"),
        ("alive and the same click answer after the load", alive and same),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0 if alive and same and not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
