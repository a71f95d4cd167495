"""How many copies of the gradients DDP holds with gradient accumulation: the trainer's choice
(gradients zeroed in place, so they stay views of DDP's reduction buckets) against setting them
to None between steps, on 2 CPU ranks (gloo), peak RSS per rank.

    python bench/ddp_gradients.py                 # 4 layers, 512 wide: ~13M parameters, 52 MB of gradients
    python bench/ddp_gradients.py --n-layer 8

With set_to_none=True every step's first backward under no_sync (accumulation micro-steps reduce
nothing) allocates fresh gradients beside DDP's buckets, copied into them only at the synchronised
micro-step: one more copy of the gradients at the step's peak. Each variant runs in fresh
processes; the figure is each rank's peak RSS above its RSS once the model is wrapped.
"""

import argparse
import os
import resource
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from models.gpt2 import GPT, GPTConfig

MB = 2**20


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_rank(rank, port, args, set_to_none, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    config = GPTConfig(block_size=args.seq_len, vocab_size=512, n_layer=args.n_layer, n_head=8,
                       n_embd=args.n_embd)
    model = DDP(GPT(config), gradient_as_bucket_view=True)
    optimizer = model.module.configure_optimizer(0.1, 1e-4, (0.9, 0.95), 1e-8, "cpu", verbose=False)
    grad_bytes = sum(p.numel() * 4 for p in model.parameters())
    baseline, outside = rss_bytes(), 0
    x = torch.randint(0, 512, (args.micro_batch, args.seq_len))
    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=set_to_none)
        for micro_step in range(args.grad_accum):
            model.require_backward_grad_sync = micro_step == args.grad_accum - 1
            _, loss = model(x, x)
            loss.backward()
            if micro_step == 0 and step > 0:  # the first step starts from None either way
                outside = max(outside, sum(p.grad.numel() * 4 for p in model.parameters()
                                           if p.grad._base is None))
        optimizer.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results[(set_to_none, rank)] = (peak - baseline, outside, grad_bytes)
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    results = mp.Manager().dict()
    for set_to_none in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(run_rank, args=(port, args, set_to_none, results), nprocs=2, start_method="spawn")
    rows = {}
    for set_to_none in (False, True):
        peaks = [results[(set_to_none, r)][0] for r in range(2)]
        outside, grad_bytes = results[(set_to_none, 0)][1:]
        rows[set_to_none] = max(peaks)
        name = "set_to_none=True " if set_to_none else "set_to_none=False"
        print(f"{name}: peak RSS above start {max(peaks) / MB:7.1f} MB a rank; gradients outside "
              f"DDP's buckets after a later step's first micro-step {outside / MB:6.1f} MB "
              f"(gradients: {grad_bytes / MB:.1f} MB)")
    print(f"ratio of peaks, in place (the trainer) / set to None: {rows[False] / rows[True]:.2f}")


if __name__ == "__main__":
    main()
