"""FileSource: the documents of an ordered list of files (local paths, or a hub dataset's hf://
URLs), each file read by pipeline/readers.py, as one stream that a resume enters at any document
number. A hub file that fails mid-way is reopened at the first document not yet read."""

from contextlib import contextmanager

from pipeline.readers import (FileOpener, ParquetReader, TextField, count_jsonl, is_json_array,
                              not_utf8, read_json_array, read_jsonl, read_txt)
from pipeline.retry import HubUnreachable, RetriesExhausted, describe
from pipeline.sources import SourceError, file_kind, is_hub_path


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
        self._file_index = 0  # the file documents() is in; how much of it is read: the opener's
        self._opener = FileOpener(retry)
        self._parquet = ParquetReader(self._opener)

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
        return min(1.0, self._opener.fraction())

    def documents(self, start=0):
        """All documents in order, from document number `start` (for resuming)."""
        seen = 0
        for index, path in enumerate(self.files):
            self._file_index, self._opener.fraction = index, lambda: 0.0
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
        self._file_index, self._opener.fraction = len(self.files), lambda: 0.0
        if seen == 0:
            raise SourceError(f"--source {self.spec}: no documents found (empty files?)")

    def file_documents(self, path, skip=0):
        """The documents of one file, after skipping its first `skip`. A hub file that fails
        mid-way is reopened at the first document not yet read."""
        if self.retry is None or not is_hub_path(path):
            return self._read_file(path, skip)
        return self._read_hub_file(path, skip)

    def count_documents(self, path):
        return self._reading(path, self._count_documents)

    def check_files(self, indices=None):
        """Bad data found now rather than hours in: each parquet file's footer (the text column
        there, as text; with `refuse`, no NULL in its statistics) and each local jsonl file's first
        record. `indices`: the files to check (an array task's), else all."""
        for index in range(len(self.files)) if indices is None else indices:
            path = self.files[index]
            if file_kind(path) == ".parquet":
                self._reading(path, lambda path: self._parquet.check(path, self._text_field()))
            elif file_kind(path) == ".jsonl" and not is_hub_path(path):
                next(iter(self._read_file(path, 0)), None)

    def _read_hub_file(self, path, skip):
        with hub_file_errors(path):
            yield from self.retry.stream(f"reading {path}", lambda done: self._read_file(path, done),
                                         skip)

    def _reading(self, path, function):
        """function(path); for a hub file, retried through outages."""
        if self.retry is None or not is_hub_path(path):
            return function(path)
        with hub_file_errors(path):
            return self.retry.call(f"reading {path}", function, path)

    def _text_field(self):
        return TextField(self.text_field, self.null_text)

    def _read_file(self, path, skip):
        try:
            yield from self._parse_file(path, skip)
        except UnicodeDecodeError as e:
            raise not_utf8(self._opener, path, e) from None

    def _parse_file(self, path, skip):
        kind = file_kind(path)
        if kind == ".txt":
            return read_txt(self._opener, path, skip, self.doc_separator)
        if kind == ".parquet":
            return self._parquet.documents(path, skip, self._text_field())
        if kind == ".json" and is_json_array(self._opener, path):
            return read_json_array(self._opener, path, skip, self._text_field())
        # .jsonl, and .json with one object a line (as `datasets`)
        return read_jsonl(self._opener, path, skip, self._text_field())

    def _count_documents(self, path):
        try:
            return self._count_file_documents(path)
        except UnicodeDecodeError as e:
            raise not_utf8(self._opener, path, e) from None

    def _count_file_documents(self, path):
        kind = file_kind(path)
        if kind == ".parquet":
            return self._parquet.count(path)
        if kind == ".json" and is_json_array(self._opener, path):
            return sum(1 for _ in read_json_array(self._opener, path, 0, self._text_field()))
        if kind == ".jsonl" or kind == ".json":
            return count_jsonl(self._opener, path)
        if not is_hub_path(path) and self.doc_separator is None:
            return 1
        return sum(1 for _ in read_txt(self._opener, path, 0, self.doc_separator))
