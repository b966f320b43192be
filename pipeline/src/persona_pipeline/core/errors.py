"""User-facing errors: the CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations


class PipelineError(Exception):
    """An error caused by input the user can fix (bad config, missing file, wrong key...).

    ``exit_code`` follows the CLI convention: 2 for configuration / usage errors,
    1 for everything else.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(PipelineError):
    """Invalid configuration file or override."""

    exit_code = 2


class DataError(PipelineError):
    """Invalid dataset, transcript or persona file."""


class CryptoError(PipelineError):
    """Missing/wrong key, tampered or unsupported encrypted file."""
