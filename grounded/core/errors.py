"""The user-facing error type and the exit codes of the ``grounded`` command."""

from __future__ import annotations

__all__ = ["EXIT_IMAGE_ERRORS", "EXIT_OK", "EXIT_USAGE", "UserError"]

#: success; some images (or inputs) failed while the others completed; bad options, models or inputs
EXIT_OK, EXIT_IMAGE_ERRORS, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A problem with what the user asked for, reported as one line, without a traceback; exit code 2."""
