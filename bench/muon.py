"""Muon's step on FSDP shards, 2 CPU ranks (gloo): the owner layout (trainer/muon.py: each
matrix orthogonalised once, on one rank) against every rank gathering and orthogonalising every
matrix (the layout before it), on the modern block's matrices at 124M's shapes.

    python bench/muon.py                  # 2 blocks: 14 matrices of 768 x 768, 2048 x 768, 768 x 2048
    python bench/muon.py --n-layer 4 --steps 5

Both run the same gradients from the same weights and must end bit for bit equal; the figure is
the optimizer step's wall time (the slower rank's mean over the timed steps, after one warm-up
step), fp32 Newton-Schulz, one thread a rank.
"""

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.distributed.tensor.debug import CommDebugMode

from models.modern import ModernConfig
from trainer.muon import Muon, orthogonalize


class GatherEverywhere(Muon):
    """The layout before owner ranks: every rank all-gathers each matrix whole, orthogonalises it
    and keeps its own rows."""

    def orthogonalize(self, updates, group):
        args = group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
        return [distribute_tensor(orthogonalize(u.full_tensor(), *args), u.device_mesh, u.placements,
                                  src_data_rank=None).to_local() for u in updates]


def run_rank(rank, port, args, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (2,))
    width, hidden = args.n_embd, ModernConfig(n_embd=args.n_embd).mlp_hidden
    shapes = args.n_layer * ([(width, width)] * 4 + [(hidden, width)] * 2 + [(width, hidden)])
    torch.manual_seed(0)
    weights = [torch.randn(shape) * 0.02 for shape in shapes]
    grads = [[torch.randn(shape) for shape in shapes] for _ in range(args.steps + 1)]
    finals = {}
    for name, optimizer_class in (("gather everywhere", GatherEverywhere), ("owner ranks", Muon)):
        params = [torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in weights]
        optimizer = optimizer_class(params, lr=0.02, weight_decay=0.05, ns_dtype=torch.float32)
        seconds = 0.0
        for step, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads):
                p.grad = distribute_tensor(g, mesh, [Shard(0)])
            dist.barrier()
            start = time.perf_counter()
            with CommDebugMode() as comm:
                optimizer.step()
            if step > 0:  # the first step makes the momentum buffers
                seconds += time.perf_counter() - start
        finals[name] = [p.full_tensor() for p in params]
        results[(name, rank)] = (seconds / args.steps, comm.get_total_counts())
    results[("equal", rank)] = all(torch.equal(a, b) for a, b in zip(*finals.values()))
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-embd", type=int, default=768)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(run_rank, args=(port, args, results), nprocs=2, start_method="spawn")
    assert results[("equal", 0)] and results[("equal", 1)], "the two layouts' weights differ"
    step_seconds = {}
    for name in ("gather everywhere", "owner ranks"):
        step_seconds[name] = max(results[(name, rank)][0] for rank in range(2))
        print(f"{name:17}: {step_seconds[name]:6.2f} s a Muon step, "
              f"{results[(name, 0)][1]} collectives a step ({args.n_layer * 7} matrices)")
    speedup = step_seconds["gather everywhere"] / step_seconds["owner ranks"]
    print(f"speed-up of the owner layout: {speedup:.2f}x (weights bit for bit equal)")


if __name__ == "__main__":
    main()
