"""Making the shards of one output folder, the recipe of `python -m pipeline.fineweb`: a single
run (source -> tokenizer pool -> shards, resumable), a --pack (the array's parts -> the same
shards), or a Slurm array task (its share of the source files -> parts). Each writes its folder
only under the folder's lock, and no error deletes a finished shard."""

import copy
import sys
from pathlib import Path

from pipeline.array import (delete_packed_parts, make_part, pack_chunks, part_done, record_parts,
                            task_files)
from pipeline.hub_source import hub_fingerprint
from pipeline.inputs import make_tokenizer, open_args_source, revision_pin, warn_whole_documents
from pipeline.killpoints import kill_point
from pipeline.lock import LOCK, FolderLock
from pipeline.output import check_writable, make_folder, remove_if_empty
from pipeline.pool import TokenizerPool, default_workers
from pipeline.progress import advance, progress, progress_bar, show
from pipeline.sources import with_null_text
from pipeline.tokenizer import GPT2Tokenizer
from pipeline.writer import (OutputError, ShardWriter, forget_unfinished_output,
                             remove_stale_temporaries, resume_manifest)
from shards.manifest import MANIFEST, MANIFEST_VERSION, read_manifest, write_manifest


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


def workers(args):
    """--workers, or the default, said once where the work starts (bad input stays one line)."""
    if args.workers is None:
        args.workers, why = default_workers()
        print(f"tokenizer workers: {args.workers} ({why}); --workers N sets it", file=sys.stderr)
    return args.workers
