"""One writer per output folder: `kcolor prep` locks OUT, `kcolor fit` locks RUN_DIR.

    with lock.hold(Path("runs/a"), "kcolor fit", echo=print):
        ...  # a second `kcolor fit ... runs/a` stops at once:
        # "Error: runs/a: in use by kcolor fit, PID 4242 on host1; wait for it or stop it"

The lock is `flock` on FOLDER/.kcolor.lock. The kernel releases a flock when the last
descriptor of its holder closes, however the holder ends (kill -9 and out-of-memory
kills included), so a dead run never blocks the next one and no one has to guess from
a PID whether its holder still lives (PIDs are reused, PID files go stale). The file
records the holder's PID and host, only to name them in messages; a clean release
empties it, so a record found by the next holder means its writer died, which it
says. The file is never deleted: a process waiting on the old file and one creating
a new file would each hold "the" lock. Forked children (prep's workers) share the
lock; they die with their parent. On NFS, Linux maps flock to NFS byte-range locks,
which the server keeps across clients.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = ".kcolor.lock"
# a holder recorded as dead may still hold the lock for a moment: prep's workers get
# their SIGKILL when the parent dies but close their descriptors a little later
DEAD_HOLDER_WAIT = 2.0  # seconds


class LockError(Exception):
    """The folder is in use by another run, or cannot be locked (one line)."""


@contextlib.contextmanager
def hold(folder: Path, what: str, echo: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of `folder` (which must exist) for the `with` block.

    Args:
        what: the command, for the message of a second run ("kcolor fit").
        echo: told when a lock left by a dead process is taken over.
    Raises:
        LockError: another process holds it (naming its PID and host), or the lock
            file cannot be opened or locked.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise LockError(f"{path}: could not open the lock file ({e.strerror})") from None
    try:
        _acquire(fd, folder, what)
        previous = _read(fd)
        if previous and echo:
            echo(f"{folder}: taking over the lock left by {previous}, which is no longer running")
        _record(fd, f"{what}, PID {os.getpid()} on {socket.gethostname()}")
    except BaseException:
        os.close(fd)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # released cleanly: nothing for the next holder to report
        os.close(fd)  # this releases the flock


def holder(folder: Path) -> str:
    """The recorded holder of `folder`'s lock ('' when none is recorded)."""
    try:
        return Path(folder, LOCK_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _acquire(fd: int, folder: Path, what: str) -> None:
    deadline = time.monotonic() + DEAD_HOLDER_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            recorded = _read(fd)
            if _recorded_pid_is_dead(recorded) and time.monotonic() < deadline:
                time.sleep(0.05)  # its children are still closing the lock file
                continue
            raise LockError(
                f"{folder}: in use by {recorded or 'another ' + what}; "
                "wait for it to finish or stop it"
            ) from None
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise LockError(
                    f"{folder / LOCK_NAME}: this file system cannot lock files ({e.strerror})"
                ) from None
            raise LockError(f"{folder / LOCK_NAME}: could not lock it ({e.strerror})") from None


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _record(fd: int, text: str) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (text + "\n").encode(), 0)
    except OSError:
        pass  # a full disk: the lock holds all the same, only its record is missing


def _recorded_pid_is_dead(recorded: str) -> bool:
    """Whether the record names a process of this host that no longer exists."""
    try:
        rest = recorded.split(", PID ", 1)[1]
        pid_text, host = rest.split(" on ", 1)
        pid = int(pid_text)
    except (IndexError, ValueError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
