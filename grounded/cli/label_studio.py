"""``grounded label-studio-backend``: a Label Studio ML backend (``/health``, ``/setup``, ``/predict``,
``/webhook``) answering from the project's labeling config."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from grounded.cli.common import add_device_option, add_set_option, parse_settings
from grounded.core.errors import EXIT_OK, UserError

__all__ = ["add_parser", "handler"]

_log = logging.getLogger("grounded")


def add_parser(subparsers: Any) -> None:
    """Add ``grounded label-studio-backend``."""
    p = subparsers.add_parser(
        "label-studio-backend",
        help="serve a Label Studio ML backend (pre-annotations and smart clicks)",
        description="Serve the Label Studio ML backend protocol. Add the printed URL in Label Studio under "
        "Settings > Model. Predictions follow the labeling config: RectangleLabels, PolygonLabels and BrushLabels "
        "regions with the config's label values (a Label's predicted_values are its prompts), the prompt from a "
        "TextArea (remembered per project), box_threshold / text_threshold from Number tags; smart KeyPointLabels "
        "/ RectangleLabels become SAM masks. Task images are read with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
        "(or LOCAL_FILES_DOCUMENT_ROOT for local files storage); BASIC_AUTH_USER / BASIC_AUTH_PASS require auth.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=9090, help="port (9090, label-studio-ml-backend's)")
    p.add_argument("--pipeline", default="grounded_sam", help="bundled pipeline or YAML file (grounded_sam)")
    p.add_argument(
        "--detector", default=None, help="detector model (hub id or folder) replacing the pipeline's"
    )
    p.add_argument(
        "--segmenter", default=None, help="SAM-family model (hub id or folder) replacing the pipeline's"
    )
    add_device_option(p)
    add_set_option(p, "a node parameter, e.g. detector.box_threshold=0.3 (repeatable)")
    p.set_defaults(handler=handler)


def handler(args: argparse.Namespace) -> int:
    """Build the app and serve it with uvicorn until interrupted."""
    if not 0 < args.port < 65536:
        raise UserError(f"--port must lie in 1..65535, got {args.port}")
    try:
        import uvicorn

        from grounded.integrations.label_studio import create_app
    except ImportError as exc:
        raise UserError(
            f"the Label Studio backend needs {exc.name}: pip install 'grounded[label-studio]'"
        ) from None
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        _log.warning(
            "listening on %s: anyone who can reach it can run the models; set BASIC_AUTH_USER/PASS", args.host
        )
    app = create_app(
        pipeline=args.pipeline,
        detector=args.detector,
        segmenter=args.segmenter,
        device=args.device or "auto",
        overrides=parse_settings(args.settings),
    )
    print(f"Label Studio ML backend: http://{args.host}:{args.port}  (Settings > Model > Connect Model)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK
