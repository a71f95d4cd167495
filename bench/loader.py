"""Loader benchmark: host memory and time per batch of shards.loader (memory-mapped) against
build-nanogpt's loader (np.load of the whole shard, converted to int64 torch), same shard.

    python bench/loader.py                                  # a 100M-token shard, B=64, T=1024
    python bench/loader.py --shard-tokens 10000000 --batches 100

Each variant runs in a fresh process so its peak RSS (ru_maxrss) is its own; "python + torch"
is the floor every process pays. The shard is written once to a temporary folder (page cache
warm, as during training after the first epoch).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(mode, folder, B, T, batches):
    """One variant: returns dict(setup_s, ms_per_batch, peak_rss_mb)."""
    import numpy as np
    import torch

    t0 = time.perf_counter()
    if mode == "floor":
        next_batch = None
    elif mode in ("memmap", "memmap-shuffled"):
        from shards.loader import ShardLoader

        loader = ShardLoader(folder, "train", B, T, 1, 0, 1, shuffle=mode == "memmap-shuffled")
        next_batch = loader.next_batch
    elif mode == "np.load":
        # build-nanogpt's DataLoaderLite: the whole shard as int64 in memory
        tokens = torch.tensor(np.load(Path(folder) / "npy" / "bench_train_000001.npy").astype(np.int32),
                              dtype=torch.long)
        position = 0

        def next_batch():
            nonlocal position
            buf = tokens[position : position + B * T + 1]
            position += B * T
            return buf[:-1].view(B, T), buf[1:].view(B, T)
    else:
        raise ValueError(mode)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    if next_batch is not None:
        for _ in range(batches):
            x, y = next_batch()
            x.sum(), y.sum()  # touch the data
    ms = (time.perf_counter() - t0) * 1000 / batches
    return {"setup_s": setup, "ms_per_batch": ms if next_batch else 0.0, "peak_rss_mb": peak_rss_mb()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-tokens", type=int, default=100_000_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.batch, args.seq_len, args.batches)))
        return

    import numpy as np

    from shards.format import write_shard

    with tempfile.TemporaryDirectory() as folder:
        tokens = np.random.default_rng(0).integers(0, 50257, args.shard_tokens, dtype=np.uint16)
        write_shard(Path(folder) / "bench_train_000001.bin", tokens)
        (Path(folder) / "npy").mkdir()
        write_shard(Path(folder) / "npy" / "bench_train_000001.npy", tokens, fmt="npy")
        del tokens
        print(f"shard: {args.shard_tokens:,} tokens; batch {args.batch} x {args.seq_len}; "
              f"{args.batches} batches per variant")
        print(f"{'variant':<18} {'setup s':>8} {'ms/batch':>9} {'peak RSS MB':>12}")
        for mode in ("floor", "memmap", "memmap-shuffled", "np.load"):
            out = subprocess.run([sys.executable, __file__, "--worker", mode, "--folder", folder,
                                  "--batch", str(args.batch), "--seq-len", str(args.seq_len),
                                  "--batches", str(args.batches)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            label = "python + torch" if mode == "floor" else mode
            print(f"{label:<18} {r['setup_s']:8.2f} {r['ms_per_batch']:9.2f} {r['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
