"""The FastAPI application: the ``/v1`` API, ``/health``, ``/metrics`` and the web page at ``/``.

:func:`create_app` assembles it from routers (:func:`api_router`, :func:`ops_router`, :func:`page_router`);
``extra_routers`` adds more (a Label Studio backend) on the same :class:`~grounded.serve.service.Service`.
Errors are JSON ``{"error": "..."}`` with their status, never a traceback.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import time
from collections.abc import Sequence
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from grounded.core.files import compact_json, encode_png
from grounded.serve.config import ServeConfig
from grounded.serve.gate import Busy
from grounded.serve.metrics import Metrics
from grounded.serve.service import ServeError, Service, detections_from_records, result_document

__all__ = ["api_router", "create_app", "ops_router", "page_router"]

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- request bodies
class Thresholds(BaseModel):
    """The detector / segmenter options of ``grounded segment``; unset ones keep the server's defaults."""

    box_threshold: float | None = Field(None, description="minimum class score of a box (default 0.35)")
    text_threshold: float | None = Field(None, description="token score delimiting the phrase (default 0.25)")
    top_k: int | None = Field(None, description="at most this many detections (default 100)")
    nms_threshold: float | None = Field(None, description="IoU of class-aware NMS (default 0.8)")
    no_nms: bool = Field(False, description="disable NMS")
    multimask: bool | None = Field(None, description="3 masks per box, keep the best predicted IoU")
    granularity: str | None = Field(None, description="best, part or whole")

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("box_threshold", "text_threshold", "top_k", "nms_threshold", "granularity")
            if getattr(self, k) is not None
        }
        if self.no_nms:
            out["nms_threshold"] = None
        if self.multimask is not None:
            out["multimask_output"] = self.multimask
        return out


class DetectBody(Thresholds):
    prompt: str = Field(..., description='classes separated by " . ", e.g. "dog . red car"')


class MasksBody(BaseModel):
    points: list[list[float]] = Field(default_factory=list, description="clicks [[x, y], ...] in pixels")
    labels: list[int] | None = Field(None, description="per point: 1 positive, 0 negative (default all 1)")
    box: list[float] | None = Field(None, description="[x0, y0, x1, y1] in pixels")
    mask_input: str | None = Field(None, description="logits_id of an earlier answer, to refine it")
    multimask: bool = Field(True, description="all levels (3 candidates); false: one mask")


class RenderBody(BaseModel):
    detections: list[dict[str, Any]] = Field(
        ..., description="records as /detect gives them (possibly edited)"
    )
    format: str = Field("coco", description="coco (JSON), labels (uint16 PNG) or overlay (PNG)")


def _thresholds(
    box_threshold: Annotated[float | None, Form()] = None,
    text_threshold: Annotated[float | None, Form()] = None,
    top_k: Annotated[int | None, Form()] = None,
    nms_threshold: Annotated[float | None, Form()] = None,
    no_nms: Annotated[bool, Form()] = False,
    multimask: Annotated[bool | None, Form()] = None,
    granularity: Annotated[str | None, Form()] = None,
) -> Thresholds:
    return Thresholds(
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        top_k=top_k,
        nms_threshold=nms_threshold,
        no_nms=no_nms,
        multimask=multimask,
        granularity=granularity,
    )


# ---------------------------------------------------------------------- helpers
def _png(array: np.ndarray, filename: str) -> Response:
    return Response(
        encode_png(array),
        media_type="image/png",
        headers={"Content-Disposition": f'inline; filename="{filename}"'},
    )


async def _read(upload: UploadFile, service: Service) -> bytes:
    limit = service.config.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ServeError(413, f"the upload is larger than {limit:,} bytes")
    return data


