"""Document sources: a stream of texts in a fixed order, with a fingerprint that names exactly it.

A source is one of
- a local file, folder or glob of `.jsonl`, `.json`, `.parquet`, `.txt` (text formats may be
  gzipped: `.jsonl.gz`). Files are read in sorted path order. A local `.txt` file is ONE document
  (a book, an article, Tiny Shakespeare), or, with a document separator (`<|endoftext|>` in
  TinyStories-train.txt), the texts between separators; a `.jsonl`/`.json`/`.parquet` record is
  one document;
- `hf:NAME[:SUBSET]`, a Hugging Face hub dataset, pinned to the commit it had when the output was
  started so a resume reads the same documents: pipeline/hub_source.py. Its files are read by a
  FileSource too, through `hf://` paths.

This module names a source: its files, their kinds, its fingerprint, its error. The documents of
a list of files are pipeline/file_source.py's FileSource, each file read by pipeline/readers.py.
"""

import glob
import hashlib
import json
import os
from pathlib import Path, PurePosixPath

FINEWEB_EDU = "hf:HuggingFaceFW/fineweb-edu:sample-10BT"
KINDS = (".jsonl", ".json", ".parquet", ".txt")


class SourceError(Exception):
    """Bad input: the message is one line that names the file/flag and says what to do."""


def with_null_text(fingerprint, null_text):
    """NULLs read as empty documents make another token stream; the default leaves the
    fingerprint as it was before the choice existed, so older folders still match."""
    return fingerprint if null_text == "refuse" else f"{fingerprint}+null-text={null_text}"


def file_kind(path):
    """.jsonl, .json, .parquet or .txt from the name (a trailing .gz is fine for text), else None."""
    name = PurePosixPath(str(path)).name
    gzipped = name.endswith(".gz")
    suffix = PurePosixPath(name.removesuffix(".gz")).suffix
    if suffix not in KINDS or (gzipped and suffix == ".parquet"):
        return None
    return suffix


def find_local_files(spec):
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and file_kind(p))
        if not files:
            raise SourceError(f"--source {spec}: folder has no {'/'.join(KINDS)} files")
    elif path.is_file():
        if not file_kind(path):
            raise SourceError(f"--source {spec}: unsupported file type; use {', '.join(KINDS)} "
                              "(or hf:NAME[:SUBSET])")
        files = [path]
    elif glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                       if Path(p).is_file() and file_kind(p))
        if not files:
            raise SourceError(f"--source {spec}: glob matches no {'/'.join(KINDS)} files")
    else:
        raise SourceError(f"--source {spec}: no such file or folder (or use hf:NAME[:SUBSET] for a "
                          "hub dataset)")
    return [str(p) for p in files]


def local_fingerprint(files, text_field, doc_separator=None):
    """Names (relative to their common folder), sizes and mtimes: cheap, and changes with any edit."""
    root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    entries = [[os.path.relpath(os.path.abspath(f), root), os.stat(f).st_size,
                os.stat(f).st_mtime_ns] for f in files]
    identity = {"files": entries, "text_field": text_field}
    if doc_separator is not None:  # absent otherwise: folders made before the flag still match
        identity["doc_separator"] = doc_separator
    blob = json.dumps(identity).encode()
    return "local:" + hashlib.sha256(blob).hexdigest()


def is_hub_path(path):
    return str(path).startswith("hf://")
