"""One writer per output folder: an flock on OUT/.lock, released by the kernel when the process
ends however it ends (kill -9 included), so a lock is never stale.

A single run and a --pack take it exclusively (and delete the file when done); Slurm array tasks
take it shared (they write different parts of one folder at the same time) and each part's own
lock exclusively while making it, so a duplicate task cannot write the same part. Whoever fails to get a lock is told, in one
line, which process holds it: each holder writes its host, pid, start time and role into the file.

flock works across the nodes of NFS (Linux emulates it with POSIX locks) and of Lustre mounted with
`-o flock`; on a file system without locks the run says so and carries on unlocked.
"""

import fcntl
import os
import sys
import time
from pathlib import Path

LOCK = ".lock"

_held = []  # file descriptors of the locks this process holds


def _close_in_child():
    # A forked tokenizer worker inherits the descriptors; closing its copies leaves the lock with
    # this process, so a worker outliving a killed run never holds the folder.
    for fd in _held:
        os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class Locked(Exception):
    """Another process holds the lock; the message names it."""


class FolderLock:
    """`with FolderLock(path, role, shared=False):` holds `path` (a lock file) or raises Locked."""

    def __init__(self, path, role, shared=False, what=None):
        self.path, self.role, self.shared = Path(path), role, shared
        self.what = what or str(self.path.parent)
        self.fd = None

    def __enter__(self):
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")[0].strip()
                os.close(fd)
                raise Locked(f"{self.what} is in use by {holder or 'another process'}; wait for it "
                             "to end, or stop it, then run this command again") from None
            except OSError as e:  # a file system without locks
                print(f"warning: cannot lock {self.path} ({e.strerror}): make sure no other "
                      "process writes here at the same time", file=sys.stderr)
                os.close(fd)
                return self
            # an exclusive holder deletes the file before it lets go: if that happened between our
            # open and flock, we locked a deleted file, which locks nothing: take the new one
            if _same_file(fd, self.path):
                break
            os.close(fd)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.role} (host {os.uname().nodename}, pid {os.getpid()}, since "
                      f"{since})\n".encode(), 0)
        self.fd = fd
        _held.append(fd)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            if not self.shared:  # no one else holds it: leave no lock file behind
                self.path.unlink(missing_ok=True)
            _held.remove(self.fd)
            os.close(self.fd)  # releases the lock
            self.fd = None


def _same_file(fd, path):
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
