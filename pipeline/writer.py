"""The single-run writer: cut the token stream into shards, and decide how an output folder is
continued (fresh start, resume from its finished shards, or nothing left to do).

manifest.json is written before the first shard and rewritten atomically after every shard, and
a shard is renamed into place before the manifest lists it: a run killed at any step leaves a
manifest whose shards are all complete, plus at most one shard it does not list yet, which the
resume simply writes again. So the same command continues from any kill point.
"""

import re
import sys
from contextlib import suppress

import numpy as np

from pipeline.killpoints import kill_point
from pipeline.tokenizer import CHAR_TOKENIZER_FILE
from shards.format import ShardError, read_shard, write_shard
from shards.manifest import (MANIFEST, ManifestError, file_sha256, read_manifest, shard_name,
                             write_manifest)

# Fields that must match for a rerun to continue an existing output folder.
IDENTITY = ("fingerprint", "tokenizer", "format", "prefix", "shard_tokens")


class OutputError(Exception):
    """The output folder cannot be continued by this command; the message says what to do."""


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
        kill_point("shard-renamed")
        self.new_files.append(path)
        self.manifest["shards"].append({
            "name": path.name, "split": "val" if index == 0 else "train", "tokens": self.fill,
            "sha256": file_sha256(path),
            "doc_start": self.start[0], "doc_offset": self.start[1],
            "doc_end": end[0], "end_offset": end[1]})
        write_manifest(self.out, self.manifest)
        kill_point("manifest")
        self.written += self.fill
        self.fill = 0
        self.start = end

    def finish(self, exhausted):
        if self.fill:
            self.flush((self.end_doc, 0))
        kill_point("finish")
        self.manifest["complete"] = True
        self.manifest["exhausted"] = exhausted
        write_manifest(self.out, self.manifest)


def resume_manifest(out, old, identity, limit):
    """The manifest to continue from: the old one cut back to its full shards, or None if done."""
    different = [k for k in IDENTITY if old.get(k) != identity[k]]
    if different:
        what = "; ".join(fingerprint_change(old.get(k), identity[k]) if k == "fingerprint" else
                         f"{k}: {old.get(k)!r} there, {identity[k]!r} now" for k in different)
        raise OutputError(f"{out} was made with different settings ({what}); use another --out "
                         "or delete it")
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


def fingerprint_change(old, new):
    """Which setting a fingerprint change stands for. A hub source's fingerprint reads
    hf:NAME:SUBSET:SPLIT@REVISION#TEXT_FIELD; a local one is a hash of the files' names, sizes
    and modification times with --text-field and --doc-separator."""
    (old, old_nulls), (new, new_nulls) = _null_text(old or ""), _null_text(new)
    if old_nulls != new_nulls:
        return f"--null-text: {old_nulls} there, {new_nulls} now"
    hub = re.compile(r"hf:(?P<dataset>.*):(?P<subset>[^:]*):(?P<split>[^:@]*)@(?P<revision>[^#]*)#(?P<text_field>.*)")
    before, now = hub.fullmatch(old), hub.fullmatch(new)
    if before and now:
        return "; ".join(f"the source's {part.replace('_', ' ')}: {before[part]!r} there, {now[part]!r} now"
                         for part in hub.groupindex if before[part] != now[part])
    if before or now:
        return (f"the source: {'a hub dataset' if before else 'local files'} there, "
                f"{'a hub dataset' if now else 'local files'} now")
    return ("the source's fingerprint: its file names, sizes or modification times, --text-field "
            "or --doc-separator changed")


def _null_text(fingerprint):
    """(the source's own fingerprint, the --null-text choice) of a fingerprint that
    pipeline.sources.with_null_text may have extended."""
    base, _, choice = fingerprint.partition("+null-text=")
    return base, choice or "refuse"


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


def forget_unfinished_output(out, lock):
    """After an error, if no shard is finished: remove what the run started (manifest, char
    vocabulary, the files of our `lock`); the folder itself is the caller's (pipeline/output.py).
    Anything finished keeps it all: a listed shard, a shard written but not yet listed (the resume
    writes it again), the parts. Never raises: the error that brought us here is the one to tell."""
    try:
        if read_manifest(out)["shards"]:
            return
    except ManifestError:
        if (out / MANIFEST).exists():  # unreadable, not ours to delete
            return
    if any(out.glob("*_val_*")) or any(out.glob("*_train_*")):
        return
    with suppress(OSError):
        for path in (out / MANIFEST, out / CHAR_TOKENIZER_FILE):
            path.unlink(missing_ok=True)
        lock.remove_files()
