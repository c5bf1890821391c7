"""The web page of ``grounded serve`` in Firefox ESR (Debian's package), driven over WebDriver BiDi, the protocol
Firefox speaks itself (Playwright drives only its own patched Firefox, and there is no geckodriver here): a few
functions over one WebSocket, against the same real server process as tests/test_serve_browser.py. Upload,
prompt, masks on the canvas where the RLE says, a click, a drop, and no JavaScript error."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
ws_client = pytest.importorskip(
    "websockets.sync.client", reason="websockets is not installed (pip install websockets)"
)

import httpx  # noqa: E402
from websockets.exceptions import WebSocketException  # noqa: E402

from grounded.core.rle import decode_rle  # noqa: E402

#: where to keep the screenshot (PNG) besides the test's temporary folder
SCREENSHOT_ENV = "GROUNDED_SERVE_SCREENSHOT_FIREFOX"
FIREFOX = "firefox-esr"


class Bidi:
    """A WebDriver BiDi session on one browsing context: commands answered in order, events kept in a list."""

    def __init__(self, url: str) -> None:
        # entered as a context manager (websockets >= 17.1 warns otherwise), closed by the fixture
        self.ws = ws_client.connect(url, max_size=None, open_timeout=5).__enter__()
        self.next_id = 0
        self.events: list[dict] = []
        self.command("session.new", {"capabilities": {}})
        self.context = self.command("browsingContext.getTree", {})["contexts"][0]["context"]

    def command(self, method: str, params: dict, timeout: float = 60) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("type") == "event":
                self.events.append(message)
            elif message.get("id") == self.next_id:
                if message["type"] == "error":
                    raise AssertionError(f"{method}: {message['error']}: {message.get('message')}")
                return message["result"]

    def js(self, expression: str):
        """The value of a JavaScript expression (awaited), through JSON."""
        result = self.command(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self.context},
                "awaitPromise": True,
            },
        )
        if result["type"] == "exception":
            raise AssertionError(f"{expression}: {result['exceptionDetails']['text']}")
        value = result["result"]
        return json.loads(value["value"]) if value["type"] == "string" else None

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.1)
        return value

    def element(self, selector: str) -> dict:
        result = self.command(
            "script.evaluate",
            {
                "expression": f"document.querySelector({json.dumps(selector)})",
                "target": {"context": self.context},
                "awaitPromise": False,
            },
        )
        return {"sharedId": result["result"]["sharedId"]}

    def actions(self, source: dict) -> None:
        self.command("input.performActions", {"context": self.context, "actions": [source]})

    def type(self, text: str) -> None:
        keys = [{"type": kind, "value": ch} for ch in text for kind in ("keyDown", "keyUp")]
        self.actions({"type": "key", "id": "keyboard", "actions": keys})

    def click(self, x: int, y: int) -> None:
        moves = [{"type": "pointerMove", "x": x, "y": y, "origin": "viewport"}]
        moves += [{"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]
        self.actions(
            {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": moves}
        )

    def errors(self) -> list[str]:
        return [
            f"{e['params'].get('type')}: {e['params'].get('text')}"
            for e in self.events
            if e.get("method") == "log.entryAdded" and e["params"].get("level") == "error"
        ]


@pytest.fixture(scope="module")
def firefox():
    path = shutil.which(FIREFOX)
    if path is None:
        pytest.skip(
            "no firefox-esr on this machine: apt-get install -y firefox-esr (.ci/run does it as root)"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:  # firefox may still be writing
        log = (Path(profile) / "firefox.log").open("w")
        command = [path, "--headless", "--no-remote", "--profile", profile, f"--remote-debugging-port={port}"]
        proc = subprocess.Popen([*command, "about:blank"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    bidi = Bidi(f"ws://127.0.0.1:{port}/session")
                    break
                except (OSError, WebSocketException):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.skip(f"firefox at {path} does not start: {Path(log.name).read_text()[-300:]}")
                    time.sleep(0.2)
            yield bidi
            bidi.ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _alpha(ff: Bidi) -> np.ndarray:
    """The overlay canvas's alpha channel, ``(H, W)`` uint8."""
    height, width, data = ff.js(
        """(() => {
        const c = document.getElementById('overlay-canvas');
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const a = new Uint8Array(c.width * c.height);
        for (let i = 0; i < a.length; i++) a[i] = px[4 * i + 3];
        let s = ''; for (let i = 0; i < a.length; i += 8192) s += String.fromCharCode.apply(null, a.subarray(i, i + 8192));
        return [c.height, c.width, btoa(s)];
    })()"""
    )
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width)


def _dets(ff: Bidi) -> list[dict]:
    return ff.js(
        "window.groundedState.dets.map(d => ({category: d.category, segmentation: d.segmentation, "
        "level: d.level, levels: d.levels, prompt: d.prompt, source: d.source}))"
    )


