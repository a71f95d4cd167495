"""What only a GPU can show, in one command (~7.5 minutes on one H100 by its own estimate):

    python bench/gpu.py                  # on the first CUDA GPU
    python bench/gpu.py --only memory,checkpoint --presets gpt2-124m,gpt2-350m --budget-min 3
    python bench/gpu.py --smoke          # the same code on CPU with a tiny model (the suite runs it)

Measured with the trainer's own code (bench/gpu_rows.py, bench/gpu_hellaswag.py):
- throughput: gpt2-124m, T=1024, bf16: tokens/s and MFU, eager vs compiled, DDP vs FSDP (in a
  process group of one rank, so both wrap the model as on N GPUs), with and without activation
  checkpointing; the first step (compilation) timed apart;
- memory: torch.cuda.max_memory_allocated of the steady steps (2 and 3: AdamW's state resident) of
  each preset (--presets; gpt2-124m and gpt2-1558m by default) at the fit table's micro-batch for
  this GPU (one process, bf16), eager and compiled, beside the traced plan
  (trainer/memory_trace.py) and the formula (trainer/memory.py);
- probe: the micro-batch --micro-batch-size auto picks for the smallest and largest preset, the
  probe's seconds, one step at it; then under FSDP (world size 1, what one GPU gives: no
  communication), with its votes and the resets of FSDP's state after a try out of memory counted;
- checkpoint: seconds and bytes to gather and write each preset's training checkpoint (on
  --out-dir); then an FSDP run's checkpoint saved and loaded into a fresh FSDP run;
- fp16: one step of the float16 + GradScaler path;
- hellaswag: the ending chosen (acc_norm) in bf16 and in fp32, per example.

First an estimate of each row's seconds (bench/gpu_estimate.py: assumed figures, not measured);
the rows it says do not fit in --budget-min are skipped, each with a line saying so. Each row
runs under its own time limit in a worker process (bench/gpu_runner.py): one still running at it
is stopped and the next rows run. One JSON line per row as it ends ({"bench": "gpu", "row": ...}),
then a table. A failure (an out-of-memory, anything) is a row with "error" and the next row runs;
the exit status is then 1. Needs torch, numpy and tiktoken only.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench import gpu_estimate  # noqa: E402
from bench.gpu_plan import KINDS, plan_rows  # noqa: E402
from bench.gpu_rows import PRESETS, TINY, Settings, release  # noqa: E402
from bench.gpu_runner import run_rows, serve  # noqa: E402
from shards.format import write_shard  # noqa: E402
from trainer.config import parse_config  # noqa: E402
from trainer.distributed import Runtime  # noqa: E402
from trainer.metrics import peak_flops_of  # noqa: E402

UNKNOWN_GPU_FLOPS = 100e12  # the estimate's guess for a GPU missing from trainer.metrics' table


def write_random_shards(folder, vocab_size):
    """Random tokens for the loaders: enough for the largest global batch (gpt2-1558m's 2**20
    tokens), and a char tokenizer.json beside them so that train_gpt2.prepare_data needs no
    GPT-2 BPE files (a bare CUDA image has none, and no network)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tokens = min(vocab_size, 50257)
    write_shard(folder / "bench_val_000000.bin", rng.integers(0, tokens, 4096))
    write_shard(folder / "bench_train_000001.bin", rng.integers(0, tokens, int(1.01 * 2**20) + 4096))
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ."
    (folder / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list(chars)}))
    return folder


def device_and_peak(s):
    """(what runs the rows, in words; the peak FLOP/s the estimate assumes)."""
    if s.device.type != "cuda":
        return "CPU (--smoke)", gpu_estimate.CPU_FLOPS
    name = torch.cuda.get_device_name(s.device)
    peak = peak_flops_of(name)
    return (name, peak) if peak else (f"{name} (not in the peak FLOP/s table)", UNKNOWN_GPU_FLOPS)


