"""One writer per output folder: an flock on OUT/.lock, released by the kernel when the process
ends however it ends (kill -9 included), so a lock is never stale.

A single run and a --pack take it exclusively; Slurm array tasks take it shared (they write
different parts of one folder at the same time) and each part's own lock exclusively while making
it, so a duplicate task cannot write the same part. Whoever fails to get a lock is told, in one
line, which process holds it: each holder leaves a card beside the lock file (`.lock.HOST-PID-N`:
role, host, pid, start time), itself locked while the holder lives, so a card left by a killed
process is known for what it is and swept away.

Every user who can write the folder takes the lock: the lock file is made with the umask's mode
(group-writable in a shared project folder with umask 002), and one made by another user that we
may only read is locked through a read-only descriptor (flock does not need write access).

flock works across the nodes of NFS (Linux emulates it with POSIX locks) and of Lustre mounted with
`-o flock`; on a file system without locks the run says so, once, and carries on unlocked. Two
cases the lock cannot see, said where they matter: NFSv3 keeps the lock of a crashed client until
that client reboots (or the server's lock manager drops it), so a holder on a dead node can
outlive it; and mounts whose flock is node-local (NFS `local_lock=flock|all`, Lustre `localflock`)
keep apart only the runs of one node.
"""

import errno
import fcntl
import itertools
import os
import sys
import time
from contextlib import suppress
from pathlib import Path

LOCK = ".lock"
MOUNTS = "/proc/self/mounts"
# flock errors that mean "this file system cannot lock", not "someone holds it"
NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
NODE_LOCAL_OPTIONS = ("local_lock=flock", "local_lock=all", "localflock")

_held = []  # file descriptors of the locks and cards this process holds
_cards = itertools.count()  # card names: one per lock held, even two in one process
_warned = set()  # kinds of warning said: once a process, not once per part of an array task


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
            fd = self.open()
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holders = self.holders()
                raise Locked(f"{self.what} is in use by {holders}; wait for it to end, or "
                             f"stop it, then run this command again{stale_note(holders)}") from None
            except OSError as e:
                os.close(fd)
                if e.errno in NO_LOCKING:
                    return self.unlocked(e)
                raise Locked(f"cannot lock {self.path} ({e.strerror}): this file system wants "
                             "write access to it (NFS does): make it writable by your group "
                             "(chmod g+w), or delete it while no run uses the folder") from None
            # an exclusive holder deletes the file before it lets go: if that happened between our
            # open and flock, we locked a deleted file, which locks nothing: take the new one
            if _same_file(fd, self.path):
                break
            os.close(fd)
        self.fd = fd
        _held.append(fd)
        option = node_local_locking(self.path.parent)
        if option:
            warn_once("node-local", f"warning: {self.path.parent} is mounted with {option}: its "
                      "locks hold on this node only, so make sure no run on another node writes "
                      "to the folder")
        self.holders()  # sweeps the cards of killed holders
        self.card = self.leave_card()
        return self

    def open(self):
        """The lock file, made if missing; read-only if another user made it and we may not
        write it (it is the folder we must be able to write, not the file)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides
        except PermissionError:
            return os.open(self.path, os.O_RDONLY)

    def unlocked(self, error):
        warn_once("unlocked", f"warning: cannot lock {self.path} ({error.strerror}): this file "
                  "system has no locks; make sure no other process writes to the folder at the "
                  "same time")
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
                with suppress(OSError):  # a sticky folder keeps another user's card: harmless
                    card.unlink(missing_ok=True)  # its holder is gone
            except BlockingIOError:
                alive.append(os.read(fd, 4096).decode(errors="replace").strip())
            finally:
                os.close(fd)
        if not alive:
            return "another process (just starting or ending)"
        return alive[0] + (f" and {len(alive) - 1} more" if len(alive) > 1 else "")

    def remove_files(self):
        """Delete the lock file (exclusive holders only: nobody else can be using it) and card.
        Quietly: on a folder gone read-only the error that ends the run is the one to tell."""
        with suppress(OSError):
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


def warn_once(kind, message):
    if kind not in _warned:
        _warned.add(kind)
        print(message, file=sys.stderr)


def stale_note(holders):
    """For a holder on another node: how its lock can outlive it."""
    if f"(host {os.uname().nodename}," in holders or "(host " not in holders:
        return ""
    return ("; if that host is down, its lock is stale on an NFSv3 folder until the host "
            "reboots or the NFS server's lock manager is restarted")


def node_local_locking(folder):
    """The mount option that makes flock node-local where `folder` lives, else None."""
    folder, best, options = os.path.realpath(folder), "", ""
    try:
        with open(MOUNTS) as f:
            for line in f:
                _, point, _, opts = line.split()[:4]
                point = point.replace("\\040", " ")
                inside = folder == point or folder.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, options = point, opts
    except OSError:  # not Linux
        return None
    return next((o for o in options.split(",") if o in NODE_LOCAL_OPTIONS), None)


def _same_file(fd, path):
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
