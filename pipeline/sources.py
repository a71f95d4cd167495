"""Document sources: a stream of texts in a fixed order, with a fingerprint that names exactly it.

A source is one of
- a local file, folder or glob of `.jsonl`, `.json`, `.parquet`, `.txt` (text formats may be
  gzipped: `.jsonl.gz`). Files are read in sorted path order. A `.txt` file is ONE document (a
  book, an article, Tiny Shakespeare); a `.jsonl`/`.json`/`.parquet` record is one document;
- `hf:NAME[:SUBSET]`, a Hugging Face hub dataset, pinned to the commit it had when the output was
  started so a resume reads the same documents. Its data files are read directly from the hub
  (`hf://` paths through fsspec), streamed, never downloaded whole; parquet footers let a resume
  or a Slurm array task start at any file or row group without reading what comes before. A hub
  dataset whose files are in other formats is streamed through `datasets` instead.

Files are read with plain readers rather than `datasets` builders: faster (measured here: jsonl
285 vs 91 MB/s, parquet 209 vs 150 MB/s), no cache folder, and errors can name the file and line
of a bad record.
"""

import glob
import hashlib
import json
import os
from pathlib import Path, PurePosixPath

import fsspec

FINEWEB_EDU = "hf:HuggingFaceFW/fineweb-edu:sample-10BT"
KINDS = (".jsonl", ".json", ".parquet", ".txt")


class SourceError(Exception):
    """Bad input: the message is one line that names the file/flag and says what to do."""


def open_source(spec, text_field="text", split="train", revision=None):
    """A FileSource (local files, or a hub dataset's files), else a HubStreamSource."""
    if spec.startswith("hf:"):
        return open_hub_source(spec, text_field, split, revision)
    files = find_local_files(spec)
    return FileSource(spec, files, text_field, fingerprint=local_fingerprint(files, text_field))


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


def local_fingerprint(files, text_field):
    """Names (relative to their common folder), sizes and mtimes: cheap, and changes with any edit."""
    root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    entries = [[os.path.relpath(os.path.abspath(f), root), os.stat(f).st_size,
                os.stat(f).st_mtime_ns] for f in files]
    blob = json.dumps({"files": entries, "text_field": text_field}).encode()
    return "local:" + hashlib.sha256(blob).hexdigest()


