"""Peak host memory and seconds per rank while the trainer builds its model (train_gpt2.build:
model, sharding or DDP, AdamW), FSDP against DDP, on 2 CPU ranks (gloo); gpt2-350m by default.

    python bench/startup_memory.py                      # gpt2-350m: ~1.4 GB of fp32 weights
    python bench/startup_memory.py --preset gpt2-124m
    python bench/startup_memory.py --preset gpt2-1558m --variants fsdp-drawing-twice fsdp

Start-ups, each in 2 fresh processes: DDP (every rank builds the whole model and DDP's gradient
buckets beside it); FSDP as the trainer starts it (built on the meta device, each rank
materialises only its shards, drawing each full parameter once); and, for comparison, FSDP from
a model built whole on every rank first (the trainer's start-up before it built on the meta
device), and FSDP drawing what the trainer drew before each weight was drawn once (every
module's default initialisation, then the residual projections and the tied embedding twice).
The figures are each rank's peak RSS above its RSS before building, and the seconds the build
took (the largest of the 2 ranks): nearly all of a CPU start-up's time to its first step.
"""

import argparse
import copy
import os
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.multiprocessing as mp

import train_gpt2
from models.gpt2 import GPT, GPTConfig
from trainer.config import parse_config
from trainer.distributed import ParallelModel, Runtime

GB = 1e9
VARIANTS = ("ddp", "fsdp", "fsdp-built-whole", "fsdp-drawing-twice")


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def start_up(rank, port, preset, variant, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    runtime = Runtime.from_env("cpu")
    runtime.init_process_group()
    cfg = parse_config(["--preset", preset, "--compile", "false"] + (["--fsdp"] if variant != "ddp" else []))
    before, start = rss_bytes(), time.perf_counter()
    if variant == "fsdp-drawing-twice":
        draw_what_was_drawn_for_nothing(cfg.model_config())
    if variant == "fsdp-built-whole":
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(**cfg.model_config()))
        ParallelModel(model, runtime, fsdp=True)
        model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, "cpu",
                                  verbose=False)
    else:
        model, _, _ = train_gpt2.build(cfg, runtime, None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results[(variant, rank)] = (peak - before, model.num_params(), seconds)
    runtime.close()


def draw_what_was_drawn_for_nothing(model_config):
    """The draws of the former start-up that the trainer no longer makes: each module's default
    initialisation (on CPU, one module at a time, as it was), and the second draw of the
    residual projections and of the tied embedding/output matrix."""
    with torch.device("meta"):
        model = GPT(GPTConfig(**model_config))
    for name, module in model.named_modules():
        if hasattr(module, "reset_parameters"):
            copy.deepcopy(module).to_empty(device="cpu").reset_parameters()
        if name.endswith("c_proj") or name == "lm_head":
            torch.empty(module.weight.shape).normal_()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-350m")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS,
                        help="gpt2-1558m: leave out ddp and fsdp-built-whole (a whole model per rank)")
    args = parser.parse_args()
    results = mp.Manager().dict()
    for variant in args.variants:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(start_up, args=(port, args.preset, variant, results), nprocs=2,
                           start_method="spawn")
    peaks = {v: max(results[(v, r)][0] for r in range(2)) for v in args.variants}
    seconds = {v: max(results[(v, r)][2] for r in range(2)) for v in args.variants}
    params = results[(args.variants[0], 0)][1]
    print(f"{args.preset}: {params:,} parameters, {4 * params / GB:.2f} GB in fp32; 2 ranks")
    for v in args.variants:
        print(f"{v:18s} peak RSS above start {peaks[v] / GB:5.2f} GB a rank; build {seconds[v]:6.1f} s")
    for a, b in (("fsdp", "ddp"), ("fsdp", "fsdp-built-whole"), ("fsdp", "fsdp-drawing-twice")):
        if a in peaks and b in peaks:
            print(f"ratio {a} / {b}: memory {peaks[a] / peaks[b]:.2f}, seconds {seconds[a] / seconds[b]:.2f}")


if __name__ == "__main__":
    main()
