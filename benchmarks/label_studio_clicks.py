"""Smart-click latency of the Label Studio backend: the first click on an image (fetch + SAM encode + decode)
against later clicks and a box on it (decoder only), through the real FastAPI app.

SAM ViT-B architecture with random weights at trained scales (``healthy_weights``; nothing downloaded),
one 1024x768 skimage photo from local files storage. Prints one Markdown table.

    python benchmarks/label_studio_clicks.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="later clicks timed (median)")
    args = parser.parse_args()

    import torch
    from fastapi.testclient import TestClient
    from PIL import Image
    from skimage import data

    from grounded.integrations.annotator import Annotator
    from grounded.integrations.label_studio import LabelStudioBackend, create_app
    from grounded.models.testing import make_sam
    from grounded.tasks.bench import healthy_weights

    root = Path(tempfile.mkdtemp(prefix="ls-bench-"))
    sam_dir = make_sam(root / "sam-vit-b", size="vit-b", seed=0)
    from transformers import SamModel

    model = SamModel.from_pretrained(sam_dir)
    healthy_weights(model, seed=0)
    model.save_pretrained(sam_dir)
    Image.fromarray(data.astronaut()).resize((1024, 768)).save(root / "photo.png")
    os.environ["LOCAL_FILES_DOCUMENT_ROOT"] = str(root)

    config = (
        '<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image"><Label value="Thing"/>'
        '</BrushLabels><KeyPointLabels name="click" toName="image" smart="true"><Label value="Thing"/>'
        '</KeyPointLabels><RectangleLabels name="drag" toName="image" smart="true"><Label value="Thing"/>'
        "</RectangleLabels></View>"
    )

    def body(x: float, y: float, box: bool = False) -> dict:
        value = {"x": x, "y": y, "width": 0.5, ("rectanglelabels" if box else "keypointlabels"): ["Thing"]}
        if box:
            value.update(width=30.0, height=40.0)
        region = {
            "from_name": "drag" if box else "click",
            "to_name": "image",
            "type": "rectanglelabels" if box else "keypointlabels",
            "is_positive": True,
            "original_width": 1024,
            "original_height": 768,
            "value": value,
        }
        task = {"id": 1, "data": {"image": "/data/local-files/?d=photo.png"}}
        return {
            "tasks": [task],
            "label_config": config,
            "project": "1.0",
            "params": {"context": {"result": [region]}},
        }

    annotator = Annotator(segmenter=str(sam_dir), device="cpu")
    client = TestClient(create_app(LabelStudioBackend(annotator)))
    annotator.segmenter.warm_up()  # model loading is not part of a click
    torch.set_grad_enabled(False)

    def timed(request: dict) -> float:
        start = time.perf_counter()
        answer = client.post("/predict", json=request)
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.text)["results"][0]["result"], "empty mask"
        return time.perf_counter() - start

    first = timed(body(50.0, 30.0))
    later = [timed(body(40.0 + 5 * k, 60.0)) for k in range(args.repeats)]
    boxes = [timed(body(20.0 + 5 * k, 20.0, box=True)) for k in range(args.repeats)]
    rows = [
        ("first click (fetch + encode + decode + brush RLE)", first),
        ("later click, same image (median)", statistics.median(later)),
        ("box, same image (median)", statistics.median(boxes)),
    ]
    print(f"| SAM ViT-B, 1024x768, CPU ({torch.get_num_threads()} threads) | seconds | x first |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / first:.3f} |")


if __name__ == "__main__":
    main()
