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
momentum is updated shard by shard; the update to orthogonalise is gathered whole (one
all-gather a matrix), orthogonalised on every rank, and each rank keeps its rows: the very update
one process computes. (Run on the sharded DTensor, torch.optim.Muon's iteration is also correct,
but DTensor makes 11 to 16 collectives a matrix for it, none overlapped. Gathering each matrix
to one owner rank instead of all would split the iteration's work N ways, as torchtitan's and
nanochat's DistMuon do; under DDP every rank runs it whole too, ~0.4% of a 124M step's FLOPs.)
"""

import math

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


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
            for param, grad, buffer in zip(params, grads, buffers):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = self.orthogonalize(update, group)
                rows, cols = param.shape
                param.mul_(1 - lr * decay)
                param.add_(update, alpha=-lr * math.sqrt(max(1, rows / cols)))
        return loss

    def orthogonalize(self, update, group):
        """The group's Newton-Schulz iteration on `update`; a DTensor (FSDP) is gathered whole
        (one all-gather) and each rank keeps its own rows of the result (no communication)."""
        args = group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
        if not isinstance(update, DTensor):
            return orthogonalize(update, *args)
        whole = orthogonalize(update.full_tensor(), *args)
        return distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)
