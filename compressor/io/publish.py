"""The output folder of a run: locked, staged inside itself, replaced as one unit.

A run takes an exclusive lock on the folder (flock on the folder itself, so no lock file is
left behind), writes everything into a staging folder inside it (the same file system, so
publishing is a rename even when the folder is a mount point), and publishes by moving the
previous run's files aside, moving the new ones in with report.json last, then deleting the
old set. A folder holding a report.json therefore holds one complete run. A failure, Ctrl-C or
SIGTERM at any point leaves the folder as it was (SIGTERM is turned into an exception while the
folder is held, so exporters' temporary folders are removed by their own `finally` blocks); a
run killed outright (SIGKILL, power loss) is repaired by the next run that takes the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

from compressor.errors import CompressorError

STAGING_PREFIX = ".compressor-staging-"
PREVIOUS_PREFIX = ".compressor-previous-"
RUN_INFO = "run.json"  # inside the staging folder: who is writing, and what it will publish
REPORT = "report.json"  # moved in last: its presence marks a complete set
# what a run writes besides its artifacts: with the artifact names, how the files of a run whose
# report.json predates the `files` list are recognized
RESULT_NAMES = {"report.json", "report.md", "report.html", "pareto.png", "recipe.yaml"}
DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) during a run: unwinds like Ctrl-C, so every `finally` cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class OutputFolder:
    """`with OutputFolder(out) as folder:` write into `folder.staging`, then `folder.publish()`."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.staging = Path()
        self._fd: int | None = None
        self._created: list[Path] = []
        self.published = False

    # -- lifetime ------------------------------------------------------------------------------------
    def __enter__(self) -> OutputFolder:
        out = self.out
        if out.exists() and not out.is_dir():
            raise CompressorError(f"output path {out} exists and is not a folder; choose another -o.")
        try:
            self._created = [p for p in (out, *out.absolute().parents) if not p.exists()][::-1]
            out.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            self._remove_created()
            raise CompressorError(f"output folder {out} is not writable ({e.strerror}); choose another folder "
                                  "with -o.") from None
        try:
            self._lock()
            self._repair()
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
            self._write_info([])
        except OSError as e:
            self._release()
            raise disk_error(e, out) or CompressorError(f"output folder {out} is not writable ({e.strerror}); "
                                                        "choose another folder with -o.") from None
        except BaseException:
            self._release()
            raise
        self._sigterm = sigterm_unwinds()
        self._sigterm.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._sigterm.__exit__(None, None, None)
        if exc is not None and self.published:  # a signal held during publishing arrives just after it
            exc.published = True  # type: ignore[attr-defined]
        self._release(failed=kind is not None)

    def _lock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompressorError(f"another compress run is writing to {self.out} ({self._other_run()}); wait "
                                  "for it to finish, or choose another folder with -o.") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):  # file systems without locks run unlocked
                raise CompressorError(f"output folder {self.out} cannot be locked ({e.strerror}); choose another "
                                      "folder with -o.") from None

    def _other_run(self) -> str:
        for staging in self.out.glob(f"{STAGING_PREFIX}*"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                info = json.loads((staging / RUN_INFO).read_text())
                return (f"pid {info['pid']} on {info['host']}, started {info['started']}: "
                        f"{' '.join(info['command'])[:200]}")
        return "its details are not readable yet"

    def _release(self, failed: bool = True) -> None:
        if self.staging != Path():
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if failed:
            self._remove_created()

    def _remove_created(self) -> None:
        """Folders this run created for -o (empty again after a failure) go, deepest first."""
        for p in reversed(self._created):
            with contextlib.suppress(OSError):
                p.rmdir()

    # -- SIGTERM -------------------------------------------------------------------------------------
    # -- publishing ----------------------------------------------------------------------------------
    def staged(self) -> list[str]:
        """What this run has written so far (artifacts), as the names they will publish under."""
        return sorted(p.name for p in self.staging.iterdir() if p.name != RUN_INFO)

    def publish(self, artifact_names: set[str], keep: set[Path]) -> list[Path]:
        """Replace the folder's previous results with the staged ones, as one unit.

        `artifact_names` are the files any target could write (model.onnx, baseline.pte, ...), to
        recognize a previous run whose report has no `files` list; `keep` (the run's own inputs)
        is never moved, whatever its name."""
        new = self.staged()
        if REPORT in new:  # the report goes in last: its presence marks a complete set
            new.remove(REPORT)
            new.append(REPORT)
        kept = {p.resolve() for p in keep}
        old = sorted(n for n in self._previous_results(artifact_names) | {n for n in new if (self.out / n).exists()}
                     if (self.out / n).resolve() not in kept)
        self._write_info(new)
        with _signals_held():
            previous = Path(tempfile.mkdtemp(prefix=PREVIOUS_PREFIX, dir=self.out))
            moved_in: list[str] = []
            try:
                for name in sorted(old, key=lambda n: n != REPORT):  # the old report leaves first
                    os.replace(self.out / name, previous / name)
                for name in new:
                    os.replace(self.staging / name, self.out / name)
                    moved_in.append(name)
            except OSError as e:
                _roll_back(self.out, previous, self.staging, moved_in)
                raise disk_error(e, self.out) or CompressorError(
                    f"publishing into {self.out} failed ({e.strerror}: {e.filename}); the folder was left as it "
                    "was. Check its permissions, or choose another folder with -o.") from None
            shutil.rmtree(previous, ignore_errors=True)
            self.published = True
        return [self.out / n for n in new]

    def _previous_results(self, artifact_names: set[str]) -> set[str]:
        """The files of the run published here before: its report's `files` list, or (a report from
        before that list) the names runs write. A folder without a report holds no earlier run."""
        report = self.out / REPORT
        if not report.exists():
            return set()
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            listed = json.loads(report.read_text()).get("files")
            if isinstance(listed, list):
                return {n for n in listed if isinstance(n, str) and "/" not in n and (self.out / n).exists()}
        return {p.name for p in self.out.iterdir() if p.name in RESULT_NAMES | artifact_names}

    def _write_info(self, files: list[str]) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "files": files}
        (self.staging / RUN_INFO).write_text(json.dumps(info))

    def _repair(self) -> None:
        """Finish or undo what a run killed outright left behind (we hold the lock, so it is dead)."""
        for previous in self.out.glob(f"{PREVIOUS_PREFIX}*"):
            if not (self.out / REPORT).exists():  # killed mid-publish: put the old set back
                staged = next(self.out.glob(f"{STAGING_PREFIX}*"), None)
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    for name in json.loads((staged / RUN_INFO).read_text())["files"] if staged else []:
                        _remove(self.out / name)
                for p in previous.iterdir():
                    if not (self.out / p.name).exists():
                        os.replace(p, self.out / p.name)
            shutil.rmtree(previous, ignore_errors=True)
        for staging in self.out.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(staging, ignore_errors=True)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (kill, timeout, a cancelled CI job) unwinds like Ctrl-C inside the block, where Python's
    default would end the process without running a single `finally` (temporary folders, a held lock)."""
    saved = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        saved = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        if saved is not None:
            signal.signal(signal.SIGTERM, saved)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT and SIGTERM during the few renames of publishing; they arrive right after.

    Python-level handlers, not a signal mask: a mask covers one thread, and the kernel hands a
    process signal to any thread (torch's, tqdm's) that does not block it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if pending:
            signal.raise_signal(pending[0])


def _roll_back(out: Path, previous: Path, staging: Path, moved_in: list[str]) -> None:
    """Undo a publish that failed midway; what cannot be moved back stays in `previous` for the
    next run's repair rather than being deleted."""
    for name in moved_in:
        with contextlib.suppress(OSError):
            os.replace(out / name, staging / name)
    for p in previous.iterdir():
        with contextlib.suppress(OSError):
            os.replace(p, out / p.name)
    with contextlib.suppress(OSError):
        previous.rmdir()


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def disk_error(e: OSError, out: Path) -> CompressorError | None:
    """A full disk or quota is the user's to fix, not a crash: the message names the folder."""
    if e.errno not in DISK_FULL:
        return None
    return CompressorError(f"no space left on the device of {out} ({e.strerror} while writing "
                           f"{Path(e.filename).name if e.filename else 'the results'}); nothing was published. "
                           "Free some space, or choose another folder with -o.")
