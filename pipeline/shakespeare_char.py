"""Tiny Shakespeare as character-level shards, with the split of Karpathy's lecture.

    python -m pipeline.shakespeare_char                       # download input.txt (when online)
    python -m pipeline.shakespeare_char --input input.txt     # or use a local copy
    python train_gpt2.py --preset shakespeare-char            # then train the lecture's model

As in "Let's build GPT" (gpt.py): the vocabulary is the sorted set of characters of the whole
text (65 for Tiny Shakespeare), the first 90% of the characters are training data and the last
10% validation. Written in the shard layout the trainer reads: shard 0 = val
(`shakespeare_char_val_000000.bin`), shard 1 = train, manifest.json (tokenizer "char") and
tokenizer.json beside them.
"""

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

from pipeline.tokenizer import CharTokenizer
from shards.format import FORMATS, write_shard
from shards.manifest import MANIFEST_VERSION, file_sha256, shard_name, write_manifest

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DEFAULT_OUT = "data/shakespeare_char"
PREFIX = "shakespeare_char"
TRAIN_FRACTION = 0.9  # the lecture: n = int(0.9 * len(data))


def split_text(text, train_fraction=TRAIN_FRACTION):
    """(train, val): the first 90% of the characters and the last 10%, as in the lecture."""
    n = int(train_fraction * len(text))
    return text[:n], text[n:]


def download(url=URL, timeout=30):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode("utf-8")
    except Exception as e:  # offline, proxy, DNS, HTTP error: all end the same way
        raise SystemExit(f"error: cannot download Tiny Shakespeare from {url} ({type(e).__name__}: "
                         f"{e}); download input.txt elsewhere and pass --input input.txt") from None


def prepare(text, out, source="tinyshakespeare", fmt="bin", prefix=PREFIX):
    """Write the char tokenizer, the val and train shards and the manifest; return the manifest."""
    if len(text) < 100:
        raise ValueError(f"{source}: only {len(text)} characters; expected a text corpus")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = CharTokenizer.from_corpus([text])
    tokenizer.save(out)
    train, val = split_text(text)
    shards = []
    for index, (split, part) in enumerate((("val", val), ("train", train))):
        path = out / shard_name(prefix, index, fmt)
        write_shard(path, tokenizer.encode(part), fmt)
        shards.append({"name": path.name, "split": split, "tokens": len(part),
                       "sha256": file_sha256(path),
                       # character offsets of the shard in the one-document source
                       "doc_start": 0, "doc_offset": len(train) if split == "val" else 0})
    manifest = {
        "version": MANIFEST_VERSION, "source": str(source),
        "fingerprint": "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "tokenizer": "char", "vocab_size": tokenizer.vocab_size, "eot": None, "format": fmt,
        "prefix": prefix, "shard_tokens": max(len(train), len(val)), "complete": True,
        "split": f"first {TRAIN_FRACTION:.0%} train, last {1 - TRAIN_FRACTION:.0%} val (characters)",
        "shards": shards,
    }
    write_manifest(out, manifest)
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pipeline.shakespeare_char",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="a local input.txt (default: OUT/input.txt if present, "
                                        f"else download {URL})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"shard folder (default {DEFAULT_OUT})")
    parser.add_argument("--format", choices=FORMATS, default="bin")
    args = parser.parse_args(argv)
    out = Path(args.out)
    cached = out / "input.txt"
    if args.input:
        try:
            text = Path(args.input).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            parser.error(f"--input {args.input}: cannot read it as UTF-8 text ({e})")
        source = args.input
    elif cached.exists():
        text, source = cached.read_text(encoding="utf-8"), str(cached)
    else:
        print(f"downloading {URL}", file=sys.stderr)
        text, source = download(), URL
        out.mkdir(parents=True, exist_ok=True)
        cached.write_text(text, encoding="utf-8")
    try:
        manifest = prepare(text, out, source=source, fmt=args.format)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    val, train = manifest["shards"]
    print(f"{len(text):,} characters, vocabulary {manifest['vocab_size']}: "
          f"train {train['tokens']:,} tokens ({train['name']}), val {val['tokens']:,} tokens "
          f"({val['name']}) in {out}")
    print(f"next: python train_gpt2.py --preset shakespeare-char --data {out}")


if __name__ == "__main__":
    main()
