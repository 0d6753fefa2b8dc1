"""Errors a user can act on. The CLI turns these into a message and exit code 2."""

from __future__ import annotations


class ModaltuneError(Exception):
    """Bad usage, config or data: the message says what, where and how to fix it."""


class DataError(ModaltuneError):
    """The data cannot be used as given (bad rows, unknown format, missing columns)."""


class ConfigError(ModaltuneError):
    """A config value or flag is invalid or inconsistent."""