def plan_within_budget(rows, device, peak, budget_s):
    """[(row name, estimate, limit, why skipped or None)], after printing the estimate."""
    estimates = gpu_estimate.estimate_rows(rows, peak)
    runs = gpu_estimate.fits(estimates, budget_s)
    planned = gpu_estimate.WORKER_START_S + sum(e for name, e in estimates.items() if runs[name])
    print(f"estimate (assumed figures, bench/gpu_estimate.py): {device} at {peak / 1e12:.4g} TFLOP/s "
          f"x {gpu_estimate.EXPECTED_MFU} MFU, checkpoints written at "
          f"{gpu_estimate.DISK_WRITE_BYTES_PER_S / 1e9:g} GB/s: {len(rows)} rows, "
          f"{gpu_estimate.WORKER_START_S + sum(estimates.values()):.0f} s in all; {sum(runs.values())} "
          f"rows, {planned:.0f} s within --budget-min {budget_s / 60:g}", flush=True)
    plan = []
    for name, estimate in estimates.items():
        skipped = None if runs[name] else \
            f"the estimate ({estimate:.0f} s) does not fit in --budget-min {budget_s / 60:g}"
        limit = gpu_estimate.limit_s(estimate)
        print(f"  {name}: ~{estimate:.0f} s, limit {limit:.0f} s{f'; skipped: {skipped}' if skipped else ''}")
        plan.append((name, estimate, limit, skipped))
    return plan


def print_table(rows):
    width = max(len(r["row"]) for r in rows)
    print(f"\n{'measurement':<{width}} | result\n{'-' * width}-|-------")
    for r in rows:
        fields = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in r.items() if k not in ("bench", "row"))
        print(f"{r['row']:<{width}} | {', '.join(fields)}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same code on CPU with a tiny model")
    parser.add_argument("--only", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    parser.add_argument("--presets", default="gpt2-124m,gpt2-1558m",
                        help=f"comma-separated, of the memory and checkpoint rows (the probe and FSDP "
                             f"checkpoint rows: the smallest and largest), of: {', '.join(PRESETS)}")
    parser.add_argument("--checkpoint", default="", help="a trained model (run folder or ckpt file) "
                        "for the HellaSwag row; default: random weights")
    parser.add_argument("--out-dir", default=None, help="where the checkpoint rows write (on the disk "
                        "your runs use); default: the system's temporary folder")
    parser.add_argument("--budget-min", type=float, default=8,
                        help="rows whose estimate does not fit in it are skipped (a line says so)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the folder of the run
    args = parser.parse_args(argv)
    for flag, value, choices in (("--only", args.only, KINDS), ("--presets", args.presets, PRESETS)):
        unknown = set(value.split(",")) - set(choices)
        if unknown:
            parser.error(f"{flag} {','.join(sorted(unknown))}: choose from {', '.join(choices)}")
    if args.out_dir and not Path(args.out_dir).is_dir():
        parser.error(f"--out-dir {args.out_dir}: no such folder; create it or pick another")
    if args.checkpoint and not Path(args.checkpoint).exists():
        parser.error(f"--checkpoint {args.checkpoint}: no such file or run folder")
    return args


def work(args):
    """The worker: the rows its parent names on stdin, in a process group of this process alone
    (the DDP and FSDP rows; no torchrun, no port)."""
    folder = Path(args.worker)
    s = Settings.for_run(args, folder / "data", folder)
    runtime = Runtime(0, 0, 1, s.device)
    if s.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as train() sets it
    try:
        runtime.init_process_group(group_of_one=True)
    except Exception as e:  # the DDP and FSDP rows will say they failed; the others still run
        print(f"warning: no process group ({type(e).__name__}: {e})", file=sys.stderr)
    try:
        serve({row.name: (row.function, row.args) for row in plan_rows(s, args.only.split(","))},
              lambda: release(s.device))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return work(args)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU here: bench/gpu.py measures a GPU (--smoke runs the same code on "
              "CPU with a tiny model)", file=sys.stderr)
        return 2
    if args.smoke:  # inductor takes minutes on CPU; Dynamo's part (breaks, guards) is the same
        os.environ.setdefault("TRAIN_COMPILE_BACKEND", "aot_eager")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.out_dir) as folder:
        write_random_shards(Path(folder) / "data", parse_config(TINY if args.smoke else []).vocab_size)
        s = Settings.for_run(args, Path(folder) / "data", Path(folder))
        device, peak = device_and_peak(s)
        print(f"device: {device}, torch {torch.__version__}", flush=True)
        plan = plan_within_budget(plan_rows(s, args.only.split(",")), device, peak, 60 * args.budget_min)
        worker = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", folder]
        rows = run_rows(plan, worker, 60 * args.budget_min)
    print_table(rows)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
