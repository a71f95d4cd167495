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


def fetch_zip_folder(url, destination, inner, timeout=60):
    """Download the zip at `url` (http(s) or file://) and place its folder `inner` at
    `destination`, which appears only once complete; on any failure nothing is left behind
    (no zip, no partial folder, no empty parent folder) and the error propagates."""
    import shutil
    import urllib.request
    import zipfile

    destination = Path(destination)
    created = make_folders(destination.parent)
    tmp_zip = temporary_download_path(destination.with_name(destination.name + ".zip"))
    tmp_dir = temporary_download_path(destination)
    try:  # the folder is renamed into place whole, so a reader never sees half of it
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp_zip, "wb") as f:
            shutil.copyfileobj(response, f)
        with zipfile.ZipFile(tmp_zip) as archive:
            archive.extractall(tmp_dir)
        if not (tmp_dir / inner).is_dir():
            raise ValueError(f"the zip holds no {inner}/ folder")
        os.replace(tmp_dir / inner, destination)
    finally:
        tmp_zip.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not destination.exists():
            remove_empty_folders(created)