def _to_screen(ff: Bidi, x: float, y: float) -> tuple[tuple[int, int], list[int]]:
    """A whole viewport point near image pixel ``(x, y)`` (BiDi pointers move in whole CSS pixels here), and
    the image pixel the page's ``canvasXY`` makes of it."""
    left, top, width, height, w, h = ff.js(
        "(() => { const r = document.getElementById('overlay-canvas').getBoundingClientRect(); "
        "return [r.left, r.top, r.width, r.height, window.groundedState.width, window.groundedState.height]; })()"
    )
    cx, cy = round(left + (x + 0.5) * width / w), round(top + (y + 0.5) * height / h)
    return (cx, cy), [
        int(np.floor((cx - left) * w / width + 0.5)),
        int(np.floor((cy - top) * h / height + 0.5)),
    ]


def test_the_page_works_in_firefox(firefox, server, image_files, tmp_path):
    ff = firefox
    ff.command("session.subscribe", {"events": ["log.entryAdded"]})
    ff.command(
        "browsingContext.setViewport", {"context": ff.context, "viewport": {"width": 1400, "height": 820}}
    )
    ff.command("browsingContext.navigate", {"context": ff.context, "url": server + "/", "wait": "complete"})
    ff.wait_for("document.body.dataset.ready === '1'")
    assert "RANDOM-weight" in ff.js("document.getElementById('note').textContent")
    assert "Firefox/" in ff.js("navigator.userAgent")

    # upload through the file input, as the file picker does (change event), then a typed prompt and Enter
    ff.command(
        "input.setFiles",
        {"context": ff.context, "element": ff.element("#file"), "files": [str(image_files["coffee"])]},
    )
    image_id = ff.wait_for("window.groundedState.imageId")
    assert _alpha(ff).max() == 0
    ff.js("document.getElementById('prompt').focus()")
    ff.type("cup . plate\ue007")  # U+E007: the Enter key
    ff.wait_for("document.querySelectorAll('.det-item').length > 0")
    dets = _dets(ff)
    assert len(dets) == ff.js("document.querySelectorAll('.det-item').length") == 5
    api = httpx.post(
        f"{server}/v1/images/{image_id}/detect", json={"prompt": "cup . plate"}, timeout=60
    ).json()
    assert [d["segmentation"] for d in dets] == [r["segmentation"] for r in api["detections"]]
    alpha = _alpha(ff)
    assert alpha.shape == (400, 600)
    union = np.any([decode_rle(d["segmentation"]) for d in dets], axis=0)
    assert union.any() and (alpha[union] > 0).all()

    # one real click on the canvas (nothing selected: a new object) shows the API's mask for that point
    before = alpha
    screen, point = _to_screen(ff, 300, 200)
    assert abs(point[0] - 300) <= 2 and abs(point[1] - 200) <= 2
    ff.click(*screen)
    ff.wait_for("window.groundedState.dets.length === 6 && window.groundedState.dets[5].levels")
    ff.wait_for("!window.groundedState.busy")
    clicked = _dets(ff)[5]
    assert clicked["source"] == "click" and clicked["prompt"]["points"] == [point]
    answer = httpx.post(f"{server}/v1/images/{image_id}/masks", json={"points": [point]}, timeout=60).json()
    assert clicked["segmentation"] == answer["levels"][answer["best"]]["segmentation"]
    after = _alpha(ff)
    assert not np.array_equal(after, before)  # the mask on the canvas changed
    new_mask = decode_rle(clicked["segmentation"])
    assert new_mask.any() and (after[new_mask] > 0).all()

    shot = ff.command("browsingContext.captureScreenshot", {"context": ff.context})["data"]
    png = tmp_path / "serve_page_firefox.png"
    png.write_bytes(base64.b64decode(shot))
    assert Image.open(io.BytesIO(png.read_bytes())).size == (1400, 820)
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(png, os.environ[SCREENSHOT_ENV])

    # a dropped file (DataTransfer with a File, the drop zone's path) opens a new image and clears the list
    chelsea = base64.b64encode(image_files["chelsea"].read_bytes()).decode()
    ff.js(
        f"""(() => {{
        const bytes = Uint8Array.from(atob({json.dumps(chelsea)}), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'chelsea.png', {{ type: 'image/png' }}));
        document.getElementById('stage').dispatchEvent(
            new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }}));
    }})()"""
    )
    ff.wait_for(f"window.groundedState.imageId && window.groundedState.imageId !== {json.dumps(image_id)}")
    assert ff.js(
        "[window.groundedState.width, window.groundedState.height, window.groundedState.dets.length]"
    ) == [
        451,
        300,
        0,
    ]
    assert _alpha(ff).max() == 0
    assert not ff.js("document.getElementById('status').classList.contains('error')")
    assert not ff.errors(), ff.errors()
