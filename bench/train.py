"""Trainer overhead benchmark: the full training step of train_gpt2.py (loader, accumulation,
loss all-reduce/stop flag, logging, printing) against the bare model forward/backward/clip/AdamW
step on the same config and the same batches, in the same process. Target: ratio < 1.03.

    python bench/train.py                                  # small GPT-2-vocab model on CPU
    python bench/train.py --steps 50 -- --n-layer 12 --n-embd 768 --n-head 12 --device cuda
    python bench/train.py --fsdp                           # FSDP vs DDP, 2 ranks under torchrun

Flags after `--` go to train_gpt2.py (on top of DEFAULTS below). The two alternate step by step
(a bare step runs inside the trainer's logging call, and is subtracted from the trainer's time),
so a busy machine slows both alike; the median of the per-step ratios is the figure to quote.

--fsdp runs the same training as 2-rank torchrun jobs, DDP and FSDP in turn (twice each, so a
change in the machine's load falls on both), and reports the ratio of their median step times
and the state bytes each rank holds (from log.jsonl's setup record).
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

import train_gpt2
from trainer.config import parse_config
from models.gpt2 import GPT, GPTConfig
from shards.format import write_shard
from shards.loader import ShardLoader

DEFAULTS = ["--preset", "cpu-smoke", "--micro-batch-size", "4", "--total-batch-size", "512",
            "--eval-every", "0", "--checkpoint-every", "0", "--hellaswag-every", "0",
            "--warmup-steps", "2", "--resume", "never"]
WARMUP = 3  # first steps left out of the figures


def bare_stepper(cfg, steps):
    """A function running one bare step per call (same model, the trainer's batches read in
    advance) and returning its ms."""
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**cfg.model_config())).to(device)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps,
                                          device.type, verbose=False)
    grad_accum = cfg.total_batch_size // (cfg.micro_batch_size * cfg.seq_len)
    loader = ShardLoader(cfg.data, "train", cfg.micro_batch_size, cfg.seq_len, grad_accum, 0, 1)
    batches = iter([[tuple(t.contiguous().to(device) for t in loader.next_batch())
                     for _ in range(grad_accum)] for _ in range(steps)])

    def step():
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for x, y in next(batches):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                _, loss = model(x, y)
            (loss / grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000

    return step


def random_shards(folder, cfg, steps):
    """Random GPT-2 tokens, enough for every step."""
    rng = np.random.default_rng(0)
    write_shard(Path(folder) / "bench_val_000000.bin", rng.integers(0, 50257, 4096))
    write_shard(Path(folder) / "bench_train_000001.bin",
                rng.integers(0, 50257, steps * cfg.total_batch_size + cfg.seq_len + 1))


def compare_fsdp(args):
    argv = DEFAULTS + args.train_flags + ["--max-steps", str(args.steps)]
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as folder:
        random_shards(folder, parse_config(argv), args.steps)
        times, state = {"ddp": [], "fsdp": []}, {}
        for round_ in range(2):
            for mode in ("ddp", "fsdp"):
                out = Path(folder) / f"{mode}{round_}"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       str(repo / "train_gpt2.py"), *argv, "--data", folder, "--out-dir", str(out),
                       *(["--fsdp"] if mode == "fsdp" else [])]
                subprocess.run(cmd, check=True, capture_output=True, cwd=repo,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
                rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
                times[mode] += [r["ms"] for r in rows if "ms" in r][WARMUP:]
                state[mode] = next(r["setup"] for r in rows if "setup" in r)["state_bytes_per_rank"]
    ddp, fsdp = statistics.median(times["ddp"]), statistics.median(times["fsdp"])
    print(f"config: {' '.join(argv)}; 2 ranks; {len(times['ddp'])} steps timed each")
    print(f"median step: DDP {ddp:.1f} ms | FSDP {fsdp:.1f} ms | ratio FSDP/DDP {fsdp / ddp:.2f}")
    print(f"state per rank (weights + gradients + AdamW): DDP {state['ddp']['total'] / 1e6:.1f} MB | "
          f"FSDP {state['fsdp']['total'] / 1e6:.1f} MB | ratio {state['fsdp']['total'] / state['ddp']['total']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--fsdp", action="store_true", help="compare FSDP with DDP on 2 ranks")
    parser.add_argument("train_flags", nargs="*", help="after --: flags for train_gpt2.py")
    args = parser.parse_args()
    if args.fsdp:
        return compare_fsdp(args)
    argv = DEFAULTS + args.train_flags + ["--max-steps", str(args.steps)]
    with tempfile.TemporaryDirectory() as folder:
        shown = " ".join(argv)
        if "--data" not in argv:  # random GPT-2 tokens, enough for every step
            random_shards(folder, parse_config(argv), args.steps)
            argv += ["--data", folder]
        argv += ["--out-dir", str(Path(folder) / "run")]
        cfg = parse_config(argv)
        bare_step = bare_stepper(cfg, args.steps)
        full, bare = [], []
        last = None

        class Interleaved(train_gpt2.MetricsLogger):
            def log(self, metrics):
                nonlocal last
                super().log(metrics)
                if "loss" in metrics:
                    if last is not None:  # the trainer's step: since the end of the last bare step
                        full.append((time.perf_counter() - last) * 1000)
                    bare.append(bare_step())
                    last = time.perf_counter()

        train_gpt2.MetricsLogger = Interleaved
        with contextlib.redirect_stdout(io.StringIO()):  # the trainer's per-step lines
            assert train_gpt2.main(argv) == 0
    full, bare = full[WARMUP:], bare[WARMUP + 1 :]  # full[i] is the step after bare[i]
    ratios = [f / b for f, b in zip(full, bare)]
    tokens = cfg.total_batch_size
    print(f"config: {shown}; {len(full)} steps timed")
    for name, f, b in (("median", statistics.median(full), statistics.median(bare)),
                       ("fastest", min(full), min(bare))):
        print(f"{name:>7} step: full {f:8.1f} ms ({tokens / f * 1000:,.0f} tok/s) | "
              f"bare {b:8.1f} ms ({tokens / b * 1000:,.0f} tok/s) | ratio {f / b:.3f}")
    print(f"median of per-step ratios full/bare: {statistics.median(ratios):.3f} (target < 1.03)")


if __name__ == "__main__":
    main()
