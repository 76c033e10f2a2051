"""The one exception type for mistakes a user can fix (bad config, missing file, bad row ...).

Tools print `error: <message>` on one line and exit with code 2; no traceback. The message must
name the file / key / row and say what was expected.
"""


class UserError(Exception):
    """A mistake in the user's input. The message is shown as is, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


class ConfigError(UserError):
    """Bad config key, type or value."""


class DataError(UserError):
    """Missing dataset file or a bad row."""


class CheckpointError(UserError):
    """Missing, unsafe or incompatible checkpoint."""
