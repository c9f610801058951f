"""User-facing errors.

Anything raised as :class:`Ssl4gieError` is a problem with the user's input (config, data, checkpoint), not a bug:
the command line prints its message as one line and exits with status 2, without a traceback.
"""


class Ssl4gieError(Exception):
    """An input problem; the message names the file or option and says what was expected."""


class ConfigError(Ssl4gieError):
    """An invalid option value or combination of options."""


class DatasetError(Ssl4gieError):
    """A dataset folder, file or annotation that does not match the expected layout."""


class DatasetMissing(DatasetError):
    """A dataset's root folder does not exist (``skip_missing_data=true`` skips an evaluation cell for it)."""
