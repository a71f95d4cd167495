"""One writer per output folder: an flock on OUT/.lock, released by the kernel when the process
ends however it ends (kill -9 included), so a lock is never stale.

A single run and a --pack take it exclusively; Slurm array tasks take it shared (they write
different parts of one folder at the same time) and each part's own lock exclusively while making
it, so a duplicate task cannot write the same part. Whoever fails to get a lock is told, in one
line, which process holds it: each holder leaves a card beside the lock file (`.lock.HOST-PID-N`:
role, host, pid, start time), itself locked while the holder lives, so a card left by a killed
process is known for what it is and swept away.

flock works across the nodes of NFS (Linux emulates it with POSIX locks) and of Lustre mounted with
`-o flock`; on a file system without locks the run says so and carries on unlocked.
"""

import fcntl
import itertools
import os
import sys
import time
from pathlib import Path

LOCK = ".lock"

_held = []  # file descriptors of the locks and cards this process holds
_cards = itertools.count()  # card names: one per lock held, even two in one process


def _close_in_child():
    # A forked tokenizer worker inherits the descriptors; closing its copies leaves the locks
    # with this process, so a worker outliving a killed run never holds the folder.
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
        self.fd = self.card = None

    def __enter__(self):
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a read-only folder: whatever the run writes will say so
                return self.unlocked(e)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Locked(f"{self.what} is in use by {self.holders()}; wait for it to end, or "
                             "stop it, then run this command again") from None
            except OSError as e:  # a file system without locks
                os.close(fd)
                return self.unlocked(e)
            # an exclusive holder deletes the file before it lets go: if that happened between our
            # open and flock, we locked a deleted file, which locks nothing: take the new one
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self.fd = fd
        _held.append(fd)
        self.holders()  # sweeps the cards of killed holders
        self.card = self.leave_card()
        return self

    def unlocked(self, error):
        print(f"warning: cannot lock {self.path} ({error.strerror}): make sure no other process "
              "writes here at the same time", file=sys.stderr)
        return self

    def leave_card(self):
        """Our card, locked before it appears under its name (renamed into place)."""
        card = self.path.with_name(f"{self.path.name}.{os.uname().nodename}-{os.getpid()}-"
                                   f"{next(_cards)}")
        tmp = card.with_name(card.name + ".new")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.write(fd, f"{self.role} (host {os.uname().nodename}, pid {os.getpid()}, since "
                     f"{since})".encode())
        os.replace(tmp, card)
        _held.append(fd)
        return card, fd

    def holders(self):
        """The cards of the processes holding the lock; cards of dead ones are deleted."""
        alive = []
        for card in sorted(self.path.parent.glob(f"{self.path.name}.*")):
            if card.suffix == ".new":  # a card being made
                continue
            try:
                fd = os.open(card, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                card.unlink(missing_ok=True)  # its holder is gone
            except BlockingIOError:
                alive.append(os.read(fd, 4096).decode(errors="replace").strip())
            finally:
                os.close(fd)
        if not alive:
            return "another process (just starting or ending)"
        return alive[0] + (f" and {len(alive) - 1} more" if len(alive) > 1 else "")

    def remove_files(self):
        """Delete the lock file (exclusive holders only: nobody else can be using it) and card."""
        if self.card:
            self.card[0].unlink(missing_ok=True)
        if self.fd is not None and not self.shared:
            self.path.unlink(missing_ok=True)

    def __exit__(self, *exc):
        self.remove_files()
        for fd in (self.card[1] if self.card else None, self.fd):
            if fd is not None:
                _held.remove(fd)
                os.close(fd)  # releases the lock
        self.fd = self.card = None


def _same_file(fd, path):
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
