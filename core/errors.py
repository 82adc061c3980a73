"""User errors: what the command line reports in one line, without a traceback (exit code 2).

Every package raises its own subclass (``ConfigError``, ``DataError``, ``ExportError``, ...),
each also deriving from the builtin type it always had (``ValueError`` or ``RuntimeError``),
so the top layer catches :class:`UserError` without importing the packages that define them.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; its message says what was wrong and what to do."""


class CLIError(UserError, RuntimeError):
    """A user error found by a command (an option that does not fit, a missing file)."""
