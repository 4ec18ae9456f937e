"""The one exception type for mistakes a user can fix (bad option, missing data, ...).

The CLI turns it into a single clear sentence on stderr and a non-zero exit code,
without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, data or files, explained in one sentence."""


class Interrupted(UserError):
    """A training stopped by SIGINT/SIGTERM after saving its state; exits 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def exit_code(exc: UserError) -> int:
    """The process exit code for a UserError: 2, or 130/143 for an interrupted training."""
    return getattr(exc, "exit_code", 2)
