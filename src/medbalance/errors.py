"""Exceptions that carry one clear, user-facing line.

Every error a user can cause (bad file, bad option, bad config) is raised as a
:class:`MedbalanceError` subclass. The CLI prints ``error: <message>`` and exits with
code 2; the Python API lets the exception propagate.
"""

from __future__ import annotations

from pathlib import Path


class MedbalanceError(Exception):
    """Base class of user-facing errors. ``str(err)`` is one line naming the file and problem."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        self.problem = message
        full = f"{self.path}: {message}" if self.path else message
        super().__init__(full.replace("\n", " "))


class DataError(MedbalanceError):
    """Bad input data: missing/unreadable file, inconsistent image and mask, unknown label, ..."""


class ConfigError(MedbalanceError):
    """Bad configuration, option value or command-line argument."""


class CheckpointError(MedbalanceError):
    """Missing, incomplete or incompatible checkpoint / run folder."""
