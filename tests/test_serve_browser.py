"""The web page of ``grounded serve`` in a real headless Chromium (Debian's package, driven by Playwright),
against a real server process started on a free loopback port with the tiny random-weight demo models: upload,
prompt, masks on the canvas, toggle / rename / delete, clicks and a box to refine, granularity, downloads."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)

import httpx  # noqa: E402

from grounded.core.rle import decode_rle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: where to keep the screenshot besides the test's temporary folder (README's picture is made this way)
SCREENSHOT_ENV = "GROUNDED_SERVE_SCREENSHOT"


def _chromium() -> str | None:
    for candidate in (
        shutil.which("chromium"),
        "/usr/lib/chromium/chromium",
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    path = _chromium()
    if path is None:
        pytest.skip("no chromium on this machine: apt-get install -y chromium (.ci/run does it as root)")
    with playwright.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        except Exception as exc:  # the browser is there but cannot start here
            pytest.skip(f"chromium at {path} does not start: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


def _alpha(page) -> np.ndarray:
    """The overlay canvas's alpha channel, ``(H, W)`` uint8."""
    encoded = page.evaluate(
        """() => {
        const c = document.getElementById('overlay-canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const a = new Uint8Array(c.width * c.height);
        for (let i = 0; i < a.length; i++) a[i] = px[4 * i + 3];
        let s = ''; for (let i = 0; i < a.length; i += 8192) s += String.fromCharCode.apply(null, a.subarray(i, i + 8192));
        return [c.height, c.width, btoa(s)];
    }"""
    )
    height, width, data = encoded
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width)


def _dets(page) -> list[dict]:
    return page.evaluate(
        "() => window.groundedState.dets.map(d => ({category: d.category, visible: d.visible, "
        "segmentation: d.segmentation, level: d.level, levels: d.levels, prompt: d.prompt, source: d.source}))"
    )


def _to_screen(page, x: float, y: float) -> tuple[float, float]:
    box = page.locator("#overlay-canvas").bounding_box()
    width, height = page.evaluate("() => [window.groundedState.width, window.groundedState.height]")
    return box["x"] + (x + 0.5) * box["width"] / width, box["y"] + (y + 0.5) * box["height"] / height


