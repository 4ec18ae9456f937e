"""The one exception type for mistakes a user can fix (bad option, missing data, ...).

The CLI turns it into a single clear sentence on stderr and a non-zero exit code,
without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, data or files, explained in one sentence."""
