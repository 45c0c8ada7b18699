"""The one exception hierarchy of tensortrace.

    TraceError                          base of everything a trace reader or writer raises
    ├── TraceFormatError (ValueError)   the file is not a conforming trace
    │   ├── NotATraceError              not HDF5, or HDF5 without the trace identification
    │   ├── UnsupportedVersionError     a format major version this reader does not know
    │   ├── IncompleteTraceError        a recording that stopped before its end marker
    │   ├── IntegrityError              a checksum does not match the stored bytes
    │   └── UnsafeTraceError            external links, virtual datasets, limits exceeded
    ├── TraceNotFoundError (FileNotFoundError)
    ├── TraceWriteError (OSError)       disk full, permissions: recording stopped, data kept
    └── UsageError                      a bad command-line or API argument

Every error carries the path of the file it concerns, so the CLI can print one line
``tensortrace: PATH: problem`` and exit with status 2.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "TraceError",
    "TraceFormatError",
    "NotATraceError",
    "UnsupportedVersionError",
    "IncompleteTraceError",
    "IntegrityError",
    "UnsafeTraceError",
    "TraceNotFoundError",
    "TraceWriteError",
    "UsageError",
]


class TraceError(Exception):
    """Base class: a problem with a trace file or with how one was asked for."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class TraceFormatError(TraceError, ValueError):
    """The file does not conform to the trace format spec."""


class NotATraceError(TraceFormatError):
    """The file is not HDF5, or is HDF5 without the trace identification attributes."""


class UnsupportedVersionError(TraceFormatError):
    """The file's format major version is one this reader does not implement."""


class IncompleteTraceError(TraceFormatError):
    """The recording stopped (killed, crashed) before writing its end marker."""


class IntegrityError(TraceFormatError):
    """Stored bytes do not match their recorded checksum."""


class UnsafeTraceError(TraceFormatError):
    """The file asks for something a reader must refuse: links out, virtual data, huge sizes."""


class TraceNotFoundError(TraceError, FileNotFoundError):
    """The named file does not exist."""


class TraceWriteError(TraceError, OSError):
    """Writing failed (disk full, permission denied); what was flushed before stays readable."""


class UsageError(TraceError):
    """A bad argument: unknown call, unknown tensor name, conflicting options."""
