"""Tokenize a text corpus into uint16 token shards: `python -m pipeline.fineweb`.

Default: FineWeb-Edu sample-10BT streamed from the Hugging Face hub into 100M-token shards under
data/edu_fineweb10B/, shard 0 = validation, the rest training (build-nanogpt's layout), in llm.c's
.bin format. Each document contributes [EOT] + encode_ordinary(text), in source order, so the
token stream is a pure function of (source, tokenizer): identical bytes for any --workers and
across interruptions.

    python -m pipeline.fineweb                                  # FineWeb-Edu sample-10BT
    python -m pipeline.fineweb --source data/my.jsonl --out data/mine --shard-tokens 10_000_000
    python -m pipeline.fineweb --source input.txt --tokenizer char --out data/shakespeare_char

The recipe: open the source (pipeline/sources.py, pipeline/hub_source.py), tokenize it in a pool of worker processes
(pipeline/pool.py), cut the stream into shards (pipeline/writer.py); Slurm arrays make parts and
pack them (pipeline/array.py); one writer per folder at a time (pipeline/lock.py).

Resuming: manifest.json is written before the first shard and rewritten atomically after every
finished shard, recording where in the document stream the next shard starts, so the same command
run again after a crash at any step (kill -9 included) skips the finished shards (rebuilding any
that was damaged since) and ends with the bytes of an uninterrupted run; a complete folder is left
as it is. No error deletes a finished shard. A tokenizer worker that dies (the OOM killer) stops
the run at once with one line. Hub requests are retried through outages for --retry-for; after
that the run stops with exit status 75 (EXIT_RETRIES_EXHAUSTED; bad input exits 1) and the same
command resumes.

Slurm job arrays (slurm/fineweb.sbatch): task I of N tokenizes every Nth source file into
OUT/parts/part_{file:06d}.bin, all tasks at the dataset commit the first of them pinned; then one
--pack run cuts the parts, in source order, into the same shards and manifest a single streaming
run writes (making any part still missing itself), and deletes the parts:

    python -m pipeline.fineweb --source SRC --out OUT --num-tasks N --task-index I   # each task
    python -m pipeline.fineweb --source SRC --out OUT --pack                        # afterwards
"""

import argparse
import copy
import os
import sys
from pathlib import Path

from pipeline.array import (delete_packed_parts, make_part, pack_chunks, part_done,
                            pinned_revision, record_parts, task_files)
from pipeline.hub_source import hub_fingerprint, open_hub_source
from pipeline.killpoints import kill_point
from pipeline.lock import LOCK, FolderLock, Locked
from pipeline.output import (check_writable, is_output_side, make_folder, output_failure,
                             remove_if_empty)
from pipeline.pool import (SHARED_MACHINE_WORKERS, TokenizerPool, WorkerDied,
                           default_workers)
from pipeline.progress import advance, progress_bar
from pipeline.retry import (DEFAULT_RETRY_FOR, EXIT_RETRIES_EXHAUSTED, RetriesExhausted, Retry,
                            parse_duration)
from pipeline.file_source import FileSource
from pipeline.sources import (FINEWEB_EDU, SourceError, file_kind, find_local_files, is_hub_path,
                              local_fingerprint, with_null_text)
from pipeline.tokenizer import CharTokenizer, GPT2Tokenizer
from pipeline.writer import (OutputError, ShardWriter, forget_unfinished_output,
                             remove_stale_temporaries, resume_manifest)
from shards.format import FORMATS, ShardError
from shards.manifest import MANIFEST, MANIFEST_VERSION, ManifestError, read_manifest, write_manifest

# A local .txt file read as one document is held whole in memory (and tokenized by one worker):
# from this size on, say so before reading it.
WHOLE_DOCUMENT_WARNING_BYTES = 256 << 20
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C ended


def die(message):
    raise SystemExit(f"error: {message}")


# ----------------------------------------------------------------------------------------------
# The source, the tokenizer, the progress bar

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


