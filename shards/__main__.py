"""`python -m shards verify DIR` and `python -m shards info DIR`.

verify: every shard in the manifest exists, parses (magic, version, size) and has the manifest's
token count and sha256; exits 1 naming each bad file. A folder without a manifest (build-nanogpt,
llm.c) is checked for readable shards only.
info: source, tokenizer, format, and the shards with tokens per split.
"""

import argparse
import signal
import sys
from pathlib import Path

from shards.format import ShardError, detect_format, read_shard
from shards.manifest import (MANIFEST, SPLITS, ManifestError, file_sha256, list_shards,
                             read_manifest)


def check_shard(path, entry=None, fmt=None):
    """Problem with one shard as a string, or None if it is good."""
    try:
        tokens = len(read_shard(path))
        if fmt and detect_format(path) != fmt:
            return f"{path}: format {detect_format(path)}, manifest says {fmt}"
    except ShardError as e:
        return str(e)
    if entry is None:
        return None
    if tokens != entry["tokens"]:
        return f"{path}: {tokens} tokens, manifest says {entry['tokens']}"
    if file_sha256(path) != entry["sha256"]:
        return f"{path}: sha256 differs from the manifest (corrupt or modified)"
    return None


def verify(directory):
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        checks = [(directory / e["name"], e) for e in manifest["shards"]]
        fmt = manifest["format"]
    else:
        checks = [(p, None) for split in SPLITS for p in list_shards(directory, split)]
        manifest, fmt = None, None
        print(f"{directory}: no {MANIFEST}; checking that shards parse (no sha256 to compare)")
    if not checks:
        print(f"{directory}: no shards found", file=sys.stderr)
        return 1
    problems = [p for p in (check_shard(path, entry, fmt) for path, entry in checks) if p]
    for problem in problems:
        print(f"BAD {problem}", file=sys.stderr)
    if manifest is not None and not manifest["complete"]:
        print(f"note: {directory} is incomplete (the run was interrupted); rerun the same "
              "`python -m pipeline.fineweb` command to finish it")
    if problems:
        print(f"{len(problems)} of {len(checks)} shards are bad", file=sys.stderr)
        return 1
    tokens = sum(len(read_shard(path)) for path, _ in checks)
    print(f"OK: {len(checks)} shards, {tokens:,} tokens")
    return 0


def info(directory):
    directory = Path(directory)
    manifest = read_manifest(directory) if (directory / MANIFEST).exists() else None
    if manifest:
        print(f"source:     {manifest['source']}  ({manifest['fingerprint']})")
        print(f"tokenizer:  {manifest['tokenizer']} (vocab {manifest['vocab_size']}, "
              f"eot {manifest['eot']})")
        print(f"format:     {manifest['format']}, {manifest['shard_tokens']:,} tokens per shard, "
              f"{'complete' if manifest['complete'] else 'INCOMPLETE'}")
    for split in SPLITS:
        paths = list_shards(directory, split)
        sizes = [len(read_shard(p)) for p in paths]
        print(f"{split + ':':11} {len(paths)} shards, {sum(sizes):,} tokens")
        for path, size in zip(paths, sizes):
            print(f"  {path.name}  {size:,}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m shards", description=__doc__.split("\n\n")[1])
    parser.add_argument("command", choices=["verify", "info"])
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    if not Path(args.directory).is_dir():
        sys.exit(f"error: {args.directory}: no such folder")
    try:
        return verify(args.directory) if args.command == "verify" else info(args.directory)
    except (ManifestError, ShardError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    # `python -m shards info DIR | head`: end quietly when the reader is gone, as Unix tools do
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
