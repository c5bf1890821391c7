"""``grounded serve --engine ray``: the same app as a Ray Serve deployment (replicas and their request
limits set there). Each replica builds its own :class:`~grounded.serve.service.Service` (models loaded once per
replica); Ray Serve's proxy spreads requests over the replicas."""

from __future__ import annotations

from typing import Any

from grounded.core.errors import EXIT_OK, UserError
from grounded.serve.config import ServeConfig

__all__ = ["deployment", "serve_on_ray"]


def deployment(config: ServeConfig, replicas: int = 1) -> Any:
    """The Ray Serve deployment of :func:`grounded.serve.app.create_app` (call ``.bind()`` to run it).

    A replica takes at most ``queue_size + 1`` requests at once (its models' own queue), so Ray Serve sends
    the others to other replicas or queues them itself."""
    try:
        from ray import serve
    except ImportError:
        raise UserError("--engine ray needs Ray Serve: pip install 'ray[serve]'") from None
    if replicas < 1:
        raise UserError("--replicas must be at least 1")

    @serve.ingress()
    class GroundedServe:
        def __init__(self, config: ServeConfig) -> None:
            self.config = config

        def __serve_build_asgi_app__(self) -> Any:
            from grounded.serve.app import create_app

            return create_app(self.config, warm_up=True)

    made: Any = serve.deployment(
        GroundedServe,
        name="grounded",
        num_replicas=replicas,
        max_ongoing_requests=4 * (config.queue_size + 1),
    )
    return made.bind(config)


def serve_on_ray(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> int:
    """Start (or join, with ``RAY_ADDRESS``) a Ray instance and serve the app on ``host:port`` until
    interrupted."""
    import ray
    from ray import serve

    app = deployment(config, replicas)
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name="grounded", route_prefix="/", blocking=True)
    return EXIT_OK
