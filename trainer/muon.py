"""Muon (https://kellerjordan.github.io/posts/muon/): torch.optim.Muon with a choice of the dtype
its Newton–Schulz iteration runs in.

torch.optim.Muon orthogonalises every update in bf16, always. On GPUs that is the point (bf16
matmuls are the fast ones); on a CPU without bf16 units it is a disaster: one 768 x 3,072 matrix
took 43 s in bf16 against 1.7 s in fp32 (an AVX2 EPYC, /work/shared/ENVIRONMENT.md). torch offers
no hook for the dtype, so this subclass replaces `step` alone; the constructor, its checks, the
param groups and the state (`momentum_buffer` per matrix, so a checkpoint's optimizer state is
torch.optim.Muon's) are torch's. With ns_dtype=torch.bfloat16 the update is bit for bit
torch.optim.Muon's (tests/test_speedrun.py).

Under FSDP the parameters, gradients and momentum buffers are DTensors sharded by rows. The
momentum is updated shard by shard; each matrix's update is then orthogonalised whole on one
owner rank (owners balanced by matrix size), torchtitan's DistMuon `Owned` layout, Dion's and
nanochat's DistMuon pattern: an all-to-all brings every matrix's row shards to its owner, the
owner runs the iteration once, and a second all-to-all sends each rank its rows of the result.
The collectives are batched by shape: 2 all-to-alls per distinct matrix shape per step (the
modern block has 3 shapes, so 6 a step at any depth), against one all-gather per matrix and
every rank orthogonalising every matrix when each rank gathers them all (and 11 to 16 collectives
a matrix when torch.optim.Muon iterates on the sharded DTensor). The result is bit for bit the
update one process computes. Under DDP every rank runs the iteration whole (~0.4% of a 124M
step's FLOPs).
"""

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard


def orthogonalize(update, ns_coefficients, ns_steps, eps, dtype):
    """The nearest semi-orthogonal matrix to `update`, roughly (the quintic iteration pushes its
    singular values into ~[0.7, 1.2] rather than to 1: as good for training, and 5 steps), with
    the iteration in `dtype`. As torch.optim.Muon's: the wide orientation (fewer rows than
    columns: a smaller Gram matrix), scaled by the Frobenius norm so every singular value is <= 1."""
    a, b, c = ns_coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def ns_dtype_for(choice, device):
    """--muon-ns-dtype: auto is bf16 on CUDA (fast there, and torch.optim.Muon's), fp32 elsewhere."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[choice]


class Muon(torch.optim.Muon):
    """torch.optim.Muon whose Newton–Schulz iteration runs in `ns_dtype`. The learning rate is
    scaled by sqrt(max(1, rows / cols)) (torch's "original", Keller Jordan's), the only
    adjustment this trainer uses."""

    def __init__(self, params, ns_dtype=torch.bfloat16, **kwargs):
        if kwargs.get("adjust_lr_fn") not in (None, "original"):
            raise ValueError("this Muon implements adjust_lr_fn='original' only")
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)  # torch's: makes missing buffers
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            updates = []
            for grad, buffer in zip(grads, buffers):
                buffer.lerp_(grad, 1 - momentum)
                updates.append(grad.lerp(buffer, momentum) if group["nesterov"] else buffer)
            shapes = [param.shape for param in params]  # whole matrices' (for the lr scale)
            updates = self.orthogonalize(updates, group)
            if params and isinstance(params[0], DTensor):
                params = [param.to_local() for param in params]  # this rank's rows, as the updates
            for param, update, (rows, cols) in zip(params, updates, shapes):
                param.mul_(1 - lr * decay)
                param.add_(update, alpha=-lr * math.sqrt(max(1, rows / cols)))
        return loss

    def orthogonalize(self, updates, group):
        """The group's Newton-Schulz iteration on each of `updates`; DTensors (FSDP's shards) are
        orthogonalised on their owner ranks and come back as this rank's rows (plain tensors)."""
        args = group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
        if updates and isinstance(updates[0], DTensor):
            return orthogonalize_on_owners(updates, args)
        return [orthogonalize(update, *args) for update in updates]


