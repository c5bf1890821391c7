"""``grounded serve``: the HTTP API and the web page (FastAPI + uvicorn, or Ray Serve)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from grounded.cli.common import DETECTOR_FLAGS, add_device_option, params_from, shared_params
from grounded.core.errors import EXIT_OK, UserError

__all__ = ["TOKEN_ENV", "add_parser", "handler"]

#: the bearer token, when ``--token`` is not given
TOKEN_ENV = "GROUNDED_SERVE_TOKEN"


def add_parser(subparsers: Any) -> None:
    """Add ``grounded serve``."""
    p = subparsers.add_parser(
        "serve",
        help="HTTP API and web page for interactive segmentation",
        description="Serve the API (/v1/segment, sessions: /v1/images, .../masks, .../detect; /v1/edit with "
        "--inpainter; /health, /metrics; OpenAPI at /docs) and the page at /. Models are loaded once; each "
        "model runs one request at a time behind a bounded queue (503 with Retry-After beyond it). Without "
        "--detector / --segmenter and without the default hub models, tiny random-weight models are used and "
        "the page says so. Needs: pip install 'grounded[serve]'.",
    )
    p.add_argument("--pipeline", default="grounded_sam", help="bundled pipeline name or YAML path")
    p.add_argument("--detector", help="detector hub id or local folder")
    p.add_argument("--segmenter", help="SAM-family hub id or local folder")
    p.add_argument("--inpainter", help="diffusers inpainting model: enables /v1/edit and the page's edit")
    p.add_argument("--edit-steps", type=int, help="inpainting denoising steps (default 30)")
    p.add_argument("--box-threshold", type=float, help="default minimum class score of a box (0.35)")
    p.add_argument("--text-threshold", type=float, help="default token score of the phrase (0.25)")
    p.add_argument("--top-k", type=int, help="default most detections per image (100)")
    p.add_argument("--nms-threshold", type=float, help="default IoU of class-aware NMS (0.8)")
    add_device_option(p)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on the API (or set {TOKEN_ENV})")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest upload (default 32 MB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest decoded image (default 40 MP)")
    p.add_argument("--queue", type=int, default=8, help="requests that may wait per model (default 8)")
    p.add_argument("--timeout", type=float, default=120.0, help="longest wait for a model, seconds")
    p.add_argument("--cache-mb", type=float, default=1024.0, help="memory for encoded images (default 1024)")
    p.add_argument(
        "--cors", action="append", default=[], metavar="ORIGIN", help="allow this origin (repeatable)"
    )
    p.add_argument(
        "--random-weights", action="store_true", help="tiny random-weight models even if real ones exist"
    )
    p.add_argument(
        "--label-studio",
        action="store_true",
        help="also answer as a Label Studio ML backend at /label-studio (give Label Studio "
        "http://HOST:PORT/label-studio; needs label-studio-sdk: pip install 'grounded[label-studio]')",
    )
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="uvicorn here, or Ray Serve")
    p.add_argument("--replicas", type=int, default=1, help="--engine ray: model replicas")
    p.set_defaults(handler=handler)


def _models(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Pipeline overrides and the page's note: the given models, or tiny random ones where none can be had."""
    from grounded.tasks.demo import default_models_missing, tiny_models

    overrides: dict[str, dict[str, Any]] = {}
    det = params_from(args, DETECTOR_FLAGS)
    if det:
        overrides["detector"] = det
    if args.segmenter:
        overrides["segmenter"] = {"model": args.segmenter}
    note = None
    if args.pipeline == "grounded_sam" and not (args.detector or args.segmenter):
        reason = default_models_missing(args.random_weights)
        if reason is not None:
            from grounded.models.hub import cache_folder

            folder = cache_folder("serve-tiny-models")
            tiny = tiny_models(folder)
            for node, params in tiny.items():
                overrides[node] = {**params, **overrides.get(node, {})}
            note = (
                f"Tiny RANDOM-weight models ({reason}): the flow works, the boxes and masks mean nothing. "
                "Start with --detector and --segmenter for real ones."
            )
    return overrides, note


def handler(args: argparse.Namespace) -> int:
    """Build the models, then serve until interrupted."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UserError("grounded serve needs FastAPI and uvicorn: pip install 'grounded[serve]'") from None
    from grounded.serve.config import MIB, ServeConfig

    if not 0 < args.port < 65536:
        raise UserError("--port must lie in 1..65535")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        config = ServeConfig(
            pipeline=args.pipeline,
            shared=shared_params(args),
            inpainter=args.inpainter,
            inpainter_params={} if args.edit_steps is None else {"steps": args.edit_steps},
            token=token,
            max_upload_bytes=int(args.max_upload_mb * MIB),
            max_pixels=args.max_pixels,
            queue_size=args.queue,
            wait_timeout_s=args.timeout,
            cache_bytes=int(args.cache_mb * MIB),
            cors_origins=tuple(args.cors),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    overrides, note = _models(args)
    config = dataclasses.replace(config, overrides=overrides, note=note)
    if note:
        print(f"grounded serve: {note}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(
            f"grounded serve: listening on {args.host} without --token: anyone who reaches it may use it",
            file=sys.stderr,
        )
    if args.label_studio and args.engine == "ray":
        raise UserError("--label-studio runs with --engine local only")
    if args.engine == "ray":
        from grounded.serve.ray_engine import serve_on_ray

        return serve_on_ray(config, host=args.host, port=args.port, replicas=args.replicas)
    from grounded.serve.app import create_app

    extra = []
    if args.label_studio:
        try:
            import label_studio_sdk  # noqa: F401
        except ImportError:
            raise UserError(
                "--label-studio needs label-studio-sdk: pip install 'grounded[label-studio]'"
            ) from None
        from grounded.serve.label_studio import LABEL_STUDIO_PREFIX, label_studio_routes

        extra.append(label_studio_routes(config))
    app = create_app(config, extra_routers=extra, warm_up=True)
    print(f"grounded serve: http://{args.host}:{args.port}  (API docs: /docs)", file=sys.stderr, flush=True)
    if args.label_studio:
        print(
            f"grounded serve: Label Studio ML backend at http://{args.host}:{args.port}{LABEL_STUDIO_PREFIX}",
            file=sys.stderr,
            flush=True,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5)
    return EXIT_OK