def progress(limit, source, written, by_bytes):
    """A bar and the function that measures how far we are: tokens against the limit when there
    is one, else bytes of the source read (a hub download's ETA), else documents."""
    common = dict(smoothing=0.05, unit_scale=True)
    if limit is not None:
        return (progress_bar(total=limit, initial=written, unit="tok", **common),
                lambda writer: writer.written + writer.fill)
    if by_bytes and source.num_bytes:
        return (progress_bar(total=source.num_bytes, unit="B", unit_divisor=1024, **common),
                lambda writer: source.bytes_read)
    return (progress_bar(total=source.num_documents, unit="doc", **common),
            lambda writer: writer.end_doc)


def show(bar, writer, measure):
    advance(bar, measure(writer))
    bar.set_postfix(refresh=False, docs=f"{writer.end_doc:,}",
                    tokens=f"{writer.written + writer.fill:,}", shards=len(writer.manifest["shards"]))


# ----------------------------------------------------------------------------------------------
# One run: source -> tokenizer pool -> shards (or, with --pack, parts -> shards)

def stream_limit(args):
    limits = [n for n in (args.max_tokens,
                          args.max_shards * args.shard_tokens if args.max_shards else None) if n]
    return min(limits) if limits else None


def stream_chunks(pool, source, start):
    """(first document, tokens, tokens per document, start position) tokenized from the source."""
    first_doc, pos = start
    for doc, tokens, lengths in pool.tokenized_chunks(source.documents(first_doc), first_doc):
        yield doc, tokens, lengths, pos
        pos = 0


def write_shards(args, source, tokenizer, out, manifest, limit):
    """Feed the writer until the chunks run out or the limit is reached; the manifest says which."""
    writer = ShardWriter(out, manifest, limit)
    pool = TokenizerPool(tokenizer, workers(args))  # said before the bar is drawn
    bar, measure = progress(limit, source, writer.written, by_bytes=not args.pack)
    with pool, bar:
        chunks = (pack_chunks(args, pool, source, out, writer.start) if args.pack else
                  stream_chunks(pool, source, writer.start))
        reached = False
        for doc, tokens, lengths, pos in chunks:
            reached = writer.add(doc, tokens, lengths, pos)
            show(bar, writer, measure)
            if reached:
                break
        writer.finish(exhausted=not reached)
        show(bar, writer, measure)  # finish() writes the last, short shard
    return writer


def identity(args, fingerprint):
    """What an output folder is made of; a rerun with any of it different is refused."""
    return {"fingerprint": fingerprint, "tokenizer": args.tokenizer, "format": args.format,
            "prefix": args.prefix, "shard_tokens": args.shard_tokens}


def complete_offline(args, out, old):
    """Whether the folder's manifest `old` says that this command, reading a hub dataset, has
    nothing left to do: decided from the pinned revision alone, without the network, so a rerun
    or a requeued array task on a compute node without internet (or HF_HUB_OFFLINE=1) ends here."""
    if not (old and old.get("complete") and old.get("source") == args.source
            and args.source.startswith("hf:")):
        return False
    fingerprint = with_null_text(hub_fingerprint(args.source, args.split, old.get("revision"),
                                                 args.text_field), args.null_text)
    return resume_manifest(out, copy.deepcopy(old), identity(args, fingerprint),
                           stream_limit(args)) is None


def complete_read_only(args, out):
    """A folder we may not write can still be complete (a lab's shared, finished shards): then a
    rerun is told so, as on any complete folder, rather than refused."""
    old = read_manifest(out) if (out / MANIFEST).exists() else None
    if args.pack or not (old and old.get("complete")):
        return False
    if not complete_offline(args, out, old):
        source = open_args_source(args, revision_pin(args, out, old))
        if resume_manifest(out, copy.deepcopy(old), identity(args, source.fingerprint),
                           stream_limit(args)) is not None:
            return False
    say_complete(out, old)
    return True


def say_complete(out, manifest):
    print(f"{out} is already complete ({len(manifest['shards'])} shards, "
          f"{sum(s['tokens'] for s in manifest['shards']):,} tokens); nothing to do",
          file=sys.stderr)


def run(args):
    """A single run, or the array's --pack: the only writer of OUT while it runs."""
    out = Path(args.out)
    made = make_folder(out)  # after an error, only these may go, and only if empty
    try:
        try:
            check_writable(out)
        except OSError:
            if not complete_read_only(args, out):
                raise
            return
        with FolderLock(out / LOCK, "a --pack run" if args.pack else "a pipeline run") as lock:
            try:
                write_output(args, out)
            except BaseException:
                # Every finished shard stays, whatever the error: the same command continues.
                forget_unfinished_output(out, lock)
                raise
    except BaseException:
        remove_if_empty(made)
        raise


