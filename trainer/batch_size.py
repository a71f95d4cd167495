"""--micro-batch-size auto: the largest micro-batch that divides each rank's share and fits.

The global batch (total_batch_size tokens = S sequences) is fixed by the recipe; each of the
world_size ranks handles S / world_size sequences per step, in grad_accum micro-batches of B.
B only trades memory for speed, never the data or the result, so it can be chosen per machine:

- it must be a power of two dividing S / world_size (then grad_accum is a whole number);
- on CUDA it must fit: the run's steady step (two micro-steps when it accumulates, then AdamW,
  with AdamW's state and DDP's gradients resident from the start, as from the run's second step
  on) is tried at start-up on a throwaway copy of the model under PROBE_MEMORY_FRACTION of the
  GPU's memory, halving B on torch.OutOfMemoryError; all ranks agree on each try's outcome, so
  they all take the same B;
- on CPU and MPS (no reliable out-of-memory error: past the RAM the machine swaps) the largest
  divisor not above 64 whose memory plan (trainer/memory.py's formula) fits this rank's share of
  the host's available RAM (`choose_in_host_memory`). The formula, not the trace: at 124M in fp32
  it is within 3% above the traced peak (3.03 / 6.55 / 20.6 / 77.0 GiB against 3.00 / 6.43 / 20.2
  / 75.1 at B = 1 / 4 / 16 / 64; at B = 8 on 2 ranks 11.24 against 11.01 under DDP, 10.80 against
  10.49 under FSDP) and instant, where a trace takes seconds a shape on a CPU.

Under FSDP a try is full of collectives (each block's weights are gathered in forward and in
backward, its gradients reduce-scattered). A rank that runs out of memory stops issuing them
while the others go on into the next one: the ranks' collectives would no longer match and the
job would hang until --dist-timeout-min. So during a try every rank votes (`agree`, an
all-reduce) before each collective FSDP issues and once at the end; a rank that runs out of
memory casts one "no" vote instead of going on, which the others meet at their next vote: then
all abandon the try together, their collectives matched one for one.
"""

import gc
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

CPU_MAX_MICRO_BATCH = 64
PROBE_MEMORY_FRACTION = 0.9  # of each GPU's memory a try may use: see headroom()
PROBED_DEVICES = ("cuda",)  # those whose torch.OutOfMemoryError comes before the machine swaps


class MicroBatchError(ValueError):
    """The global batch cannot be split over the ranks; the message says what to change."""


class PeerOutOfMemory(RuntimeError):
    """Another rank ran out of memory during this try: every rank abandons it."""


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


def agree(runtime, ok=True):
    """Every rank's vote, all-reduced: True when all are `ok`. A collective: see the module
    docstring for when each rank calls it."""
    vote = torch.tensor(int(ok), device=runtime.device)
    return bool(runtime.all_reduce(vote, op=dist.ReduceOp.MIN).item())


def largest_that_fits(options, fits, runtime):
    """(the first of `options`, largest first, that fits on every rank; the largest that fitted
    here but not on another rank, or None). fits(B) raises torch.OutOfMemoryError when B does not fit here,
    PeerOutOfMemory when a vote inside it found another rank out of memory; MicroBatchError
    when even the smallest does not fit."""
    others_failed = None
    for b in options:
        outcome = _outcome(fits, b)
        # the failed try's tensors died with its exception: hand their memory back before the
        # vote or the next try allocates (cuBLAS and NCCL allocate outside the caching allocator)
        release_memory(runtime.device)
        if outcome == "peer out of memory":  # its vote was this rank's vote for the try
            others_failed = others_failed or b
        elif agree(runtime, ok=outcome == "fits"):
            return b, others_failed
        elif outcome == "fits":
            others_failed = others_failed or b
    raise MicroBatchError(f"even a micro-batch of {options[-1]} sequence(s) runs out of GPU memory: "
                          f"use --fsdp, --activation-checkpointing, a shorter --seq-len, or more GPUs")


def _outcome(fits, b):
    """"fits", "out of memory" or "peer out of memory": what fits(b) did, as a word, so that the
    exception and the frames it holds (the try's activations) are gone once it returns."""
    try:
        fits(b)
    except PeerOutOfMemory:
        return "peer out of memory"
    except torch.OutOfMemoryError:
        return "out of memory"
    return "fits"


