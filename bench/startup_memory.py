"""Peak host memory per rank while the trainer builds its model (train_gpt2.build: model,
sharding or DDP, AdamW), FSDP against DDP, on 2 CPU ranks (gloo); gpt2-350m by default.

    python bench/startup_memory.py                      # gpt2-350m: ~1.4 GB of fp32 weights
    python bench/startup_memory.py --preset gpt2-124m

Three start-ups, each in 2 fresh processes: DDP (every rank builds the whole model and DDP's
gradient buckets beside it); FSDP as the trainer starts it (built on the meta device, each rank
materialises only its shards, drawing one full parameter at a time); and, for comparison, FSDP
from a model built whole on every rank first (the trainer's start-up before it built on the meta
device). The figure is each rank's peak RSS above its RSS before building.
"""

import argparse
import os
import resource
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.multiprocessing as mp

import train_gpt2
from models.gpt2 import GPT, GPTConfig
from trainer.config import parse_config
from trainer.distributed import ParallelModel, Runtime

GB = 1e9
VARIANTS = ("ddp", "fsdp", "fsdp-built-whole")


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
    before = rss_bytes()
    if variant == "fsdp-built-whole":
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(**cfg.model_config()))
        ParallelModel(model, runtime, fsdp=True)
        model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, "cpu",
                                  verbose=False)
    else:
        model, _, _ = train_gpt2.build(cfg, runtime, None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results[(variant, rank)] = (peak - before, model.num_params())
    runtime.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-350m")
    args = parser.parse_args()
    results = mp.Manager().dict()
    for variant in VARIANTS:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(start_up, args=(port, args.preset, variant, results), nprocs=2,
                           start_method="spawn")
    peaks = {v: max(results[(v, r)][0] for r in range(2)) for v in VARIANTS}
    params = results[("ddp", 0)][1]
    print(f"{args.preset}: {params:,} parameters, {4 * params / GB:.2f} GB in fp32; 2 ranks")
    for v in VARIANTS:
        print(f"{v:17s} peak RSS above start {peaks[v] / GB:5.2f} GB a rank")
    print(f"ratio FSDP / DDP: {peaks['fsdp'] / peaks['ddp']:.2f}; FSDP / FSDP built whole: "
          f"{peaks['fsdp'] / peaks['fsdp-built-whole']:.2f}")


if __name__ == "__main__":
    main()
