"""User-facing errors.

A `UserError` is bad input (a missing file, a wrong key, an unreachable endpoint): the CLI and the
jobs print its message as one sentence and exit non-zero, without a traceback. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message names what and where, and what was expected."""


class ConfigError(UserError):
    """A config file or override that does not match the typed config."""


class DataError(UserError):
    """A dataset, split, shard or manifest that is missing, malformed or inconsistent."""


class StorageError(UserError):
    """S3 or local storage that cannot be reached, read or written."""
