"""Downloads that never leave a half-written file or an empty folder behind.

    created = make_folders(path.parent)
    tmp = temporary_download_path(path)          # write here, then os.replace(tmp, path)
    ... on failure: tmp.unlink(missing_ok=True); remove_empty_folders(created)
"""

import os
import socket
from pathlib import Path


def make_folders(folder):
    """mkdir -p `folder`; the folders it created, deepest first."""
    folder = Path(folder)
    created = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_folders(folders):
    """Remove `folders` (deepest first) where they are still empty: another process may have
    written into one meanwhile, and its file stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def temporary_download_path(path):
    """Where a download is written before its rename: named after this host and process, so
    processes on several nodes sharing one disk never write into the same file."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
