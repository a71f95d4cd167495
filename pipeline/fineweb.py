"""Tokenize a text corpus into uint16 token shards: `python -m pipeline.fineweb`.

Default: FineWeb-Edu sample-10BT streamed from the Hugging Face hub into 100M-token shards under
data/edu_fineweb10B/, shard 0 = validation, the rest training (build-nanogpt's layout), in llm.c's
.bin format. Each document contributes [EOT] + encode_ordinary(text), in source order, so the
token stream is a pure function of (source, tokenizer): identical bytes for any --workers and
across interruptions.

    python -m pipeline.fineweb                                  # FineWeb-Edu sample-10BT
    python -m pipeline.fineweb --source data/my.jsonl --out data/mine --shard-tokens 10_000_000
    python -m pipeline.fineweb --source input.txt --tokenizer char --out data/shakespeare_char

This file is the command line; the recipe is pipeline/make_shards.py: open the source and the
tokenizer (pipeline/inputs.py), tokenize it in a pool of worker processes (pipeline/pool.py), cut
the stream into shards (pipeline/writer.py); Slurm arrays make parts and pack them
(pipeline/array.py); one writer per folder at a time (pipeline/lock.py).

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
import sys

from pipeline.lock import Locked
from pipeline.make_shards import run, run_task
from pipeline.output import is_output_side, output_failure
from pipeline.pool import SHARED_MACHINE_WORKERS, WorkerDied
from pipeline.retry import (DEFAULT_RETRY_FOR, EXIT_RETRIES_EXHAUSTED, RetriesExhausted,
                            parse_duration)
from pipeline.sources import FINEWEB_EDU, SourceError
from pipeline.writer import OutputError
from shards.format import FORMATS, ShardError
from shards.manifest import ManifestError

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C ended


def die(message):
    raise SystemExit(f"error: {message}")


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
    if args.num_tasks and not 0 <= args.task_index < args.num_tasks:
        die(f"--task-index {args.task_index} must be in [0, {args.num_tasks})")
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
