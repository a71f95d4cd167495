"""A pipeline run's inputs, from its flags: the source (local files or a hub dataset, at the
commit the output is pinned to) and the tokenizer."""

import os
import sys

from pipeline.array import pinned_revision
from pipeline.file_source import FileSource
from pipeline.hub_source import open_hub_source
from pipeline.retry import DEFAULT_RETRY_FOR, Retry, parse_duration
from pipeline.sources import (SourceError, file_kind, find_local_files, is_hub_path,
                              local_fingerprint, with_null_text)
from pipeline.tokenizer import CharTokenizer, GPT2Tokenizer

# A local .txt file read as one document is held whole in memory (and tokenized by one worker):
# from this size on, say so before reading it.
WHOLE_DOCUMENT_WARNING_BYTES = 256 << 20


def open_source(spec, text_field="text", split="train", revision=None, doc_separator=None,
                retry=None, null_text="refuse"):
    """A FileSource (local files, or a hub dataset's files), else a HubStreamSource.

    `retry` (a pipeline.retry.Retry) carries every hub request through outages. `null_text`:
    what a NULL text is, "refuse" (bad input, named by file and row) or "empty" (a document
    with no text: an EOT alone)."""
    if spec.startswith("hf:"):
        if doc_separator is not None:
            raise SourceError(f"--doc-separator is for local .txt files; {spec} is split the way "
                              "its dataset config says")
        source = open_hub_source(spec, text_field, split, revision,
                                 retry or Retry(parse_duration(DEFAULT_RETRY_FOR)))
    else:
        files = find_local_files(spec)
        if doc_separator is not None and not any(file_kind(f) == ".txt" for f in files):
            raise SourceError(f"--doc-separator splits .txt files; --source {spec} has none")
        source = FileSource(spec, files, text_field, doc_separator=doc_separator,
                            fingerprint=local_fingerprint(files, text_field, doc_separator),
                            sizes=[os.path.getsize(f) for f in files])
    source.null_text = null_text
    source.fingerprint = with_null_text(source.fingerprint, null_text)
    return source


def open_args_source(args, revision):
    return open_source(args.source, args.text_field, args.split, revision=revision,
                       doc_separator=args.doc_separator, retry=Retry(args.retry_for),
                       null_text=args.null_text)


def revision_pin(args, out, old):
    """The hub commit to read: the one the output was started at (its manifest's, else the one
    the array's parts were pinned to); None means the dataset's latest."""
    if old is not None:
        return old.get("revision") if old.get("source") == args.source else None
    return pinned_revision(out, args.source) if args.pack or args.num_tasks else None


def warn_whole_documents(args, source):
    """Before a big local .txt without --doc-separator is read as ONE document: say so."""
    if args.doc_separator is not None or not getattr(source, "sizes", None):
        return
    big = [(path, size) for path, size in zip(source.files, source.sizes)
           if file_kind(path) == ".txt" and not is_hub_path(path)
           and size >= WHOLE_DOCUMENT_WARNING_BYTES]
    if big:
        path, size = big[0]
        more = f" (and {len(big) - 1} more such files)" if len(big) > 1 else ""
        print(f"warning: {path} ({size / 1e6:,.0f} MB){more} is read as ONE document, held whole "
              "in memory; if it holds many, pass --doc-separator TEXT (TinyStories: "
              "'<|endoftext|>')", file=sys.stderr)


def make_tokenizer(args, source, out, resuming):
    if args.tokenizer == "gpt2":
        return GPT2Tokenizer()
    if resuming:
        return CharTokenizer.load(out)
    print(f"char tokenizer: reading {args.source} once for its alphabet", file=sys.stderr)
    return CharTokenizer.from_corpus(source.documents())
