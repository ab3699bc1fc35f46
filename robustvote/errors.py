"""The package's exception hierarchy.

Every error a user can cause derives from :class:`RobustVoteError`. The CLI prints such an
error as one line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class RobustVoteError(Exception):
    """Base class for errors caused by user input or the environment."""


class ConfigError(RobustVoteError):
    """Invalid pool file, attack suite, option value or granularity spec."""


class DataError(RobustVoteError):
    """Data set missing, unreadable or sliced out of range."""


class ModelLoadError(RobustVoteError):
    """A member's weights are missing, mismatched or unsafe to load."""