def write_output(args, out):
    old = read_manifest(out) if (out / MANIFEST).exists() else None
    if old is None and (any(out.glob("*_val_*")) or any(out.glob("*_train_*"))):
        raise OutputError(f"{out} holds shards but no {MANIFEST}; use an empty --out")
    limit = stream_limit(args)
    source = manifest = None
    if not complete_offline(args, out, old):
        source = open_args_source(args, revision_pin(args, out, old))
        if old:
            manifest = resume_manifest(out, old, identity(args, source.fingerprint), limit)
    if old and manifest is None:
        say_complete(out, old)
        if args.pack:  # a pack killed while deleting its parts finishes the job
            delete_packed_parts(out, args.keep_parts)
        return
    if args.pack:
        source = record_parts(args, source, out, lambda rev: open_args_source(args, rev))
    if source.files is not None:  # a source of files, not a `datasets` stream
        source.check_files()  # bad data found before the first shard, not hours in
    remove_stale_temporaries(out)
    warn_whole_documents(args, source)
    tokenizer = make_tokenizer(args, source, out, resuming=manifest is not None)
    if manifest is None:
        if tokenizer.name == "char":
            tokenizer.save(out)
        manifest = {"version": MANIFEST_VERSION, "source": args.source,
                    "revision": source.revision, **identity(args, source.fingerprint),
                    "vocab_size": tokenizer.vocab_size, "eot": tokenizer.eot,
                    "complete": False, "exhausted": False, "shards": []}
        write_manifest(out, manifest)  # before the first shard: any later kill point resumes
        kill_point("started")
    writer = write_shards(args, source, tokenizer, out, manifest, limit)
    shards = manifest["shards"]
    if len(shards) == 1:
        print(f"warning: only {shards[0]['tokens']:,} tokens: a validation shard and no training "
              "shard; lower --shard-tokens", file=sys.stderr)
    print(f"wrote {len(writer.new_files)} shards to {out} ({len(shards)} in all, "
          f"{sum(s['tokens'] for s in shards):,} tokens)", file=sys.stderr)
    if args.pack and manifest["exhausted"]:
        kill_point("pack-done")
        delete_packed_parts(out, args.keep_parts)


def run_task(args):
    """Slurm array task I of N: this task's share of the source files into OUT/parts/."""
    if not 0 <= args.task_index < args.num_tasks:
        die(f"--task-index {args.task_index} must be in [0, {args.num_tasks})")
    out = Path(args.out)
    old = read_manifest(out) if (out / MANIFEST).exists() else None
    if complete_offline(args, out, old):
        say_complete(out, old)
        return
    source = open_args_source(args, revision_pin(args, out, old))  # bad input: before any file
    role = f"array task {args.task_index} of {args.num_tasks}"
    make_folder(out)
    check_writable(out)
    with FolderLock(out / LOCK, role, shared=True):  # shared by tasks; a --pack refuses meanwhile
        old = read_manifest(out) if (out / MANIFEST).exists() else None
        if old and resume_manifest(out, copy.deepcopy(old), identity(args, source.fingerprint),
                                   stream_limit(args)) is None:
            say_complete(out, old)  # packed already: tokenizing again would only make parts
            return
        source = record_parts(args, source, out, lambda rev: open_args_source(args, rev))
        mine = task_files(source, args.num_tasks, args.task_index)
        todo = [i for i in mine if not part_done(out, i)]
        source.check_files(todo)
        print(f"task {args.task_index}/{args.num_tasks}: {len(mine)} of {len(source.files)} files, "
              f"{len(mine) - len(todo)} already done", file=sys.stderr)
        sizes = source.sizes or [1] * len(source.files)  # bytes, else whole files
        with TokenizerPool(GPT2Tokenizer(), workers(args)) as pool, progress_bar(
                total=sum(sizes[i] for i in todo), unit="B" if source.sizes else "file",
                unit_scale=True, unit_divisor=1024) as bar:
            done = 0
            for i in todo:
                make_part(pool, source, out, i, role,
                          progress=lambda: advance(bar, done + sizes[i] * source.file_fraction()))
                done += sizes[i]
                advance(bar, done)


