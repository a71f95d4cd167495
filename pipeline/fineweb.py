"""Tokenize a text corpus into uint16 token shards: `python -m pipeline.fineweb`.

Default: FineWeb-Edu sample-10BT streamed from the Hugging Face hub into 100M-token shards under
data/edu_fineweb10B/, shard 0 = validation, the rest training (build-nanogpt's layout), in llm.c's
.bin format. Each document contributes [EOT] + encode_ordinary(text), in source order, so the
token stream is a pure function of (source, tokenizer): identical bytes for any --workers and
across interruptions.

    python -m pipeline.fineweb                                  # FineWeb-Edu sample-10BT
    python -m pipeline.fineweb --source data/my.jsonl --out data/mine --shard-tokens 10_000_000
    python -m pipeline.fineweb --source input.txt --tokenizer char --out data/shakespeare_char

Resuming: manifest.json is rewritten atomically after every finished shard and records where in
the document stream the next shard starts, so the same command run again after any crash
(kill -9 included) skips the finished shards (rebuilding any that was damaged since) and ends
with the bytes of an uninterrupted run. No error deletes a finished shard. Hub requests are
retried through outages for --retry-for; after that the run stops with exit status 75
(EXIT_RETRIES_EXHAUSTED; bad input exits 1) and the same command resumes.

Slurm job arrays (slurm/fineweb.sbatch): task I of N tokenizes every Nth source file into
OUT/parts/part_{file:06d}.bin, then one --pack run cuts the parts, in source order, into the same
shards and manifest a single streaming run writes (making any part still missing itself), and
deletes the parts:

    python -m pipeline.fineweb --source SRC --out OUT --num-tasks N --task-index I   # each task
    python -m pipeline.fineweb --source SRC --out OUT --pack                        # afterwards
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
from collections import deque
from contextlib import suppress
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.retry import (DEFAULT_RETRY_FOR, EXIT_RETRIES_EXHAUSTED, RetriesExhausted, Retry,
                            parse_duration)
from pipeline.sources import FINEWEB_EDU, SourceError, open_source
from pipeline.tokenizer import CHAR_TOKENIZER_FILE, CharTokenizer, GPT2Tokenizer
from shards.format import (FORMATS, ShardError, atomic_write, read_shard, write_bin_chunks,
                           write_shard)
from shards.manifest import (MANIFEST, MANIFEST_VERSION, ManifestError, file_sha256, read_manifest,
                             shard_name, write_manifest)

# A worker task is a chunk of whole documents, cut at whichever limit comes first: large enough
# that inter-process overhead is noise (~60k tokens for FineWeb-Edu's ~4 KB documents), small
# enough that the chunks in flight are a few MB whatever the source.
CHUNK_DOCS = 64
CHUNK_CHARS = 1 << 20
TASKS_PER_WORKER = 2  # in flight per worker: keeps every worker busy while the main process writes

# Fields that must match for a rerun to continue an existing output folder.
IDENTITY = ("fingerprint", "tokenizer", "format", "prefix", "shard_tokens")


def die(message):
    raise SystemExit(f"error: {message}")


# ----------------------------------------------------------------------------------------------
# Parallel tokenization, in source order

_worker_tokenizer = None


def _init_worker(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    # Pool.terminate() stops workers with SIGTERM: a handler inherited from the forking process
    # (a trainer's, say) would leave them alive and the pool's exit hanging
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def tokenize_chunk(texts):
    """Token ids of a chunk of documents, concatenated, and the number of tokens of each."""
    tokens, lengths = [], []
    for text in texts:
        ids = _worker_tokenizer.encode_doc(text)
        tokens.extend(ids)
        lengths.append(len(ids))
    return np.array(tokens, dtype=np.uint16), np.array(lengths, dtype=np.int64)


def chunked(documents):
    chunk, chars = [], 0
    for text in documents:
        chunk.append(text)
        chars += len(text)
        if len(chunk) == CHUNK_DOCS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def tokenized_chunks(pool, workers, documents, first_doc):
    """Yield (index of the chunk's first document, tokens, tokens per document) in source order.

    A bounded window of tasks, not Pool.imap: imap reads its whole input ahead, which for a
    streamed 10B-token source means unbounded memory whenever reading outpaces tokenizing.
    """
    pending = deque()
    for chunk in chunked(documents):
        pending.append((first_doc, pool.apply_async(tokenize_chunk, (chunk,))))
        first_doc += len(chunk)
        if len(pending) > TASKS_PER_WORKER * workers:
            doc, result = pending.popleft()
            yield (doc, *result.get())
    for doc, result in pending:
        yield (doc, *result.get())


# ----------------------------------------------------------------------------------------------
# Cutting the stream into shards

class ShardWriter:
    """Cuts the token stream into shards of exactly `shard_tokens` (the last may be shorter).

    Positions in the stream are (document index, token offset inside that document's tokens);
    every shard records where it starts and ends, so a resume can start reading at the next one.
    """

    def __init__(self, out, manifest, limit):
        self.out, self.manifest, self.limit = out, manifest, limit
        self.buffer = np.empty(manifest["shard_tokens"], dtype=np.uint16)
        self.fill = 0
        shards = manifest["shards"]
        self.start = (shards[-1]["doc_end"], shards[-1]["end_offset"]) if shards else (0, 0)
        self.written = sum(s["tokens"] for s in shards)
        self.end_doc = self.start[0]  # one past the last document seen
        self.new_files = []

    def limit_reached(self):
        return self.limit is not None and self.written + self.fill >= self.limit

    def add(self, first_doc, tokens, lengths, pos=0):
        """Append a chunk's tokens from position `pos`; return True once the limit is reached."""
        ends = np.cumsum(lengths)
        self.end_doc = first_doc + len(lengths)
        while pos < len(tokens):
            room = len(self.buffer) - self.fill
            if self.limit is not None:
                room = min(room, self.limit - self.written - self.fill)
            take = min(room, len(tokens) - pos)
            self.buffer[self.fill:self.fill + take] = tokens[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == len(self.buffer) or self.limit_reached():
                doc = int(np.searchsorted(ends, pos, side="right"))  # document holding token `pos`
                self.flush((first_doc + doc, pos - (int(ends[doc - 1]) if doc else 0)))
                if self.limit_reached():
                    return True
        return False

    def flush(self, end):
        index = len(self.manifest["shards"])
        path = self.out / shard_name(self.manifest["prefix"], index, self.manifest["format"])
        write_shard(path, self.buffer[:self.fill], self.manifest["format"])
        self.new_files.append(path)
        self.manifest["shards"].append({
            "name": path.name, "split": "val" if index == 0 else "train", "tokens": self.fill,
            "sha256": file_sha256(path),
            "doc_start": self.start[0], "doc_offset": self.start[1],
            "doc_end": end[0], "end_offset": end[1]})
        write_manifest(self.out, self.manifest)
        self.written += self.fill
        self.fill = 0
        self.start = end

    def finish(self, exhausted):
        if self.fill:
            self.flush((self.end_doc, 0))
        self.manifest["complete"] = True
        self.manifest["exhausted"] = exhausted
        write_manifest(self.out, self.manifest)


# ----------------------------------------------------------------------------------------------
# Output folder: fresh start, resume, or refusal

def stream_limit(args):
    limits = [n for n in (args.max_tokens,
                          args.max_shards * args.shard_tokens if args.max_shards else None) if n]
    return min(limits) if limits else None


def resume_manifest(out, old, identity, limit):
    """The manifest to continue from: the old one cut back to its full shards, or None if done."""
    different = [k for k in IDENTITY if old.get(k) != identity[k]]
    if different:
        what = "; ".join(f"{k}: {old.get(k)!r} there, {identity[k]!r} now" for k in different)
        die(f"{out} was made with different settings ({what}); use another --out or delete it")
    for index, shard in enumerate(old["shards"]):
        problem = damaged(out / shard["name"], shard)
        if problem:
            # Each shard starts where the one before it ended: the stream is redone from here.
            later = len(old["shards"]) - index - 1
            after = {0: "", 1: " and the shard after it"}.get(later, f" and the {later} shards after it")
            print(f"{problem}: rebuilding it{after}", file=sys.stderr)
            old["shards"] = old["shards"][:index]
            old["exhausted"] = False
            break
    written = sum(s["tokens"] for s in old["shards"])
    if old.get("exhausted") or (limit is not None and written >= limit):
        return None
    # A short last shard was cut by an earlier --max-*: redo it, now with more room.
    old["shards"] = [s for s in old["shards"] if s["tokens"] == old["shard_tokens"]]
    old["complete"] = False
    return old


def damaged(path, entry):
    """What is wrong with a finished shard (missing; header, size or token count not what the
    manifest says), or None. Cheap: no sha256, which `python -m shards verify` checks."""
    try:
        tokens = len(read_shard(path))  # checks magic, version, and size = header + 2 x tokens
    except ShardError as e:
        return str(e)
    if tokens != entry["tokens"]:
        return f"{path}: {tokens:,} tokens, {MANIFEST} says {entry['tokens']:,}"
    return None


def remove_stale_temporaries(out):
    """Temporary files of a killed run (write_shard/write_manifest name them `.NAME.tmp-PID`)."""
    for tmp in out.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


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
    common = dict(file=sys.stderr, dynamic_ncols=True, smoothing=0.05, unit_scale=True)
    if limit is not None:
        return (tqdm(total=limit, initial=written, unit="tok", **common),
                lambda writer: writer.written + writer.fill)
    if by_bytes and source.num_bytes:
        return (tqdm(total=source.num_bytes, unit="B", unit_divisor=1024, **common),
                lambda writer: source.bytes_read)
    return tqdm(total=source.num_documents, unit="doc", **common), lambda writer: writer.end_doc


def worker_pool(args, tokenizer):
    # fork: workers inherit the loaded tokenizer at once. They only tokenize, so threads the parent
    # may already run (fsspec's IO loop for hub files) are of no concern to them.
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return context.Pool(args.workers, initializer=_init_worker, initargs=(tokenizer,))


def stream_chunks(pool, workers, source, start):
    """(first document, tokens, tokens per document, start position) tokenized from the source."""
    first_doc, pos = start
    for doc, tokens, lengths in tokenized_chunks(pool, workers, source.documents(first_doc), first_doc):
        yield doc, tokens, lengths, pos
        pos = 0


def fill_shards(writer, chunks, bar, measure):
    """Feed chunks to the writer until they run out (False) or the limit is reached (True)."""
    for doc, tokens, lengths, pos in chunks:
        reached = writer.add(doc, tokens, lengths, pos)
        bar.update(measure(writer) - bar.n)
        bar.set_postfix(refresh=False, docs=f"{writer.end_doc:,}",
                        tokens=f"{writer.written + writer.fill:,}",
                        shards=len(writer.manifest["shards"]))
        if reached:
            return True
    return False


def write_shards(args, source, tokenizer, out, manifest, limit):
    writer = ShardWriter(out, manifest, limit)
    bar, measure = progress(limit, source, writer.written, by_bytes=not args.pack)
    with worker_pool(args, tokenizer) as pool, bar:
        chunks = (pack_chunks(args, pool, source, out, writer.start) if args.pack else
                  stream_chunks(pool, args.workers, source, writer.start))
        reached = fill_shards(writer, chunks, bar, measure)
    writer.finish(exhausted=not reached)
    return writer


def open_args_source(args, revision):
    return open_source(args.source, args.text_field, args.split, revision=revision,
                       doc_separator=args.doc_separator, retry=Retry(args.retry_for))


def forget_unfinished_output(out):
    """An error before the first shard: remove the manifest (and char vocabulary) we started, and
    the folder if it is then empty. Nothing finished is lost: parts, if any, stay."""
    for path in (out / MANIFEST, out / CHAR_TOKENIZER_FILE):
        path.unlink(missing_ok=True)
    with suppress(OSError):
        out.rmdir()


def run(args):
    out = Path(args.out)
    old = read_manifest(out) if (out / MANIFEST).exists() else None
    if old is None and (any(out.glob("*_val_*")) or any(out.glob("*_train_*"))):
        die(f"{out} holds shards but no {MANIFEST}; use an empty --out")
    if old:
        pinned = old.get("revision") if old.get("source") == args.source else None
    else:
        pinned = pinned_parts_revision(args) if args.pack else None
    source = open_args_source(args, pinned)
    if args.pack:
        check_parts(args, source, out)
    limit = stream_limit(args)
    identity = {"fingerprint": source.fingerprint, "tokenizer": args.tokenizer,
                "format": args.format, "prefix": args.prefix, "shard_tokens": args.shard_tokens}
    manifest = resume_manifest(out, old, identity, limit) if old else None
    if old and manifest is None:
        print(f"{out} is already complete ({len(old['shards'])} shards, "
              f"{sum(s['tokens'] for s in old['shards']):,} tokens); nothing to do", file=sys.stderr)
        return
    fresh = manifest is None
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    try:
        tokenizer = make_tokenizer(args, source, out, resuming=not fresh)
        if fresh:
            if tokenizer.name == "char":
                tokenizer.save(out)
            manifest = {"version": MANIFEST_VERSION, "source": args.source,
                        "revision": source.revision, **identity,
                        "vocab_size": tokenizer.vocab_size, "eot": tokenizer.eot,
                        "complete": False, "exhausted": False, "shards": []}
        writer = write_shards(args, source, tokenizer, out, manifest, limit)
    except BaseException as e:
        # Every finished shard stays, whatever the error: the same command continues from them.
        if fresh and not (manifest and manifest["shards"]):
            forget_unfinished_output(out)
        if isinstance(e, ValueError):  # a character outside the char vocabulary, say
            die(e)
        raise
    shards = manifest["shards"]
    if len(shards) == 1:
        print(f"warning: only {shards[0]['tokens']:,} tokens: a validation shard and no training "
              "shard; lower --shard-tokens", file=sys.stderr)
    print(f"wrote {len(writer.new_files)} shards to {out} ({len(shards)} in all, "
          f"{sum(s['tokens'] for s in shards):,} tokens)", file=sys.stderr)
    if args.pack and manifest["exhausted"]:
        if args.keep_parts:
            print(f"kept the parts in {out / PARTS} (--keep-parts)", file=sys.stderr)
        else:  # every token of them is in the shards now
            shutil.rmtree(out / PARTS)
            print(f"deleted {out / PARTS}: packed into the shards (--keep-parts keeps them)",
                  file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Slurm job arrays: task I of N tokenizes every Nth source file into its own part (a .bin token
# stream, and the token count of each of its documents); then one `--pack` cuts the parts, in
# source order, into exactly the shards a single streaming run writes (it tokenizes any part still
# missing itself) and deletes them.

PARTS = "parts"
PARTS_INFO = "parts.json"


def part_path(out, index):
    return out / PARTS / f"part_{index:06d}.bin"


def part_lengths_path(out, index):
    """Tokens of each document of a part; written after the part, so it marks the part done."""
    return out / PARTS / f"part_{index:06d}.lengths.npy"


def part_done(out, index):
    return part_lengths_path(out, index).exists() and part_path(out, index).exists()


def check_parts(args, source, out):
    """Parts are only valid for one (source, tokenizer): record them once, check every later use."""
    if args.tokenizer != "gpt2":
        die("Slurm array mode (--num-tasks/--pack) needs --tokenizer gpt2: a char vocabulary is "
            "the whole corpus's alphabet, which no single task sees")
    if source.files is None:
        die(f"--source {args.source}: Slurm array mode needs a source made of files "
            "(local, or a hub dataset stored as jsonl/json/parquet/txt)")
    info = {"source": args.source, "revision": source.revision, "fingerprint": source.fingerprint,
            "tokenizer": args.tokenizer, "files": len(source.files)}
    path = out / PARTS / PARTS_INFO
    if path.exists():
        old = json.loads(path.read_text())
        different = [k for k in ("fingerprint", "tokenizer", "files") if old.get(k) != info[k]]
        if different:
            die(f"{path.parent} holds parts made with a different {', '.join(different)}; delete "
                "it or use another --out")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as f:  # tasks starting together write the same: last one wins
            f.write(json.dumps(info, indent=1) + "\n")


def pinned_parts_revision(args):
    """Every task must read the hub dataset at the same commit: the first recorded it."""
    path = Path(args.out) / PARTS / PARTS_INFO
    if path.exists():
        info = json.loads(path.read_text())
        if info.get("source") == args.source:
            return info.get("revision")
    return None


def make_part(pool, workers, source, out, index):
    """Tokenize source file `index` into its part and lengths; a crash leaves only temporaries."""
    path = part_path(out, index)
    for stale in path.parent.glob(f".part_{index:06d}.*.tmp-*"):  # left by a killed attempt
        stale.unlink(missing_ok=True)
    lengths = []

    def chunks():
        documents = source.file_documents(source.files[index])
        for _, tokens, chunk_lengths in tokenized_chunks(pool, workers, documents, 0):
            lengths.append(chunk_lengths)
            yield tokens

    write_bin_chunks(path, chunks())
    with atomic_write(part_lengths_path(out, index)) as f:
        np.save(f, np.concatenate(lengths) if lengths else np.zeros(0, np.int64))


def run_task(args):
    if not 0 <= args.task_index < args.num_tasks:
        die(f"--task-index {args.task_index} must be in [0, {args.num_tasks})")
    out = Path(args.out)
    source = open_args_source(args, pinned_parts_revision(args))
    check_parts(args, source, out)
    mine = [i for i in range(len(source.files)) if i % args.num_tasks == args.task_index]
    todo = [i for i in mine if not part_done(out, i)]
    print(f"task {args.task_index}/{args.num_tasks}: {len(mine)} of {len(source.files)} files, "
          f"{len(mine) - len(todo)} already done", file=sys.stderr)
    with worker_pool(args, GPT2Tokenizer()) as pool:
        for i in tqdm(todo, unit="file", file=sys.stderr, dynamic_ncols=True):
            make_part(pool, args.workers, source, out, i)


def pack_chunks(args, pool, source, out, start):
    """Each part as one chunk, in source order, from stream position `start`; missing parts are made."""
    first_doc = 0
    for index in range(len(source.files)):
        if not part_done(out, index):
            make_part(pool, args.workers, source, out, index)
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


def available_cores():
    """Cores this process may use (a Slurm allocation or taskset), not all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


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
    parser.add_argument("--workers", type=positive_int, default=available_cores(),
                        help="tokenizer processes (all cores available to this process)")
    parser.add_argument("--text-field", default="text", help="field/column holding the text")
    parser.add_argument("--split", default="train", help="dataset split of hf: sources")
    parser.add_argument("--doc-separator",
                        help="split local .txt files into documents at this text, e.g. "
                             "'<|endoftext|>' (TinyStories-train.txt); without it a local .txt "
                             "file is one document")
    parser.add_argument("--retry-for", type=duration, default=DEFAULT_RETRY_FOR,
                        help="keep retrying a failing hub request this long (30m, 2h, 90s) "
                             f"before stopping with exit status {EXIT_RETRIES_EXHAUSTED}; finished "
                             "shards are kept and the same command resumes")
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
    except (SourceError, ManifestError, ShardError, RuntimeError) as e:
        die(e)
    except RetriesExhausted as e:  # not bad input: the network; the same command resumes
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_RETRIES_EXHAUSTED)
    except KeyboardInterrupt:
        die("interrupted; run the same command again to resume")


if __name__ == "__main__":
    main()