def owner_ranks(shapes, world_size):
    """The rank that orthogonalises each matrix: the largest first, each to the least loaded rank
    so far (by elements; the iteration's cost grows with them), ties to the lowest rank. Every
    rank computes the same answer from the shapes alone."""
    load, owners = [0] * world_size, [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: -shapes[i].numel()):
        owners[i] = min(range(world_size), key=load.__getitem__)
        load[owners[i]] += shapes[i].numel()
    return owners


def shard_rows(rows, world_size):
    """Each rank's number of rows under Shard(0): torch.chunk's split, the last ranks short or empty."""
    chunk = -(-rows // world_size)
    return [max(0, min(chunk, rows - rank * chunk)) for rank in range(world_size)]


def orthogonalize_on_owners(updates, args):
    """`updates` (DTensors sharded by rows on one 1-D mesh) orthogonalised each on its owner
    rank; returns this rank's rows of each result. One pair of all-to-alls per shape: the
    transient buffers hold one shape's matrices at a time."""
    mesh = updates[0].device_mesh
    if mesh.ndim != 1 or any(u.placements != (Shard(0),) for u in updates):
        raise ValueError("Muon's owner layout needs the matrices sharded by rows on a 1-D mesh (FSDP's)")
    owners = owner_ranks([u.shape for u in updates], mesh.size())
    results = [None] * len(updates)
    for shape in dict.fromkeys(u.shape for u in updates):
        same = [i for i, u in enumerate(updates) if u.shape == shape]
        mine = exchange_and_orthogonalize([updates[i] for i in same], [owners[i] for i in same], args)
        for i, rows in zip(same, mine):
            results[i] = rows
    return results


def exchange_and_orthogonalize(updates, owners, args):
    """Matrices of one shape: their row shards all-to-all to their owners, orthogonalised there,
    the results' rows all-to-all back. Both messages run in matrix order within each rank's part."""
    mesh = updates[0].device_mesh
    group, world, rank = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    device = updates[0].to_local().device
    rows, cols = updates[0].shape
    split = shard_rows(rows, world)  # rows each rank holds of every matrix here
    owned = [i for i, owner in enumerate(owners) if owner == rank]

    # gather: to each rank the shards of the matrices it owns; from each rank its shard of mine
    send = [updates[i].to_local() for dest in range(world) for i, o in enumerate(owners) if o == dest]
    send_counts = [owners.count(dest) * split[rank] * cols for dest in range(world)]
    recv_counts = [len(owned) * split[src] * cols for src in range(world)]
    shards = all_to_all_concatenated(send, send_counts, recv_counts, updates[0].dtype, device, group)
    by_source = [part.view(len(owned), split[src], cols) for src, part in enumerate(shards)]
    whole = [orthogonalize(torch.cat([part[k] for part in by_source]), *args) for k in range(len(owned))]

    # scatter: to each rank its rows of the matrices I own; from each owner my rows of its matrices
    send = [matrix.split(split)[dest] for dest in range(world) for matrix in whole]
    send_counts = [len(owned) * split[dest] * cols for dest in range(world)]
    recv_counts = [owners.count(src) * split[rank] * cols for src in range(world)]
    parts = all_to_all_concatenated(send, send_counts, recv_counts, args[-1], device, group)
    mine = {src: iter(part.view(owners.count(src), split[rank], cols)) for src, part in enumerate(parts)}
    return [next(mine[owner]) for owner in owners]


def all_to_all_concatenated(tensors, send_counts, recv_counts, dtype, device, group):
    """One all_to_all_single of `tensors` laid end to end in `dtype`, `send_counts` elements to
    each rank; returns what each rank sent here, one flat tensor per rank."""
    if tensors:
        send = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
    else:  # this rank owns none of these matrices
        send = torch.empty(0, dtype=dtype, device=device)
    received = torch.empty(sum(recv_counts), dtype=dtype, device=device)
    dist.all_to_all_single(received, send, recv_counts, send_counts, group=group)
    return received.split(recv_counts)
