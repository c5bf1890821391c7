"""The error types that a job reports as one line (exit code 2): a setup problem, not an image's."""

from __future__ import annotations

__all__ = ["user_errors"]


def user_errors() -> tuple[type[Exception], ...]:
    """:class:`~grounded.core.errors.UserError` and the library's errors about options, models and devices."""
    from grounded.core.errors import UserError
    from grounded.core.prompts import PromptError
    from grounded.engine import PipelineError, UnknownAdapterError
    from grounded.models.checkpoints import CheckpointError
    from grounded.models.sources import ModelSourceError
    from grounded.runtime.device import DeviceError

    return (
        UserError,
        CheckpointError,
        DeviceError,
        ModelSourceError,
        PromptError,
        PipelineError,
        UnknownAdapterError,
    )
