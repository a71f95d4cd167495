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

Files are read with plain readers rather than `datasets` builders: faster (measured here: jsonl
285 vs 91 MB/s, parquet 209 vs 150 MB/s), no cache folder, and errors can name the file and line
of a bad record.
"""

import glob
import hashlib
import io
import itertools
import json
import os
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import fsspec

from pipeline.retry import (HubUnreachable, RetriesExhausted, TransientError, describe, http_status,
                            is_transient)

FINEWEB_EDU = "hf:HuggingFaceFW/fineweb-edu:sample-10BT"
KINDS = (".jsonl", ".json", ".parquet", ".txt")
# Parquet is read in batches of rows, through a buffer of a few MB: memory is bounded by the
# batch, not by the row group (a file written as one 2 GB row group reads like any other), and on
# the hub each buffer fill is one ranged request for the text column's bytes only.
PARQUET_BATCH_ROWS = 1024
PARQUET_BUFFER_BYTES = 8 << 20
TXT_BLOCK_CHARS = 1 << 20  # a local .txt with a separator is split as it streams


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


@contextmanager
def hub_file_errors(path):
    """A hub failure that retrying cannot cure (a 404, say): one line naming the file."""
    try:
        yield
    except (SourceError, RetriesExhausted, HubUnreachable):
        raise
    except Exception as e:
        raise SourceError(f"{path}: cannot read it from the hub ({describe(e)})") from None


class FileSource:
    """Documents from an ordered list of files (local paths or hf:// URLs)."""

    def __init__(self, spec, files, text_field, fingerprint, revision=None, num_documents=None,
                 sizes=None, doc_separator=None, retry=None):
        self.spec, self.files, self.text_field = spec, files, text_field
        self.fingerprint, self.revision, self.num_documents = fingerprint, revision, num_documents
        self.sizes, self.doc_separator, self.retry = sizes, doc_separator, retry
        self.num_bytes = sum(sizes) if sizes else None
        self.null_text = "refuse"
        self._file_index = 0  # the file documents() is in, and how much of the file being read
        self._file_fraction = lambda: 0.0  # has been read (0..1): for bytes_read and file_fraction
        self._unparsed = None  # (file, part, error) of the last hub read that did not parse

    @property
    def bytes_read(self):
        """How far documents() has got, in bytes of the source files (progress and ETA)."""
        if not self.sizes:
            return 0
        index = self._file_index
        return sum(self.sizes[:index]) + (self.sizes[index] * self.file_fraction()
                                          if index < len(self.sizes) else 0)

    def file_fraction(self):
        """How much of the file being read (by documents() or file_documents()) has been read."""
        return min(1.0, self._file_fraction())

    def documents(self, start=0):
        """All documents in order, from document number `start` (for resuming)."""
        seen = 0
        for index, path in enumerate(self.files):
            self._file_index, self._file_fraction = index, lambda: 0.0
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
        self._file_index, self._file_fraction = len(self.files), lambda: 0.0
        if seen == 0:
            raise SourceError(f"--source {self.spec}: no documents found (empty files?)")

    def file_documents(self, path, skip=0):
        """The documents of one file, after skipping its first `skip`. A hub file that fails
        mid-way is reopened at the first document not yet read."""
        if self.retry is None or not is_hub_path(path):
            return self._read_file(path, skip)
        return self._read_hub_file(path, skip)

    def _read_hub_file(self, path, skip):
        with hub_file_errors(path):
            yield from self.retry.stream(f"reading {path}", lambda done: self._read_file(path, done),
                                         skip)

    def count_documents(self, path):
        return self._reading(path, self._count_documents)

    def _reading(self, path, function):
        """function(path); for a hub file, retried through outages."""
        if self.retry is None or not is_hub_path(path):
            return function(path)
        with hub_file_errors(path):
            return self.retry.call(f"reading {path}", function, path)

    def _read_file(self, path, skip):
        try:
            yield from self._parse_file(path, skip)
        except UnicodeDecodeError as e:
            raise self._not_utf8(path, e) from None

    def _parse_file(self, path, skip):
        kind = file_kind(path)
        if kind == ".txt":
            return self._read_txt(path, skip)
        if kind == ".parquet":
            return self._read_parquet(path, skip)
        if kind == ".json" and self._is_json_array(path):
            return self._read_json_array(path, skip)
        return self._read_jsonl(path, skip)  # .jsonl, and .json with one object a line (as `datasets`)

    def _count_documents(self, path):
        try:
            return self._count_file_documents(path)
        except UnicodeDecodeError as e:
            raise self._not_utf8(path, e) from None

    def _not_utf8(self, path, error):
        """Bytes that are not UTF-8, named by line and by byte of the file: the decoder's own
        position counts from the start of the block it was decoding (read again to find them;
        in a gzipped file, bytes of the uncompressed text)."""
        offset = 0
        with self._open_bytes(path) as f:
            for lineno, line in enumerate(f, 1):  # b"\n" is never part of a UTF-8 character
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    return SourceError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte "
                                       f"{offset + e.start:,} of the file); fix or remove that "
                                       "line, or convert the file to UTF-8")
                offset += len(line)
        return SourceError(f"{path}: not UTF-8 text ({error.reason}); convert it to UTF-8")

    def _count_file_documents(self, path):
        kind = file_kind(path)
        if kind == ".parquet":
            with self._open_binary(path) as f:
                return self._open_parquet(path, f).metadata.num_rows
        if kind == ".json" and self._is_json_array(path):
            return sum(1 for _ in self._read_json_array(path, 0))
        if kind == ".jsonl" or kind == ".json":
            with self._open_text(path) as f:
                return sum(1 for line in f if line.strip())
        if not is_hub_path(path) and self.doc_separator is None:
            return 1
        return sum(1 for _ in self._read_txt(path, 0))

    def _text(self, record, where):
        if not isinstance(record, dict) or self.text_field not in record:
            fields = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
            raise SourceError(f"{where}: no field {self.text_field!r} (fields: {fields}); "
                              "pass --text-field NAME")
        return self._checked_text(record[self.text_field], where, "field")

    def _checked_text(self, text, where, what):
        if isinstance(text, str):
            return text
        if text is None:
            if self.null_text == "empty":
                return ""
            raise SourceError(f"{where}: {what} {self.text_field!r} is NULL; fix the data, or "
                              "pass --null-text empty to read NULLs as empty documents")
        raise SourceError(f"{where}: {what} {self.text_field!r} is {type(text).__name__}, "
                          "not a string")

    def check_files(self, indices=None):
        """Bad data found now rather than hours in: each parquet file's footer (the text column
        there, as text; with `refuse`, no NULL in its statistics) and each local jsonl file's first
        record. `indices`: the files to check (an array task's), else all."""
        for index in range(len(self.files)) if indices is None else indices:
            path = self.files[index]
            if file_kind(path) == ".parquet":
                self._reading(path, self._check_parquet)
            elif file_kind(path) == ".jsonl" and not is_hub_path(path):
                next(iter(self._read_file(path, 0)), None)

    def _check_parquet(self, path):
        import pyarrow as pa

        with self._open_binary(path) as f:
            pf = self._open_parquet(path, f)
            schema = pf.schema_arrow
            if self.text_field not in schema.names:
                raise SourceError(f"{path}: no column {self.text_field!r} (columns: "
                                  f"{', '.join(schema.names)}); pass --text-field NAME")
            kind = schema.field(self.text_field).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise SourceError(f"{path}: column {self.text_field!r} is {kind}, not text; "
                                  "pass --text-field NAME")
            if self.null_text == "refuse":
                self._refuse_nulls(path, pf)

    def _refuse_nulls(self, path, pf):
        """A row group whose statistics count NULL texts: read to name the first one's row."""
        column = pf.schema_arrow.names.index(self.text_field)
        for group in range(pf.num_row_groups):
            stats = pf.metadata.row_group(group).column(column).statistics
            if stats is not None and stats.has_null_count and stats.null_count:
                row = sum(pf.metadata.row_group(g).num_rows for g in range(group))
                for batch in self._batches(path, pf, group, group + 1):
                    for text in batch.column(0).to_pylist():
                        self._checked_text(text, f"{path}: row {row}", "column")
                        row += 1

    def _read_jsonl(self, path, skip):
        with self._open_text(path, track=True) as f:
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

    def _is_json_array(self, path):
        with self._open_text(path) as f:
            return f.read(4096).lstrip().startswith("[")

    def _read_json_array(self, path, skip):
        try:
            with self._open_text(path, track=True) as f:
                records = json.load(f)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}:{e.lineno}: bad JSON ({e.msg})") from None
        for i, record in enumerate(records[skip:], skip):
            yield self._text(record, f"{path}[{i}]")

    def _unreadable_parquet(self, path, part, error):
        """Bytes pyarrow cannot parse. Locally: bad input. From the hub: a bad transfer, retried,
        unless the same part fails the same way on a fresh read: then the file itself is damaged."""
        if not is_hub_path(path):
            return SourceError(f"{path}: not a readable parquet file ({describe(error)})")
        failure = (path, part, str(error))
        if self._unparsed == failure:
            return SourceError(f"{path}: {part} does not parse, the same way on a fresh read "
                               f"({describe(error)}): the file on the hub is damaged; tell the "
                               "dataset's authors, or use another subset or source")
        self._unparsed = failure
        return TransientError(f"{path}: unreadable parquet bytes in {part} ({describe(error)})")

    @contextmanager
    def _parquet_errors(self, path, part):
        import pyarrow as pa
        try:
            yield
        except (pa.ArrowException, OSError) as error:
            if http_status(error) is not None or is_transient(error):
                raise  # a network error that pyarrow passed through: retried as such
            raise self._unreadable_parquet(path, part, error) from error

    def _open_parquet(self, path, f):
        import pyarrow.parquet as pq
        with self._parquet_errors(path, "the footer"):
            # pre_buffer=False: pyarrow's default would fetch every selected row group at once
            return pq.ParquetFile(f, buffer_size=PARQUET_BUFFER_BYTES, pre_buffer=False)

    def _open_binary(self, path):
        """For parquet. No fsspec read-ahead (cache_type "none"): pyarrow's buffer decides what is
        fetched, so a hub read asks for the text column's bytes only, not 5 MB blocks of every
        column."""
        if self.retry is not None and is_hub_path(path):
            return self._open_hub_file(path, cache_type="none")
        fs, fs_path = fsspec.core.url_to_fs(path)
        return fs.open(fs_path, "rb", cache_type="none")

    @contextmanager
    def _open_text(self, path, track=False):
        """The file as text, decompressed if its name says so. With `track`, file_fraction()
        follows the bytes read from disk or the hub (compressed bytes, for a .gz)."""
        raw = (self._open_hub_file(path) if self.retry is not None and is_hub_path(path)
               else fsspec.open(path, "rb").open())  # fsspec's read-ahead: a request per 5 MB
        with raw:
            if track:
                size = max(1, raw.size)
                self._file_fraction = lambda: 1.0 if raw.closed else raw.tell() / size
            compression = fsspec.utils.infer_compression(path)
            binary = fsspec.compression.compr[compression](raw, mode="rb") if compression else raw
            with io.TextIOWrapper(binary, encoding="utf-8") as text:
                yield text

    def _open_bytes(self, path):
        """A text format's bytes, uncompressed."""
        if self.retry is None or not is_hub_path(path):
            return fsspec.open(path, "rb", compression="infer")
        raw = self._open_hub_file(path)  # fsspec's read-ahead: a request per 5 MB block
        compression = fsspec.utils.infer_compression(path)
        if compression:
            raw = fsspec.compression.compr[compression](raw, mode="rb")
        return raw

    def _open_hub_file(self, path, **kwargs):
        """A hub file whose every request is retried on its own."""
        from pipeline.hub_client import RetryingHubFile

        fs, fs_path = fsspec.core.url_to_fs(path)
        return RetryingHubFile(fs, fs_path, self.retry, path, mode="rb", **kwargs)

    def _read_parquet(self, path, skip):
        with self._open_binary(path) as f:
            pf = self._open_parquet(path, f)
            names = pf.schema_arrow.names
            if self.text_field not in names:
                raise SourceError(f"{path}: no column {self.text_field!r} (columns: "
                                  f"{', '.join(names)}); pass --text-field NAME")
            # Whole row groups are skipped from the footer: on the hub their bytes are not fetched.
            group, row = 0, 0
            while group < pf.num_row_groups and skip >= pf.metadata.row_group(group).num_rows:
                skip -= pf.metadata.row_group(group).num_rows
                row += pf.metadata.row_group(group).num_rows
                group += 1
            for batch in self._batches(path, pf, group):
                texts = batch.column(0).to_pylist()
                for i in range(min(skip, len(texts)), len(texts)):
                    yield self._checked_text(texts[i], f"{path}: row {row + i}", "column")
                skip = max(0, skip - len(texts))
                row += len(texts)
                self._file_fraction = lambda done=row / max(1, pf.metadata.num_rows): done

    def _batches(self, path, pf, first_group, end_group=None):
        """The text column in batches, from row group `first_group` on (to `end_group`), a row
        group at a time so that bytes that do not parse can be named by their row group."""
        for group in range(first_group, end_group or pf.num_row_groups):
            batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[self.text_field],
                                      row_groups=[group], use_threads=False)
            while True:
                with self._parquet_errors(path, f"row group {group}"):
                    batch = next(batches, None)
                if batch is None:
                    break
                yield batch

    def _read_txt(self, path, skip):
        return itertools.islice(self._txt_documents(path), skip, None)

    def _txt_documents(self, path):
        with self._open_text(path, track=True) as f:
            if is_hub_path(path):  # what `datasets` makes of it: a document per line, no line break
                for line in f:
                    yield line.rstrip("\n")
            elif self.doc_separator is None:  # a book, an article: one document
                yield f.read()
            else:  # the texts between separators, trimmed; read a block at a time
                pending = ""
                while block := f.read(TXT_BLOCK_CHARS):
                    *texts, pending = (pending + block).split(self.doc_separator)
                    yield from (text.strip() for text in texts if text.strip())
                if pending.strip():
                    yield pending.strip()