def release_memory(device):
    """Free what nothing refers to any more (reference cycles included) and, on CUDA, return
    the caching allocator's free blocks to the device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _VotingCollective:
    """One of FSDP's collectives (the interface of FSDPModule.set_custom_all_gather and
    set_custom_reduce_scatter: allocate, then call), run after a vote that every rank is still
    in the try."""

    def __init__(self, runtime, collective):
        self.runtime, self.collective = runtime, collective

    def allocate(self, size, *, dtype, device):
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, async_op=False, **op):
        if not agree(self.runtime):
            raise PeerOutOfMemory("another rank ran out of memory")
        return self.collective(output_tensor, input_tensor, group=group, async_op=async_op, **op)


def vote_before_collectives(module, runtime):
    """Make every FSDP module in `module` vote before each of its collectives (the probe's copy
    of the model only: the votes cost a round trip each)."""
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.set_custom_all_gather(_VotingCollective(runtime, dist.all_gather_into_tensor))
            m.set_custom_reduce_scatter(_VotingCollective(runtime, dist.reduce_scatter_tensor))


def try_training_step(parallel, optimizer, micro_batch, micro_steps, seq_len, vocab_size,
                      autocast_dtype, keep_gradients=False):
    """The run's steady step on random tokens, on the probe's copy of the model (its weights do
    not matter): two steps of the run's shape, `micro_steps` forwards and backwards (1, or 2
    when the step accumulates: FSDP then holds unsharded gradients from the first while the
    second runs and reduces) and AdamW's step. The first step makes what the run holds from its
    second step on, before its forward: AdamW's moments, and with keep_gradients the gradients
    (DDP's buckets, zeroed in place, never freed); the second is the step that must fit.

    Under DDP the copy is not wrapped: the try must issue no collective but the votes (a rank
    out of memory in backward would leave the others waiting in DDP's all-reduce), and the
    gradients it keeps are the buckets' memory (in the run they are views of the buckets).
    Raises torch.OutOfMemoryError when it does not fit (or PeerOutOfMemory); after a failure
    the model and optimizer are ready for the next try."""
    device, module = parallel.runtime.device, parallel.module
    generator = torch.Generator(device).manual_seed(0)  # leaves the global generator alone
    try:
        for _ in range(2):
            optimizer.zero_grad(set_to_none=not keep_gradients)
            for micro_step in range(micro_steps):
                x = torch.randint(0, vocab_size, (micro_batch, seq_len), device=device, generator=generator)
                with parallel.gradient_sync(micro_step == micro_steps - 1):
                    with torch.autocast(device.type, autocast_dtype, enabled=autocast_dtype is not None):
                        loss = module(x, x)[1]  # the logits freed, as in the run
                    loss.backward()
            # a step whose gradients miss the optimizer's parameters (FSDP left mid-iteration:
            # it computes with unsharded copies) would pass for one that fits
            missing = sum(p.grad is None for group in optimizer.param_groups for p in group["params"])
            if missing:
                raise RuntimeError(f"the micro-batch probe's step gave {missing} parameters no gradient")
            optimizer.step()
    except BaseException:
        if parallel.fsdp:  # FSDP's state is left mid-iteration (see fully_shard's docstring)
            module.reset_iter_state()
        raise
    finally:
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()


@contextmanager
def headroom(device):
    """Tries under it may use PROBE_MEMORY_FRACTION of the GPU's memory: the rest is left for
    what a try does not show (NCCL's buffers and cuBLAS's workspaces, allocated outside
    PyTorch's caching allocator; fragmentation over a long run; evaluation's other shapes)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_per_process_memory_fraction(PROBE_MEMORY_FRACTION, device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def choose_in_host_memory(cfg, runtime, plan_bytes, usable, described):
    """(micro-batch size, why) of auto on CPU and MPS: the largest power of two (at most
    CPU_MAX_MICRO_BATCH) dividing each rank's share whose plan_bytes(B) fits in `usable` bytes
    (`described` in words), the smallest over all ranks; MicroBatchError when B=1 does not fit.
    A collective: each rank reads its own host's available RAM at its own moment, so the
    figures differ between ranks and the ranks agree by a MIN all-reduce, as the CUDA probe's
    votes do."""
    per_rank = sequences_per_rank(cfg.total_batch_size, cfg.seq_len, runtime.world_size)
    options = candidates(cfg.total_batch_size, cfg.seq_len, runtime.world_size, CPU_MAX_MICRO_BATCH)
    here = next((b for b in options if plan_bytes(b) <= usable), 0)
    b = int(runtime.all_reduce(torch.tensor(here), op=dist.ReduceOp.MIN).item())
    if not b:
        where = described if not here else f"another rank's share of its host's RAM (here {described})"
        raise MicroBatchError(f"even a micro-batch of 1 sequence(s) does not fit in {where}: use --fsdp, "
                              f"--activation-checkpointing, a shorter --seq-len, fewer ranks on a host "
                              f"or a machine with more RAM")
    why = (f"auto: largest power of two (at most {CPU_MAX_MICRO_BATCH}) dividing {per_rank} sequences "
           f"per rank whose memory plan fits in {described}")
    return b, why + (f" (another rank had less: {here} fits here)" if b < here else "")


def choose(cfg, runtime, fits=None):
    """(micro-batch size, why) for cfg on runtime; `fits(B)` raises torch.OutOfMemoryError when
    B does not fit (CUDA); without it the arithmetic upper bound (the input checks before the
    process group, and all --dry-run knows without memory). All ranks return the same B."""
    if cfg.micro_batch_size != "auto":
        return cfg.micro_batch_size, "set by --micro-batch-size"
    per_rank = sequences_per_rank(cfg.total_batch_size, cfg.seq_len, runtime.world_size)
    if fits is None:  # the same arithmetic on every rank: no need to agree
        b = candidates(cfg.total_batch_size, cfg.seq_len, runtime.world_size, CPU_MAX_MICRO_BATCH)[0]
        return b, f"auto: largest power of two dividing {per_rank} sequences per rank, at most {CPU_MAX_MICRO_BATCH}"
    b, others_failed = largest_that_fits(
        candidates(cfg.total_batch_size, cfg.seq_len, runtime.world_size), fits, runtime)
    why = f"auto: largest power of two dividing {per_rank} sequences per rank that fits in GPU memory"
    if others_failed:
        why += f" on every rank (another rank ran out of memory at {others_failed})"
    return b, why
