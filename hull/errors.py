"""One exception tree for all of Hull.

Each error carries a message meant for people and the exit code the CLI edges
use; nothing below the CLI/API prints or exits on its own.
"""

from __future__ import annotations


class HullError(Exception):
    """Base of every error Hull raises on purpose."""

    exit_code = 125

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(HullError):
    """A config.json, manifest or flag is malformed or asks for the impossible."""


class NotFoundError(HullError):
    """A container, image, or file that was named does not exist."""


class StateError(HullError):
    """The operation is not allowed in the object's current state."""


class KernelError(HullError):
    """The kernel refused or lacks a feature we need."""


class CommandNotInvokableError(HullError):
    """The container command exists but cannot run (Docker's 126)."""

    exit_code = 126


class CommandNotFoundError(HullError):
    """The container command does not exist (Docker's 127)."""

    exit_code = 127