def _stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "image"


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def require_token(request: Request) -> None:
    """The bearer token, when the server has one (compared in constant time)."""
    token = _service(request).config.token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ServeError(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")


# ---------------------------------------------------------------------- routers
def api_router() -> APIRouter:
    """``/v1``: segment, sessions (encode once, click, detect), render, edit."""
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], tags=["api"])

    @router.post("/segment", summary="segment an image by text (what `grounded segment` writes)")
    async def segment(
        request: Request,
        image: Annotated[UploadFile, File(description="the image (JPEG, PNG, ...)")],
        prompt: Annotated[str, Form(description='classes separated by " . "')],
        thresholds: Annotated[Thresholds, Depends(_thresholds)],
        output: Annotated[str, Form(description="json, overlay (PNG) or labels (uint16 PNG)")] = "json",
    ) -> Response:
        service = _service(request)
        if output not in ("json", "overlay", "labels"):
            raise ServeError(400, "output must be json, overlay or labels")
        data = await _read(image, service)
        loaded = service.load(data, image.filename)
        parsed = service.prompt(prompt)
        params = thresholds.params()
        det = await _in_thread(service.segment, loaded, parsed, params)
        return _result(service, loaded, det, parsed, params, output)

    @router.post("/images", summary="encode an image once; its id is its content hash")
    async def images(
        request: Request, image: Annotated[UploadFile, File(description="the image")]
    ) -> JSONResponse:
        service = _service(request)
        if not service.can_interact:
            raise ServeError(501, f"pipeline {service.pipeline.name!r} has no SAM-family segmenter")
        loaded = service.load(await _read(image, service), image.filename)
        session, created = await _in_thread(service.open_session, loaded)
        height, width = loaded.size
        body = {"image_id": session.id, "file_name": loaded.name, "width": width, "height": height}
        return JSONResponse({**body, "created": created}, status_code=201 if created else 200)

    @router.post("/images/{image_id}/masks", summary="mask levels for clicks / a box on an encoded image")
    async def masks(request: Request, image_id: str, body: MasksBody) -> JSONResponse:
        service = _service(request)
        session = service.session(image_id)
        answer = await _in_thread(
            service.masks, session, body.points, body.labels, body.box, body.mask_input, body.multimask
        )
        return JSONResponse(answer)

    @router.post("/images/{image_id}/detect", summary="detect by text on an encoded image")
    async def detect(request: Request, image_id: str, body: DetectBody) -> JSONResponse:
        service = _service(request)
        session = service.session(image_id)
        parsed = service.prompt(body.prompt)
        params = body.params()
        det = await _in_thread(service.detect, session, parsed, params)
        doc = result_document(service, session.image, det, parsed, params)
        return JSONResponse({"image_id": session.id, **doc})

    @router.post("/images/{image_id}/render", summary="COCO JSON, label PNG or overlay of edited detections")
    async def render(request: Request, image_id: str, body: RenderBody) -> Response:
        from grounded.tasks.export import CocoWriter, label_image, overlay_image

        service = _service(request)
        session = service.session(image_id)
        det = detections_from_records(body.detections, session.image.size)
        stem = _stem(session.image.name)
        if body.format == "coco":
            writer = CocoWriter()
            writer.add(session.image, det)
            return Response(
                compact_json(writer.to_dict()),
                media_type="application/json",
                headers={"Content-Disposition": f'attachment; filename="{stem}_coco.json"'},
            )
        if body.format not in ("labels", "overlay"):
            raise ServeError(400, "format must be coco, labels or overlay")
        if body.format == "labels":
            if not det.has_masks:
                raise ServeError(400, "a label image needs a segmentation in every detection")
            return _png(label_image(det), f"{stem}_labels.png")
        return _png(await _in_thread(overlay_image, session.image, det), f"{stem}.png")

    @router.post(
        "/edit", summary="remove / replace / restyle what a prompt or a mask selects (needs --inpainter)"
    )
    async def edit(
        request: Request,
        mode: Annotated[str, Form(description="replace, remove or restyle")],
        image: Annotated[UploadFile | None, File(description="the image (or give image_id)")] = None,
        image_id: Annotated[str | None, Form(description="an encoded image's id")] = None,
        select: Annotated[str | None, Form(description="what to edit, as a prompt")] = None,
        mask: Annotated[UploadFile | None, File(description="what to edit, as a PNG mask (nonzero)")] = None,
        text: Annotated[str | None, Form(description="what to paint (replace / restyle)")] = None,
    ) -> Response:
        service = _service(request)
        if not service.can_edit:
            raise ServeError(501, "no inpainter configured: start the server with --inpainter")
        if (image is None) == (image_id is None):
            raise ServeError(400, "give image or image_id (one of them)")
        if (select is None) == (mask is None):
            raise ServeError(400, "give select (a prompt) or mask (a PNG), one of them")
        session = None
        if image_id is not None:
            session = service.session(image_id)
            loaded = session.image
        else:
            assert image is not None
            loaded = service.load(await _read(image, service), image.filename)
        if mask is not None:
            selection = _mask_selection(await _read(mask, service), loaded.size)
        else:
            prompt = service.prompt(select)
            if session is not None:
                selection = await _in_thread(service.detect, session, prompt, {})
            else:
                selection = await _in_thread(service.segment, loaded, prompt, {})
        edited = await _in_thread(service.edit, loaded, selection, mode, text)
        return _png(edited.pixels, f"{_stem(loaded.name)}_edited.png")

    return router


