"""--micro-batch-size auto: the largest micro-batch that divides each rank's share and fits.

The global batch (total_batch_size tokens = S sequences) is fixed by the recipe; each of the
world_size ranks handles S / world_size sequences per step, in grad_accum micro-batches of B.
B only trades memory for speed, never the data or the result, so it can be chosen per machine:

- it must be a power of two dividing S / world_size (then grad_accum is a whole number);
- on CUDA it must fit: a real forward + backward + optimizer step is tried at start-up, halving
  B on torch.OutOfMemoryError, and all ranks take the smallest B any of them could fit;
- on CPU and MPS (no reliable out-of-memory error) the largest divisor not above 64.
"""

import torch

CPU_MAX_MICRO_BATCH = 64


class MicroBatchError(ValueError):
    """The global batch cannot be split over the ranks; the message says what to change."""


def sequences_per_rank(total_batch_size, seq_len, world_size):
    """S / world_size, or MicroBatchError when the global batch does not split into whole
    sequences per rank."""
    if total_batch_size % seq_len:
        raise MicroBatchError(f"--total-batch-size {total_batch_size} is not a whole number of "
                              f"--seq-len {seq_len} sequences; make it a multiple of {seq_len}")
    sequences = total_batch_size // seq_len
    if sequences < world_size or sequences % world_size:
        raise MicroBatchError(
            f"--total-batch-size {total_batch_size} is {sequences} sequences of {seq_len} tokens, "
            f"which {world_size} ranks cannot share equally (each needs a whole number, at least "
            f"one); use a multiple of {seq_len * world_size} tokens or fewer ranks")
    return sequences // world_size


def candidates(total_batch_size, seq_len, world_size, largest=None):
    """Powers of two dividing the per-rank share, largest first (at most `largest`)."""
    per_rank = sequences_per_rank(total_batch_size, seq_len, world_size)
    b = per_rank & -per_rank  # the largest power of two dividing it
    if largest is not None:
        while b > largest:
            b //= 2
    found = []
    while b >= 1:
        found.append(b)
        b //= 2
    return found


def largest_that_fits(options, fits):
    """The first of `options` (largest first) for which fits(B) returns without
    torch.OutOfMemoryError; MicroBatchError when even the smallest does not fit."""
    for b in options:
        try:
            fits(b)
            return b
        except torch.OutOfMemoryError:
            pass
    raise MicroBatchError(f"even a micro-batch of {options[-1]} sequence(s) runs out of GPU memory: "
                          f"use --fsdp, --activation-checkpointing, a shorter --seq-len, or more GPUs")


def try_training_step(parallel, optimizer, micro_batch, seq_len, vocab_size, autocast_dtype):
    """One forward + backward + optimizer step on random tokens, then every trace of it removed:
    gradients and AdamW state dropped (AdamW starts them afresh) and, with lr 0, the weights
    untouched. Raises torch.OutOfMemoryError when it does not fit.

    It runs the plain module: under DDP no collective is involved, so a rank that runs out of
    memory cannot leave the others waiting. Under FSDP the forward itself gathers weights from
    every rank; identical GPUs run out at the same size, but mixed GPUs could stall the probe
    until --dist-timeout-min: give FSDP jobs on mixed GPUs an explicit --micro-batch-size."""
    device = parallel.runtime.device
    lrs = [group["lr"] for group in optimizer.param_groups]
    try:
        x = torch.randint(0, vocab_size, (micro_batch, seq_len), device=device)
        with torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype is not None):
            _, loss = parallel.module(x, x)
        loss.backward()
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        if device.type == "cuda":
            torch.cuda.empty_cache()


def choose(cfg, runtime, fits=None):
    """(micro-batch size, why) for cfg on runtime; `fits(B)` raises torch.OutOfMemoryError when
    B does not fit (CUDA), None elsewhere. All ranks return the same B."""
    if cfg.micro_batch_size != "auto":
        return cfg.micro_batch_size, "set by --micro-batch-size"
    per_rank = sequences_per_rank(cfg.total_batch_size, cfg.seq_len, runtime.world_size)
    if fits is None:  # the same arithmetic on every rank: no need to agree
        b = candidates(cfg.total_batch_size, cfg.seq_len, runtime.world_size, CPU_MAX_MICRO_BATCH)[0]
        return b, f"auto: largest power of two dividing {per_rank} sequences per rank, at most {CPU_MAX_MICRO_BATCH}"
    b = largest_that_fits(candidates(cfg.total_batch_size, cfg.seq_len, runtime.world_size), fits)
    why = f"auto: largest power of two dividing {per_rank} sequences per rank that fits in GPU memory"
    smallest = runtime.all_reduce(torch.tensor(b, device=runtime.device), op=torch.distributed.ReduceOp.MIN)
    if smallest.item() < b:
        why += f" on every rank (another rank fits only {smallest.item()})"
    return int(smallest.item()), why