# ----------------------------------------------------------------------------------------------
# Command line

def workers(args):
    """--workers, or the default, said once where the work starts (bad input stays one line)."""
    if args.workers is None:
        args.workers, why = default_workers()
        print(f"tokenizer workers: {args.workers} ({why}); --workers N sets it", file=sys.stderr)
    return args.workers


def positive_int(text):
    value = int(text.replace("_", ""))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def duration(text):
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return seconds


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pipeline.fineweb",
                                     description="Tokenize a corpus into uint16 token shards.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--source", default=FINEWEB_EDU,
                        help="hf:NAME[:SUBSET], or a local .jsonl/.json/.parquet/.txt file, folder "
                             "or glob (a .txt file is one document)")
    parser.add_argument("--out", default="data/edu_fineweb10B", help="shard folder")
    parser.add_argument("--prefix", default="edu_fineweb", help="shard names: PREFIX_val_000000.bin")
    parser.add_argument("--shard-tokens", type=positive_int, default=100_000_000,
                        help="tokens per shard (the last may be shorter)")
    parser.add_argument("--max-shards", type=positive_int, help="stop after this many shards")
    parser.add_argument("--max-tokens", type=positive_int, help="stop after this many tokens")
    parser.add_argument("--format", choices=FORMATS, default="bin",
                        help="bin: llm.c header + uint16; npy: build-nanogpt's np.save")
    parser.add_argument("--tokenizer", choices=["gpt2", "char"], default="gpt2",
                        help="char: vocabulary = sorted characters of the corpus, no EOT")
    parser.add_argument("--workers", type=positive_int,
                        help="tokenizer processes (default: every core of a Slurm job; outside "
                             f"one, half the machine's, at most {SHARED_MACHINE_WORKERS})")
    parser.add_argument("--text-field", default="text", help="field/column holding the text")
    parser.add_argument("--split", default="train", help="dataset split of hf: sources")
    parser.add_argument("--null-text", choices=["refuse", "empty"], default="refuse",
                        help="a NULL text: refuse (bad input, named by file and row, found in "
                             "parquet footers before the first shard) or empty (a document with "
                             "no text: its EOT alone)")
    parser.add_argument("--doc-separator",
                        help="split local .txt files into documents at this text, e.g. "
                             "'<|endoftext|>' (TinyStories-train.txt); without it a local .txt "
                             "file is one document")
    parser.add_argument("--retry-for", type=duration, default=DEFAULT_RETRY_FOR,
                        help="keep retrying a failing hub request this long (30m, 2h, 90s) "
                             f"before stopping with exit status {EXIT_RETRIES_EXHAUSTED}; finished "
                             "shards are kept and the same command resumes. A request unanswered "
                             "for HF_HUB_DOWNLOAD_TIMEOUT seconds (env, 10 by default) has failed")
    array = parser.add_argument_group("Slurm job arrays (see slurm/fineweb.sbatch)")
    array.add_argument("--num-tasks", type=positive_int,
                       help="tokenize only this task's share of the source files into OUT/parts/")
    array.add_argument("--task-index", type=int, help="this task, 0 .. num-tasks-1")
    array.add_argument("--pack", action="store_true",
                       help="cut OUT/parts/ into the final shards (tokenizing missing parts), "
                            "then delete the parts")
    array.add_argument("--keep-parts", action="store_true", help="with --pack: keep OUT/parts/")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if (args.num_tasks is None) != (args.task_index is None):
        die("--num-tasks and --task-index go together")
    if args.num_tasks and args.pack:
        die("--pack runs after the array tasks, not as one of them")
    try:
        run_task(args) if args.num_tasks else run(args)
    except (SourceError, ManifestError, ShardError, OutputError, Locked, WorkerDied,
            RuntimeError, ValueError) as e:  # ValueError: a character outside the char vocabulary
        die(e)
    except RetriesExhausted as e:  # not bad input: the network; the same command resumes
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_RETRIES_EXHAUSTED)
    except OSError as e:  # a full, read-only or foreign --out
        if not is_output_side(e, args.out):
            raise
        message, status = output_failure(e, args.out)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(status)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
