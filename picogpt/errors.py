"""One exception type for user-facing failures, the CLI wrapper that prints it as one line, and the checks
every command shares: flag values, output files, argument types."""

from __future__ import annotations

import functools
import math
import numbers
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
INT64_MAX = 2**63 - 1


class PicoError(Exception):
    """A failure caused by the user's input or environment: printed as one line, exit code 1."""


class PicoTypeError(PicoError, TypeError):
    """An API argument of the wrong type: a PicoError for the CLIs, a TypeError for Python callers."""


def cli_errors(func: F) -> F:
    """Turn PicoError (and Ctrl-C) into a one-line message on stderr and a non-zero exit.

    Click already handles its own usage errors (exit 2); everything the user can cause
    beyond that is raised as PicoError deep inside and reported here without a traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # A shell starts background jobs with SIGINT ignored, and Python then keeps it ignored: Ctrl-C (or
        # the SIGINT a supervisor sends) must still stop a long-running command.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        stdout = sys.stdout
        sys.stdout = GuardedStdout(stdout) if stdout is not None else stdout
        try:
            check_params(kwargs)
            result = func(*args, **kwargs)
            sys.stdout.flush()  # a full or closed stdout fails here, as one line, not at interpreter exit
            return result
        except StdoutError as exc:
            silence(stdout)
            fail(str(exc), 1)
        except PicoError as exc:
            fail(str(exc), 1)
        except KeyboardInterrupt:
            fail("interrupted", 130, prefix="")
        finally:
            sys.stdout = stdout

    return wrapper  # type: ignore[return-value]


def one_line_usage(base: type) -> type:
    """A click Command or Group class whose usage errors (a flag's bad value, an unknown option, a missing
    argument) print as one `error:` line naming it, exit 2, instead of click's usage block."""

    class OneLineUsage(base):
        def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
                 standalone_mode: bool = True, **extra: Any) -> Any:
            import click

            if not standalone_mode:
                return super().main(args, prog_name, complete_var, standalone_mode, **extra)
            try:
                code = super().main(args, prog_name, complete_var, False, **extra)
            except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:  # a bare group: its help
                exc.show()
                sys.exit(exc.exit_code)
            except click.UsageError as exc:
                where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
                fail(exc.format_message() + where, exc.exit_code)
            except click.ClickException as exc:
                fail(exc.format_message(), exc.exit_code)
            except click.exceptions.Abort:  # Ctrl-C before the command started
                fail("interrupted", 130, prefix="")
            sys.exit(code if isinstance(code, int) else 0)  # an int here is click's exit code (--help: 0)

    OneLineUsage.__name__ = base.__name__
    return OneLineUsage


def os_cause(exc: BaseException | None) -> OSError | None:
    """The file error behind an exception (itself, or what it wraps): a library's "error generating the
    dataset" or torch's RuntimeError from a full disk, so the one-line message can say why."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.strerror:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class StdoutError(PicoError):
    """Standard output cannot be written (`> /dev/full`, a closed pipe)."""


class GuardedStdout:
    """sys.stdout, with a failed write or flush turned into a StdoutError (one line, not a traceback)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise StdoutError(f"standard output cannot be written ({exc.strerror or exc})") from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise StdoutError(f"standard output cannot be written ({exc.strerror or exc})") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def silence(stream: Any) -> None:
    """Point a broken stdout at /dev/null, so the interpreter's own flush at exit adds no second message."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def fail(message: str, code: int, prefix: str = "error: ") -> None:
    """Print `message` as one line on stderr and exit."""
    print(f"{prefix}{message}", file=sys.stderr)
    sys.exit(code)


def path_type():
    """click's Path type, except that an empty value stays "" (click would read it as ".", the current folder):
    `check_params` then refuses it, naming the flag."""
    import click

    class PathOrEmpty(click.Path):
        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            return "" if value == "" else super().convert(value, param, ctx)

    from pathlib import Path

    return PathOrEmpty(path_type=Path)


def check_params(values: dict[str, Any]) -> None:
    """Every float flag finite, every integer flag within 64 bits, no empty path: refused up front, naming the
    flag (values of the running click command's parameters)."""
    import click

    ctx = click.get_current_context(silent=True)
    params = {p.name: p for p in ctx.command.params} if ctx is not None else {}
    for name, value in values.items():
        p = params.get(name)
        flag = (max(p.opts, key=len) if isinstance(p, click.Option) else name.upper()) if p else name
        for v in value if isinstance(value, tuple) else (value,):
            check_number(v, flag)
            if v == "" and p is not None and isinstance(p.type, click.Path):
                raise PicoError(f"{flag} is empty: give a path")


def check_number(value: Any, flag: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PicoError(f"{flag} must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise PicoError(f"{flag} {value} is out of range: it must fit in 64 bits (at most {INT64_MAX})")


def check_type(value: Any, name: str, kind: str, allow_none: bool = False) -> None:
    """Refuse an API argument of the wrong type, saying which argument and what it must be.

    `kind`: "int" (a whole number, not a bool), "number" (int or float, not a bool) or "str"."""
    if value is None and allow_none:
        return
    ok = {"int": isinstance(value, numbers.Integral),
          "number": isinstance(value, numbers.Real),
          "str": isinstance(value, str)}[kind] and not isinstance(value, bool)
    if not ok:
        what = {"int": "a whole number", "number": "a number", "str": "a string"}[kind]
        raise PicoTypeError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r} "
                            f"({type(value).__name__})")


def check_writable_file(path, flag: str) -> None:
    """Refuse, before any work, an output file that cannot be written: no folder, a read-only one, a folder."""
    from pathlib import Path

    if path is None:
        return
    p = Path(path)
    if not str(path):
        raise PicoError(f"{flag} is empty: give a file name")
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

    if not str(path):
        raise PicoError(f"{flag} is empty: give a folder")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PicoError(f"{flag} {path} cannot be created ({exc.strerror or exc})") from None
