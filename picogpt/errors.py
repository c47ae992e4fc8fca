"""One exception type for user-facing failures, and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class PicoError(Exception):
    """A failure caused by the user's input or environment: printed as one line, exit code 1."""


def cli_errors(func: F) -> F:
    """Turn PicoError (and Ctrl-C) into a one-line message on stderr and a non-zero exit.

    Click already handles its own usage errors (exit 2); everything the user can cause
    beyond that is raised as PicoError deep inside and reported here without a traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PicoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def check_writable_file(path, flag: str) -> None:
    """Refuse, before any work, an output file that cannot be written: no folder, a read-only one, a folder."""
    import os
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise PicoError(f"{flag} {p} is a folder, not a file")
    if not folder.is_dir():
        raise PicoError(f"{flag} {p}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise PicoError(f"{flag} {p} cannot be written (permission denied)")


def make_output_dir(path, flag: str = "--out") -> None:
    """Create an output folder (and its parents), or refuse in one line before any work."""
    from pathlib import Path

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PicoError(f"{flag} {path} cannot be created ({exc.strerror or exc})") from None