def test_the_page_segments_refines_and_downloads(browser, server, image_files, tmp_path):
    from pycocotools.coco import COCO

    page = browser.new_page(viewport={"width": 1400, "height": 820}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert "RANDOM-weight" in page.text_content("#note") and page.is_visible("#note")
    assert page.is_visible("#edit-group")  # an inpainter is configured

    # upload, then a prompt: the masks appear on the canvas where the RLE says
    page.set_input_files("#file", str(image_files["coffee"]))
    page.wait_for_function("window.groundedState.imageId !== null")
    image_id = page.evaluate("window.groundedState.imageId")
    assert _alpha(page).max() == 0
    page.fill("#prompt", "cup . plate")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".det-item")
    dets = _dets(page)
    assert len(dets) == page.locator(".det-item").count() == 5  # the demo models keep the top 5
    masks = [decode_rle(d["segmentation"]) for d in dets]
    alpha = _alpha(page)
    assert alpha.shape == (400, 600)
    union = np.any(masks, axis=0)
    assert (alpha[union] > 0).all()
    api = httpx.post(
        f"{server}/v1/images/{image_id}/detect", json={"prompt": "cup . plate"}, timeout=60
    ).json()
    assert [d["segmentation"] for d in dets] == [r["segmentation"] for r in api["detections"]]

    # toggle one off: its own pixels (covered by no other mask) clear; rename one; delete one
    only_first = masks[0] & ~np.any(masks[1:], axis=0)
    page.locator(".det-item .det-visible").nth(0).uncheck()
    if only_first.any():  # other detections' box outlines and labels may cross it
        assert (_alpha(page)[only_first] == 0).mean() > 0.9
    page.locator(".det-item .det-name").nth(1).fill("saucer")
    page.locator(".det-item .det-name").nth(1).press("Enter")
    page.locator(".det-item .det-delete").nth(4).click()
    assert page.locator(".det-item").count() == 4
    assert [d["category"] for d in _dets(page)][1] == "saucer"

    # a click starts a new object: the page shows what the API answers for that point
    page.keyboard.press("n")
    page.mouse.click(*_to_screen(page, 300, 200))
    page.wait_for_function("window.groundedState.dets.length === 5 && window.groundedState.dets[4].levels")
    clicked = _dets(page)[4]
    answer = httpx.post(
        f"{server}/v1/images/{image_id}/masks", json={"points": [[300, 200]]}, timeout=60
    ).json()
    assert (
        clicked["levels"][clicked["level"]]["segmentation"]
        == answer["levels"][answer["best"]]["segmentation"]
    )
    assert clicked["segmentation"] == answer["levels"][answer["best"]]["segmentation"]
    before = _alpha(page)

    # a negative point (Shift+click) refines the same object, with the earlier answer's logits as input
    page.keyboard.down("Shift")
    page.mouse.click(*_to_screen(page, 120, 80))
    page.keyboard.up("Shift")
    page.wait_for_function(
        "window.groundedState.dets[4].prompt.points.length === 2 && !window.groundedState.busy"
    )
    page.wait_for_function(
        "(old) => window.groundedState.dets[4].levels[0].logits_id !== old",
        arg=clicked["levels"][0]["logits_id"],
    )
    refined = _dets(page)[4]
    assert refined["prompt"]["labels"] == [1, 0]
    assert refined["segmentation"] != clicked["segmentation"]
    assert not np.array_equal(_alpha(page), before)  # the mask on the canvas changed

    # granularity: "[" goes to the finer level, the slider follows
    levels = refined["levels"]
    if len(levels) > 1:
        page.keyboard.press("[")
        page.wait_for_function(
            "(k) => window.groundedState.dets[4].level === k", arg=max(0, refined["level"] - 1)
        )
        now = _dets(page)[4]
        assert now["segmentation"] == levels[now["level"]]["segmentation"]
        assert page.input_value("#level") == str(now["level"])

    # drag a box in box mode: one more object
    page.keyboard.press("b")
    page.keyboard.press("n")
    page.mouse.move(*_to_screen(page, 380, 250))
    page.mouse.down()
    page.mouse.move(*_to_screen(page, 450, 320), steps=4)
    page.mouse.move(*_to_screen(page, 520, 390), steps=4)
    page.mouse.up()
    page.wait_for_function("window.groundedState.dets.length === 6 && window.groundedState.dets[5].levels")
    assert _dets(page)[5]["prompt"]["box"] == [380, 250, 520, 390]

    # downloads: the COCO file holds what is shown (hidden and deleted ones left out), as pycocotools reads it
    with page.expect_download() as info:
        page.click("#dl-coco")
    path = tmp_path / "coco.json"
    info.value.save_as(path)
    shown = [d for d in _dets(page) if d["visible"]]
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == len(shown) == 5
    assert "saucer" in {c["name"] for c in coco.loadCats(coco.getCatIds())}
    for ann, det in zip(anns, shown, strict=True):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), decode_rle(det["segmentation"]))
    with page.expect_download() as info:
        page.click("#dl-labels")
    info.value.save_as(tmp_path / "labels.png")
    labels = np.asarray(Image.open(tmp_path / "labels.png"))
    assert labels.shape == (400, 600) and labels.max() >= 1
    with page.expect_download() as info:
        page.click("#dl-overlay")
    info.value.save_as(tmp_path / "overlay.png")
    assert Image.open(tmp_path / "overlay.png").size == (600, 400)

    # edit: replace what the selected detection covers; the edited image appears below, the image's size
    page.locator(".det-item").nth(1).click(position={"x": 3, "y": 3})
    assert page.evaluate("window.groundedState.selected") == 1
    page.fill("#edit-text", "a red apple")
    page.click("#replace-btn")
    page.wait_for_selector("#edited:not([hidden])")
    page.wait_for_function("document.getElementById('edited').naturalWidth > 0")
    assert page.evaluate(
        "[document.getElementById('edited').naturalWidth, document.getElementById('edited').naturalHeight]"
    ) == [600, 400]
    assert "edited (replace)" in page.text_content("#status")

    shot = tmp_path / "serve_page.jpg"
    page.screenshot(path=str(shot), type="jpeg", quality=80)
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
    assert not errors, errors
    assert json.loads(httpx.get(f"{server}/health").text)["status"] == "ok"
    page.close()