def _mask_selection(data: bytes, size: tuple[int, int]) -> Any:
    import torch
    from PIL import Image

    from grounded.core.detections import Detections

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size[0] * im.size[1] != size[0] * size[1] or (im.size[1], im.size[0]) != size:
                raise ServeError(
                    400, f"the mask must be {size[1]}x{size[0]} like the image, got {im.size[0]}x{im.size[1]}"
                )
            array = np.asarray(im.convert("L")) > 0
    except ServeError:
        raise
    except Exception as exc:
        raise ServeError(400, f"mask: not an image ({type(exc).__name__})") from None
    ys, xs = np.nonzero(array)
    box = [0.0, 0.0, 1.0, 1.0] if not len(xs) else [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]
    det = Detections(
        boxes=torch.tensor([box], dtype=torch.float32),
        scores=torch.ones(1),
        class_ids=torch.zeros(1, dtype=torch.int64),
        classes=("selection",),
        phrases=("selection",),
        image_size=size,
    )
    return det.with_masks(torch.from_numpy(array)[None])


def _result(
    service: Service, image: Any, det: Any, prompt: Any, params: dict[str, Any], output: str
) -> Response:
    from grounded.tasks.export import label_image, overlay_image

    stem = _stem(image.name)
    if output == "overlay":
        return _png(overlay_image(image, det), f"{stem}.png")
    if output == "labels":
        if not det.has_masks:
            raise ServeError(400, "this pipeline gives no masks for a label image")
        return _png(label_image(det), f"{stem}_labels.png")
    return Response(
        compact_json(result_document(service, image, det, prompt, params)), media_type="application/json"
    )


async def _in_thread(fn: Any, *args: Any) -> Any:
    """Run a model call in a worker thread (the event loop keeps answering /health and 503s)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def ops_router() -> APIRouter:
    """``/health`` (open) and ``/metrics`` (behind the token when there is one)."""
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="liveness, the models and what the server offers")
    def health(request: Request) -> dict[str, Any]:
        return {"status": "ok", **_service(request).info()}

    @router.get("/metrics", summary="Prometheus text", dependencies=[Depends(require_token)])
    def metrics(request: Request) -> Response:
        body, content_type = request.app.state.metrics.text()
        return Response(body, media_type=content_type)

    return router


def page_router() -> APIRouter:
    """The web page at ``/`` (static files shipped in the package, no build step)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def index() -> HTMLResponse:
        return HTMLResponse(
            resources.files("grounded.serve").joinpath("static/index.html").read_text("utf-8")
        )

    return router


# ---------------------------------------------------------------------- the app
class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 (from its Content-Length before
    reading, else as soon as the streamed bytes pass it)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _send_error(send, 413, f"the request is larger than {self.limit:,} bytes")
            return
        seen = 0
        refused = False  # the body passed the limit: the answer is 413, whatever the app makes of it
        answered = False

        async def limited() -> Any:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    raise ServeError(413, "request too large")
            return message

        async def guarded(message: Any) -> None:
            nonlocal answered
            if not refused:
                await send(message)
            elif message["type"] == "http.response.start" and not answered:
                answered = True
                await _send_error(send, 413, f"the request is larger than {self.limit:,} bytes")

        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not refused:
                raise
        if refused and not answered:
            await _send_error(send, 413, f"the request is larger than {self.limit:,} bytes")


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(
    config: ServeConfig | Service | None = None,
    *,
    extra_routers: Sequence[APIRouter] = (),
    warm_up: bool = False,
) -> FastAPI:
    """The application on a :class:`Service` (built from ``config`` when a config is given); ``warm_up``
    loads the models now instead of on the first request."""
    from grounded.core.version import __version__

    service = config if isinstance(config, Service) else Service(config or ServeConfig())
    if warm_up:
        service.warm_up()
    app = FastAPI(
        title="grounded",
        version=__version__,
        description="Open-vocabulary segmentation: words in, boxes and pixel-exact masks out. "
        "Masks are COCO RLE (`segmentation`), boxes xywh pixels (`bbox`), as `grounded segment` writes them.",
    )
    app.state.service = service
    app.state.metrics = Metrics(service)
    for router in (ops_router(), api_router(), page_router(), *extra_routers):
        app.include_router(router)
    app.mount("/static", StaticFiles(packages=[("grounded.serve", "static")]), name="static")

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("request %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server keeps serving")

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "other")
            app.state.metrics.observe(path, request.method, status, time.perf_counter() - start)

    if service.config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(service.config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(_BodyLimit, limit=service.config.max_upload_bytes + 1024 * 1024)
    return app