class FileSource:
    """Documents from an ordered list of files (local paths or hf:// URLs)."""

    def __init__(self, spec, files, text_field, fingerprint, revision=None, num_documents=None):
        self.spec, self.files, self.text_field = spec, files, text_field
        self.fingerprint, self.revision, self.num_documents = fingerprint, revision, num_documents

    def documents(self, start=0):
        """All documents in order, from document number `start` (for resuming)."""
        seen = 0
        for path in self.files:
            if start > 0:
                n = self.count_documents(path)
                if n <= start:
                    start -= n
                    seen += n
                    continue
            for text in self.file_documents(path, skip=start):
                seen += 1
                yield text
            start = 0
        if seen == 0:
            raise SourceError(f"--source {self.spec}: no documents found (empty files?)")

    def file_documents(self, path, skip=0):
        """The documents of one file, after skipping its first `skip`."""
        kind = file_kind(path)
        if kind == ".txt":
            yield from self._read_txt(path, skip)
        elif kind == ".parquet":
            yield from self._read_parquet(path, skip)
        elif kind == ".json" and self._is_json_array(path):
            yield from self._read_json_array(path, skip)
        else:  # .jsonl, and .json holding one object per line (as `datasets` accepts too)
            yield from self._read_jsonl(path, skip)

    def count_documents(self, path):
        kind = file_kind(path)
        if kind == ".txt":
            return 1
        if kind == ".parquet":
            import pyarrow.parquet as pq
            with fsspec.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        if kind == ".json" and self._is_json_array(path):
            return sum(1 for _ in self._read_json_array(path, 0))
        with _open_text(path) as f:
            return sum(1 for line in f if line.strip())

    def _text(self, record, where):
        if not isinstance(record, dict) or self.text_field not in record:
            fields = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
            raise SourceError(f"{where}: no field {self.text_field!r} (fields: {fields}); "
                              "pass --text-field NAME")
        text = record[self.text_field]
        if not isinstance(text, str):
            raise SourceError(f"{where}: field {self.text_field!r} is {type(text).__name__}, "
                              "not a string")
        return text

    def _read_jsonl(self, path, skip):
        try:
            with _open_text(path) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    if skip:
                        skip -= 1
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise SourceError(f"{path}:{lineno}: bad JSON line ({e.msg}); fix or "
                                          "remove that line") from None
                    yield self._text(record, f"{path}:{lineno}")
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    @staticmethod
    def _is_json_array(path):
        with _open_text(path) as f:
            return f.read(4096).lstrip().startswith("[")

    def _read_json_array(self, path, skip):
        try:
            with _open_text(path) as f:
                records = json.load(f)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}:{e.lineno}: bad JSON ({e.msg})") from None
        for i, record in enumerate(records[skip:], skip):
            yield self._text(record, f"{path}[{i}]")

    def _read_parquet(self, path, skip):
        import pyarrow.parquet as pq
        with fsspec.open(path, "rb") as f:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet bytes
                raise SourceError(f"{path}: not a readable parquet file ({e})") from None
            names = pf.schema_arrow.names
            if self.text_field not in names:
                raise SourceError(f"{path}: no column {self.text_field!r} (columns: "
                                  f"{', '.join(names)}); pass --text-field NAME")
            # Skip whole row groups from the footer, then read one row group at a time: bounded
            # memory, and on the hub only the bytes of the groups we need are fetched.
            for group in range(pf.num_row_groups):
                rows = pf.metadata.row_group(group).num_rows
                if skip >= rows:
                    skip -= rows
                    continue
                column = pf.read_row_group(group, columns=[self.text_field]).column(0)
                for i, text in enumerate(column.to_pylist()[skip:], skip):
                    if not isinstance(text, str):
                        raise SourceError(f"{path}: row group {group} row {i}: column "
                                          f"{self.text_field!r} is {type(text).__name__}, not a string")
                    yield text
                skip = 0

    @staticmethod
    def _read_txt(path, skip):
        if skip:
            return
        try:
            with _open_text(path) as f:
                yield f.read()
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _open_text(path):
    return fsspec.open(path, "rt", compression="infer", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Hugging Face hub

def parse_hub_spec(spec):
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 2:
        raise SourceError(f"--source {spec}: expected hf:NAME or hf:NAME:SUBSET")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def hub_error(spec, name, e):
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    return SourceError(f"--source {spec}: cannot read dataset {name!r} from the Hugging Face hub "
                       f"({type(e).__name__}: {first_line}); check the network and the name, or "
                       "pass a local file/folder")


def open_hub_source(spec, text_field, split, revision=None):
    import datasets
    from huggingface_hub import HfApi

    name, subset = parse_hub_spec(spec)
    try:
        revision = revision or HfApi().dataset_info(name, timeout=20).sha
        builder = datasets.load_dataset_builder(name, subset, revision=revision)
    except Exception as e:  # offline, unknown name or subset, gated: all end the same way
        raise hub_error(spec, name, e) from None
    fingerprint = f"hf:{name}:{subset or ''}:{split}@{revision}#{text_field}"
    splits = builder.info.splits
    num_documents = splits[split].num_examples if splits and split in splits else None
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise SourceError(f"--source {spec}: no split {split!r} (splits: "
                          f"{', '.join(data_files) or 'none listed'}); pass --split NAME")
    files = [str(f) for f in data_files[split]]
    if files and all(file_kind(f) for f in files):
        return FileSource(spec, sorted(files), text_field, fingerprint, revision, num_documents)
    return HubStreamSource(spec, name, subset, split, text_field, fingerprint, revision, num_documents)


class HubStreamSource:
    """A hub dataset in formats we do not read ourselves, streamed by `datasets`.

    A resume has to stream past the finished documents; Slurm arrays need a FileSource.
    """
    files = None

    def __init__(self, spec, name, subset, split, text_field, fingerprint, revision, num_documents):
        self.spec, self.name, self.text_field = spec, name, text_field
        self.fingerprint, self.revision, self.num_documents = fingerprint, revision, num_documents
        import datasets
        try:
            self.dataset = datasets.load_dataset(name, subset, split=split, streaming=True,
                                                 revision=revision)
        except Exception as e:
            raise hub_error(spec, name, e) from None

    def documents(self, start=0):
        seen = 0
        try:
            for record in self.dataset.skip(start) if start else self.dataset:
                if self.text_field not in record:
                    raise SourceError(f"--source {self.spec}: no field {self.text_field!r} "
                                      f"(fields: {', '.join(record)}); pass --text-field NAME")
                seen += 1
                yield record[self.text_field]
        except SourceError:
            raise
        except Exception as e:
            raise hub_error(self.spec, self.name, e) from None
        if seen == 0 and start == 0:
            raise SourceError(f"--source {self.spec}: no documents")
