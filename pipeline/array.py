"""Slurm job arrays: task I of N tokenizes every Nth source file into a part of its own (a .bin
token stream, and the token count of each of its documents) under OUT/parts/; then one `--pack`
cuts the parts, in source order, into exactly the shards a single streaming run writes (it
tokenizes any part still missing itself) and deletes them.

OUT/parts/parts.json records once what the parts are made of (source, revision, fingerprint,
tokenizer, file count). It is created atomically, never replaced: of tasks that start together
the first to record it wins, and every other task reads the hub dataset at the commit it pinned,
so one array's parts never mix two revisions.
"""

import json
import os
import shutil
import sys

import numpy as np

from pipeline.lock import FolderLock
from pipeline.sources import SourceError
from shards.format import ShardError, atomic_write, fsync_dir, read_shard, write_bin_chunks

PARTS = "parts"
PARTS_INFO = "parts.json"


def part_path(out, index):
    return out / PARTS / f"part_{index:06d}.bin"


def part_lengths_path(out, index):
    """Tokens of each document of a part; written after the part, so it marks the part done."""
    return out / PARTS / f"part_{index:06d}.lengths.npy"


def part_done(out, index):
    return part_lengths_path(out, index).exists() and part_path(out, index).exists()


def pinned_revision(out, spec):
    """The hub commit the array's parts are read at, if a task already recorded one."""
    path = out / PARTS / PARTS_INFO
    if path.exists():
        info = json.loads(path.read_text())
        if info.get("source") == spec:
            return info.get("revision")
    return None


def create_once(path, text):
    """Write `path` unless it exists, atomically (temporary file, then link: fails if present).
    Returns False if another process created it first."""
    tmp = path.with_name(f".{path.name}.tmp-{os.uname().nodename}-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def record_parts(args, source, out, reopen):
    """Parts are only valid for one (source at one commit, tokenizer): record that once, check it
    on every later use. Returns the source to read, at the recorded commit."""
    if args.tokenizer != "gpt2":
        raise SourceError("Slurm array mode (--num-tasks/--pack) needs --tokenizer gpt2: a char "
                          "vocabulary is the whole corpus's alphabet, which no single task sees")
    if source.files is None:
        raise SourceError(f"--source {args.source}: Slurm array mode needs a source made of files "
                          "(local, or a hub dataset stored as jsonl/json/parquet/txt)")
    path = out / PARTS / PARTS_INFO
    path.parent.mkdir(parents=True, exist_ok=True)
    info = parts_info(args, source)
    if create_once(path, json.dumps(info, indent=1) + "\n"):
        return source
    old = json.loads(path.read_text())
    if old.get("source") == args.source and old.get("revision") != source.revision:
        # another task pinned a commit between our reading of the dataset and now: use its pin
        print(f"{path}: reading {args.source} at commit {old['revision']}, pinned by the task that "
              "started first", file=sys.stderr)
        source = reopen(old["revision"])
        info = parts_info(args, source)
    different = [k for k in ("fingerprint", "tokenizer", "files") if old.get(k) != info[k]]
    if different:
        raise SourceError(f"{path.parent} holds parts made with a different "
                          f"{', '.join(different)}; delete it or use another --out")
    return source


def parts_info(args, source):
    return {"source": args.source, "revision": source.revision, "fingerprint": source.fingerprint,
            "tokenizer": args.tokenizer, "files": len(source.files)}


def make_part(pool, source, out, index, role, progress=None):
    """Tokenize source file `index` into its part and lengths, unless done; a crash leaves only
    temporaries. The part's own lock keeps a duplicate task off it. progress() after each chunk."""
    path = part_path(out, index)
    with FolderLock(path.with_name(f".{path.stem}.lock"), role, what=f"part {path}"):
        if part_done(out, index):  # made by another task since we looked
            return
        for stale in path.parent.glob(f".part_{index:06d}.*.tmp-*"):  # left by a killed attempt
            stale.unlink(missing_ok=True)
        lengths = []

        def chunks():
            documents = source.file_documents(source.files[index])
            for _, tokens, chunk_lengths in pool.tokenized_chunks(documents):
                lengths.append(chunk_lengths)
                yield tokens
                if progress:
                    progress()

        write_bin_chunks(path, chunks())
        with atomic_write(part_lengths_path(out, index)) as f:
            np.save(f, np.concatenate(lengths) if lengths else np.zeros(0, np.int64))


def task_files(source, num_tasks, task_index):
    """The source files of task `task_index` of `num_tasks`: every num_tasks-th."""
    return [i for i in range(len(source.files)) if i % num_tasks == task_index]


def pack_chunks(args, pool, source, out, start):
    """Each part as one chunk, in source order, from stream position `start`; missing parts are made."""
    first_doc = 0
    for index in range(len(source.files)):
        if not part_done(out, index):
            make_part(pool, source, out, index, "a --pack run")
        tokens = read_shard(part_path(out, index))
        lengths = np.load(part_lengths_path(out, index))
        if lengths.sum() != len(tokens):
            raise ShardError(f"{part_path(out, index)} has {len(tokens):,} tokens, its lengths "
                             f"file {lengths.sum():,}: delete both so the part is made again")
        if first_doc + len(lengths) > start[0]:  # the resume point is in this part or before it
            starts = np.cumsum(lengths) - lengths
            pos = int(starts[start[0] - first_doc]) + start[1] if start[0] >= first_doc else 0
            yield first_doc, tokens, lengths, pos
        first_doc += len(lengths)
    if first_doc == 0:
        raise SourceError(f"--source {args.source}: no documents found (empty files?)")


def delete_packed_parts(out, keep):
    """After a complete pack every token of the parts is in the shards."""
    if not (out / PARTS).exists():
        return
    if keep:
        print(f"kept the parts in {out / PARTS} (--keep-parts)", file=sys.stderr)
    else:
        shutil.rmtree(out / PARTS)
        print(f"deleted {out / PARTS}: packed into the shards (--keep-parts keeps them)",
              file=sys.stderr)
