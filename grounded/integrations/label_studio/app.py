"""The ML backend's routes as a FastAPI ``APIRouter`` (:func:`label_studio_router`) or a whole app
(:func:`create_app`): ``GET /`` and ``/health``, ``POST /setup``, ``/predict``, ``/webhook``, ``GET /metrics``.

Set ``BASIC_AUTH_USER`` and ``BASIC_AUTH_PASS`` to require HTTP basic auth (Label Studio's model settings
take the same user and password), as label-studio-ml-backend does.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from grounded.core.errors import UserError
from grounded.integrations.annotator import Annotator
from grounded.integrations.label_studio.backend import LabelStudioBackend

__all__ = ["MAX_BODY_BYTES", "create_app", "label_studio_router"]

_log = logging.getLogger(__name__)

#: the largest request body read (tasks and a labeling config are a few KB; a big batch a few MB)
MAX_BODY_BYTES = 32 * 1024 * 1024
_basic = HTTPBasic(auto_error=False)


def _check_auth(credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> None:
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    if not (user and password):
        return
    if credentials is None or not (
        hmac.compare_digest(credentials.username.encode(), user.encode())
        and hmac.compare_digest(credentials.password.encode(), password.encode())
    ):
        raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": 'Basic realm="Login required"'})


async def _json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise HTTPException(400, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return data


def _answer(call: Any, *args: Any) -> Any:
    """A backend call; a ``UserError`` is a 400 with its one line (Label Studio shows it to the user)."""
    try:
        return call(*args)
    except UserError as exc:
        _log.warning("%s", exc)
        return JSONResponse({"status": "error", "error": str(exc)}, status_code=400)


def label_studio_router(backend: LabelStudioBackend) -> APIRouter:
    """The backend's routes; mount them at the URL given to Label Studio (e.g. ``prefix="/label-studio"``)."""
    router = APIRouter(dependencies=[Depends(_check_auth)], tags=["label-studio"])

    @router.get("/health")
    @router.get("/")
    def health() -> dict[str, Any]:
        return backend.health()

    @router.get("/metrics")
    def metrics() -> dict[str, Any]:
        return {}

    @router.post("/setup")
    async def setup(request: Request) -> Any:
        return _answer(backend.setup, await _json(request))

    @router.post("/predict")
    async def predict(request: Request) -> Any:
        body = await _json(request)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(_answer, backend.predict, body)

    @router.post("/webhook")
    async def webhook(request: Request) -> Any:
        answer = _answer(backend.webhook, await _json(request))
        if isinstance(answer, JSONResponse):
            return answer
        content, status = answer
        return JSONResponse(content, status_code=status)

    return router


def create_app(backend: LabelStudioBackend | None = None, **annotator: Any) -> FastAPI:
    """A FastAPI app serving one backend (``annotator`` arguments build its :class:`Annotator` when no
    ``backend`` is given)."""
    backend = backend or LabelStudioBackend(Annotator(**annotator))
    app = FastAPI(title="grounded: Label Studio ML backend")
    app.include_router(label_studio_router(backend))
    app.state.backend = backend
    return app
