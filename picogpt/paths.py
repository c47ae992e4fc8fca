"""Output paths that never destroy what is not ours: checked against the inputs and the other outputs before any
work, recognised as our own earlier output before being replaced, written atomically; one run per folder (a
lock held for the run's lifetime); work folders of killed processes removed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from picogpt.errors import PicoError, check_writable_file

# What marks a JSON or Markdown report as written by picogpt (PNG plots carry it as their "Software" text).
MARKER_KEY = "written_by"
MARKDOWN_MARKER = "<!-- written by picogpt -->"


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if `a` and `b` name the same file (through links and relative paths), existing or not."""
    try:
        if Path(a).exists() and Path(b).exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return Path(a).resolve() == Path(b).resolve()


def is_our_report(path: Path) -> bool:
    """A JSON, Markdown or PNG report picogpt wrote earlier (so it may be replaced)."""
    try:
        head = path.read_bytes()[:1 << 16]
    except OSError:
        return False
    if head.startswith(b"\x89PNG"):
        return b"Software\x00picogpt" in head
    if head.startswith(MARKDOWN_MARKER.encode()):
        return True
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    if isinstance(report, list):  # picogpt-bench quality's rows: each a scored run or file
        return bool(report) and all(isinstance(r, dict) and "val_loss" in r for r in report)
    if isinstance(report, dict) and {"schema", "benchmark", "command", "machine", "rows"} <= report.keys():
        return True  # a benchmark's result file (bench/results.py)
    return isinstance(report, dict) and str(report.get(MARKER_KEY, "")).startswith("picogpt")


def check_output(path: str | os.PathLike | None, flag: str, inputs: Iterable[tuple[str, object]] = (),
                 outputs: Iterable[tuple[str, object]] = (), ours: Callable[[Path], bool] | None = is_our_report
                 ) -> None:
    """Refuse, before any work, an output file that cannot be written, that is one of the `inputs`
    ((flag, path) pairs) or another output, or that exists and was not written by picogpt (`ours`)."""
    if path is None:
        return
    check_writable_file(path, flag)
    p = Path(path)
    for what, other in inputs:
        if other is not None and str(other) and same_path(p, other):
            raise PicoError(f"{flag} {p} is the input {what}: writing it would destroy it; choose another path")
    for what, other in outputs:
        if other is not None and str(other) and same_path(p, other):
            raise PicoError(f"{flag} {p} is also the {what} output: give each output its own path")
    if p.exists() and ours is not None and not ours(p):
        raise PicoError(f"{flag} {p} exists and was not written by picogpt: refusing to overwrite it "
                        "(remove it, or choose another path)")


def write_atomic(path: str | os.PathLike, data: bytes | str, flag: str) -> None:
    """Write `data` to a temp file beside `path`, then rename: a failure (a full disk) leaves the earlier file
    as it was and is one line naming the flag."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                                   suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise PicoError(f"{flag} {path} could not be written ({exc.strerror or exc}); "
                        "an earlier file there is kept") from None


def save_figure(fig, path: Path, tool: str, flag: str = "--plot") -> None:
    """Save a matplotlib figure as a PNG marked as ours, atomically (a full disk keeps the earlier plot)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": tool})
    plt.close(fig)
    write_atomic(path, buf.getvalue(), flag)


def report_json(payload: dict, tool: str) -> str:
    """A JSON report that says which tool wrote it (so a later run may replace it, and nothing else)."""
    return json.dumps({MARKER_KEY: tool, **payload}, indent=2)


class RunLock:
    """An exclusive lock on a folder for a process's lifetime (fcntl.flock on FOLDER/.picogpt.lock): a second
    run on the same folder is refused at once, and the lock goes with the process, even after a kill -9."""

    NAME = ".picogpt.lock"

    def __init__(self, folder: Path, flag: str) -> None:
        import fcntl

        path = folder / self.NAME
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PicoError(f"{flag} {folder} cannot be locked ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            self.release()  # (a bare close would leave __del__ closing a number the OS may have reused)
            raise PicoError(f"{flag} {folder} is in use by another run (pid {holder}): wait for it to finish, "
                            f"or choose another {flag}") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def __del__(self) -> None:
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


def remove_stale_work_dirs(folder: Path, prefix: str) -> None:
    """Remove work folders `<prefix><pid>-*` of processes that are gone (kill -9 skips every cleanup); a
    folder whose process still runs, or whose name carries no pid, is left alone."""
    for d in folder.glob(f"{prefix}*"):
        pid = d.name[len(prefix):].split("-")[0]
        try:
            os.kill(int(pid), 0)
            continue  # that process is still running
        except (ValueError, OverflowError):
            continue  # not a name of ours
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            continue  # alive, another user's
