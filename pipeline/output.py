"""The output folder on a shared cluster's file systems: made, checked, and its failures told.

- Only what a run made is removed after it fails: a folder the user created (its mode, setgid
  group, ACLs, Lustre striping) stays, even empty.
- Writability is checked before the source is read: a read-only, foreign or full folder fails at
  once, not after a shard's worth of downloading and tokenizing.
- An OSError while writing (disk full, quota, read-only, permission) is one line naming the path
  and the errno. A full disk or quota exits EXIT_NO_SPACE, like a hub outage: every finished shard
  is kept, and the same command, run again once there is space, resumes with identical bytes.
"""

import errno
import os
from contextlib import suppress

EXIT_NO_SPACE = 75  # EX_TEMPFAIL (sysexits.h): try again later; bad input exits 1
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
ADVICE = {
    errno.EROFS: "the file system is mounted read-only: use another --out",
    errno.EACCES: "you may not write there: use another --out, or ask its owner for write access "
                  "(a group's folder wants mode g+ws and umask 002)",
}
ADVICE[errno.EPERM] = ADVICE[errno.EACCES]


def make_folder(out):
    """Create `out` and its missing parents; return the folders made, innermost first."""
    made = [folder for folder in [out, *out.parents] if not folder.exists()]
    out.mkdir(parents=True, exist_ok=True)
    return made


def remove_if_empty(folders):
    """After a failure: the folders a run made (innermost first), those it left empty."""
    for folder in folders:
        with suppress(OSError):
            folder.rmdir()


def check_writable(out):
    """Create, write and delete a file in `out`: raises the OSError a shard would meet."""
    probe = out / f".write-test-{os.uname().nodename}-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\n")  # a full file system refuses the first byte
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as e:  # told about the folder, not the probe
        raise OSError(e.errno, e.strerror, str(out)) from None


def is_output_side(error, out):
    """Whether an OSError happened writing `out` (or making it), or is a full disk anywhere (the
    hub's cache): write() names no file."""
    if error.errno in NO_SPACE:
        return True
    if error.filename is None:
        return error.errno == errno.EROFS
    path, out = os.path.abspath(error.filename), os.path.abspath(out)
    return os.path.commonpath([path, out]) in (path, out)


def no_space_behind(error, causes):
    """The full-disk OSError among `causes` of `error` (a library wraps what it met), or None."""
    return next((c for c in causes(error, hidden=True)
                 if isinstance(c, OSError) and c.errno in NO_SPACE), None)


def output_failure(error, out):
    """(one line, exit status) for an OSError of the output side."""
    name = errno.errorcode.get(error.errno, f"errno {error.errno}")
    where = error.filename or out
    if error.errno in NO_SPACE:
        what = "disk quota exceeded" if error.errno == errno.EDQUOT else "no space left on device"
        return (f"{where}: {what} ({name}); every finished shard is kept: free some space (or "
                "raise the quota), then run the same command again to resume", EXIT_NO_SPACE)
    advice = ADVICE.get(error.errno, "every finished shard is kept: fix it, then run the same "
                                     "command again to resume")
    return f"{where}: {error.strerror} ({name}); {advice}", 1

