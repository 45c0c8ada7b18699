"""The ``tensortrace`` console command.

Each package owns its subcommands and registers them through the
``tensortrace.commands`` entry-point group; this dispatcher only builds the parser
and turns errors into one line and exit status 2. Subcommand modules must not import
torch at import time, so ``tensortrace tui`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

from ._errors import TraceError

__all__ = ["main", "register", "build_parser", "fail"]

_FALLBACK_REGISTRARS = ("tracefmt.cli", "recorder.cli", "replayer.cli", "tui.cli")


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Every installed package's ``register``; a package that is not there adds no commands."""
    found = []
    for ep in metadata.entry_points(group="tensortrace.commands"):
        module = ep.value.partition(":")[0]
        try:
            found.append(ep.load())
        except ModuleNotFoundError as exc:
            if not _is_absent(exc, module):
                raise
    if found:
        return found
    import importlib

    for module in _FALLBACK_REGISTRARS:
        try:
            found.append(importlib.import_module(module).register)
        except ModuleNotFoundError as exc:
            if not _is_absent(exc, module):
                raise
    return found


def _is_absent(exc: ModuleNotFoundError, module: str) -> bool:
    """Whether the registrar module itself (or its package) is missing, not something it imports."""
    parts = module.split(".")
    return exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="tensortrace",
        description="Record a reference PyTorch run, replay its layers into candidates, browse the results.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register_commands in _registrars():
        register_commands(sub)
    return parser


def fail(message: str) -> int:
    """Print one error line and return the usage/input exit status."""
    line = " ".join(message.split("\n"))
    line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)
    print(f"tensortrace: error: {line}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TraceError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted")
    except BrokenPipeError:
        return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register the format's own subcommands: validate, info, repair."""
    from . import _commands

    _commands.register(sub)


if __name__ == "__main__":
    sys.exit(main())
