"""The lock that keeps two runs of one instance out of its resume folder: an exclusive ``flock`` on
``<folder>/lock``, with the holder's PID inside, which the kernel releases when the holder ends however it ends."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

__all__ = ["LOCK", "NO_LOCKS", "hold"]

LOCK = "lock"  # held (flock) by the run using the folder, with its PID inside
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}  # flock's errors on filesystems without file locks

_HELD: set[int] = set()  # this process's lock files: a forked child (a DataLoader worker) closes its copies, which
# would otherwise share the lock and keep it after this process ends


def _close_held() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held)


@contextlib.contextmanager
def hold(folder: Path):
    """Use the resume folder ``folder`` alone, creating it: an exclusive ``flock`` on its lock file, which the
    kernel releases when the holder ends however it ends (no stale lock); another run gets one line with the
    holder's PID. Temporary files a killed run left behind are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"{folder} is in use by PID {holder} (another run of this instance); wait for it or stop it"
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno not in NO_LOCKS:
                raise
            raise ValueError(
                f"cannot lock {path}: its filesystem does not support file locks ({exc.strerror}; e.g. Lustre mounted "
                "with noflock, NFS without a lock daemon); mount it with locks (Lustre: -o flock, or -o localflock "
                "when one node runs each instance) or put the workspace on a filesystem with them; DVC needs them too "
                "(or: dvc config core.hardlink_lock true)"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # else the holder before deleted the folder as we locked: lock the new file
        os.close(fd)
        folder.mkdir(parents=True, exist_ok=True)
    _HELD.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)
