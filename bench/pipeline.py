"""Pipeline throughput against its ceiling: tiktoken's own multi-threaded encode_ordinary_batch.

Both run in this process on the same documents and cores. The pipeline figure is end to end
(read jsonl, tokenize in parallel, write shards with sha256 and manifest); the ceiling is the bare
tokenizer on documents already in memory. Target: ratio >= 0.85.

    .venv/bin/python bench/pipeline.py                 # ~40 MB of text, all cores
    .venv/bin/python bench/pipeline.py --mb 10 --workers 2
"""

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import fineweb  # noqa: E402
from pipeline.tokenizer import get_gpt2_encoding  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parent.parent.parent / "shared/data/tinyshakespeare/input.txt"


def make_corpus(path, megabytes):
    """~4 KB documents (FineWeb-Edu's typical size) cut from Tiny Shakespeare, or synthetic text."""
    if SHAKESPEARE.exists():
        text = SHAKESPEARE.read_text()
    else:
        words = ["the", "model", "learns", "tokens", "from", "education", "pages", "and", "1984,"]
        text = " ".join(words[(i * 7919) % len(words)] for i in range(200_000))
    with open(path, "w") as f:
        for i in range(int(megabytes * 1e6 / 4000)):
            start = (i * 4093) % (len(text) - 4096)  # varied offsets so documents differ
            f.write(json.dumps({"text": text[start:start + 4000]}) + "\n")


def peak_rss_mb(who):
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=40, help="megabytes of text")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=fineweb.available_cores())
    args = parser.parse_args()

    enc = get_gpt2_encoding()  # loaded before timing either side
    pipeline_s, ceiling_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        make_corpus(corpus, args.mb)
        for i in range(args.rounds):  # alternate the two, keep the best of each: the machine is shared
            out = Path(tmp) / f"shards{i}"
            start = time.perf_counter()
            fineweb.main(["--source", str(corpus), "--out", str(out), "--shard-tokens", "2_000_000",
                          "--workers", str(args.workers)])
            pipeline_s.append(time.perf_counter() - start)
            if i == 0:  # peak memory of the pipeline alone, before the bench loads the documents
                main_rss, worker_rss = peak_rss_mb(resource.RUSAGE_SELF), peak_rss_mb(resource.RUSAGE_CHILDREN)
                tokens = sum(s["tokens"] for s in json.loads((out / "manifest.json").read_text())["shards"])
                docs = [json.loads(line)["text"] for line in corpus.open()]
            start = time.perf_counter()
            ceiling_tokens = sum(len(t) + 1 for t in enc.encode_ordinary_batch(docs, num_threads=args.workers))
            ceiling_s.append(time.perf_counter() - start)
            assert ceiling_tokens == tokens, (ceiling_tokens, tokens)
    pipeline_s, ceiling_s = min(pipeline_s), min(ceiling_s)

    print(f"documents: {len(docs):,} ({args.mb:g} MB), tokens: {tokens:,}, workers: {args.workers}, "
          f"best of {args.rounds} rounds")
    print(f"pipeline (read + tokenize + write shards): {tokens / pipeline_s / 1e6:.2f} M tok/s")
    print(f"ceiling  (tiktoken encode_ordinary_batch): {tokens / ceiling_s / 1e6:.2f} M tok/s")
    print(f"ratio: {ceiling_s / pipeline_s:.2f} (target >= 0.85)")
    print(f"peak RSS: main process {main_rss:.0f} MB, largest worker {worker_rss:.0f} MB")


if __name__ == "__main__":
    main()
