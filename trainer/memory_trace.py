"""A rank's peak memory, traced: two real training steps of the run's model, allocating nothing.

    trace = trace_training_step(cfg, world_size=8, device_type="cuda")
    trace["peak_bytes"], trace["parts"]          # {"activations": ..., "optimizer": ..., ...}

The model is built by the run's own build() (trainer/distributed.py), wrapped as the run wraps
it, and trained for two steps under torch._subclasses.fake_tensor.FakeTensorMode: every tensor
has its shape, dtype and storage size but no data, so 1558m on 8 ranks traces on a laptop CPU.
PyTorch's own trackers count the live bytes after every operation: MemTracker, and for FSDP2
FSDPMemTracker (sharded and unsharded weights and gradients) in a fake process group of the
target world size. Each step has the run's shape: two micro-steps when the run accumulates (the
gradients of the first are held while the second runs), the global-norm clip, fused AdamW. The
peak is the second step's alone, the steady state, AdamW's moments resident from its start: the
first step's is not the run's, and under FSDP it also counts DTensor's sharding propagation,
which meets each new op and shape once in a process by running it on fake tensors of the
unsharded size (four copies of the weights at fused AdamW's first call), so a first trace would
differ from the next trace of the same shape.

What the trace does not run, and how it stands in for it:
- DDP: its C++ reducer cannot hold fake tensors, so the model is traced unwrapped with what DDP
  adds: with gradient_as_bucket_view the gradients are views of buckets allocated when DDP
  wraps the model and zeroed in place between steps, so they are resident all the time (one
  fp32 copy of the weights, allocated before the first step here) and accumulated in place.
- CUDA: the trace runs CPU kernels. Where they save other tensors than CUDA's the figure follows
  the CPU's; the model's is_causal SDPA saves flash-style on both (no T x T). FSDP's bf16
  MixedPrecisionPolicy is the run's on CUDA and is traced for a CUDA target. The CUDA context,
  cuBLAS workspaces, NCCL buffers and the allocator's fragmentation are outside any trace: the
  plans keep a reserve of the GPU for them (trainer/memory.py).
- torch.compile: traced eager (inductor's fused kernels keep fewer temporaries: a compiled run
  peaks lower).
"""

import time
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.device_mesh import init_device_mesh
from torch.testing._internal.distributed.fake_pg import FakeStore

from trainer.distributed import Runtime, build

AMP_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
# the trackers' categories -> the plan's parts (FSDPMemTracker splits weights and gradients into
# their sharded and unsharded copies, MemTracker does not)
PARTS = {"Parameter": "weights", "Sharded Param": "weights", "Unsharded Param": "gathered weights",
         "Buffer": "weights", "Gradient": "gradients", "Sharded Grad": "gradients",
         "Unsharded Grad": "unsharded gradients", "Optstate": "optimizer",
         "OptState": "optimizer", "All Gather": "gathered weights",
         "Reduce Scatter": "unsharded gradients", "Other": "inputs",
         "Activation": "activations", "Temp": "temporaries", "Inputs": "inputs"}


def micro_steps(cfg, world_size):
    """Micro-steps a traced step runs: 2 when the run accumulates (a step holds the gradients of
    earlier micro-steps while the next runs, and every later one looks the same), else 1."""
    per_rank = cfg.total_batch_size // (cfg.seq_len * world_size)
    return min(2, per_rank // cfg.micro_batch_size)


def trace_training_step(cfg, world_size, device_type="cuda"):
    """The peak bytes of one rank in a steady training step of cfg (an int micro_batch_size; dtype
    float32, bfloat16 or float16) on world_size ranks of device_type: {"peak_bytes", "parts":
    {part: bytes at the peak}, "micro_steps", "seconds"}. Needs no process group of its own
    (one is made, fake, and destroyed); nothing is allocated."""
    t0 = time.perf_counter()
    amp_dtype = AMP_DTYPES[cfg.dtype]
    ddp = world_size > 1 and not cfg.fsdp
    steps = micro_steps(cfg, world_size)
    cfg = replace(cfg, compile=False)  # traced eager: see the module docstring
    with fake_process_group(world_size, cfg.fsdp) as mesh, FakeTensorMode():
        # built as the run builds it, on the CPU: fake CUDA modules cannot be made on a CPU build
        runtime = Runtime(0, 0, world_size if cfg.fsdp else 1, torch.device("cpu"))
        model, parallel, optimizer = build(cfg, runtime, amp_dtype, draw_weights=False,
                                           for_device=device_type, mesh=mesh)
        if ddp:  # DDP's buckets: the gradients, allocated when DDP wraps the model
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        x = torch.randint(0, cfg.vocab_size, (cfg.micro_batch_size, cfg.seq_len))
        if cfg.fsdp:
            # the tracker instruments one torch optimizer: the recipe's first (AdamW, or Muon);
            # another's state still counts in the total, under another part
            tracker = FSDPPeakTracker(model, optimizer[0])
            tracker.track_inputs((x,))
        else:
            tracker = PeakTracker()
            tracker.track_external(model, *optimizer, x)
        with tracker:
            for step in range(2):  # AdamW's state is made by the first step: the second is the run's
                if step == 1:
                    tracker.forget_peak()  # from the live bytes now: the steady step's peak alone
                optimizer.zero_grad(set_to_none=not ddp)  # DDP zeroes its buckets in place
                for micro_step in range(steps):
                    tracker.reset_mod_stats()  # the trackers refuse a module's second forward
                    with parallel.gradient_sync(micro_step == steps - 1):
                        with torch.autocast("cpu", amp_dtype, enabled=amp_dtype is not None):
                            loss = parallel.train_module(x, x)[1]  # the logits not kept
                        (loss / steps).backward()
                parallel.clip_grad_norm_(1.0)
                optimizer.step()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    parts = {}
    for category, value in peak.items():
        if category in PARTS and value:
            parts[PARTS[category]] = parts.get(PARTS[category], 0) + value
    return {"peak_bytes": peak["Total"], "parts": parts, "micro_steps": steps,
            "seconds": time.perf_counter() - t0}


class _GlobalPeakOnly:
    """The trackers also keep each module's own peak by walking over every module after every
    operation (the depth squared: 1558m would take many minutes); a plan needs the rank's peak
    only, which this keeps exactly as MemTracker._update_peak_stats does."""

    def _update_peak_stats(self, peak_state):
        for device, snapshot in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snapshot["Total"]:
                self._peak_mem[device] = snapshot["Total"]
                self._peak_mem_snap[device] = dict(snapshot)

    def forget_peak(self):
        """The peak so far set to the live bytes now."""
        self._peak_mem = {device: snapshot["Total"] for device, snapshot in self._curr_mem_snap.items()}
        self._peak_mem_snap = {device: dict(snapshot) for device, snapshot in self._curr_mem_snap.items()}


class PeakTracker(_GlobalPeakOnly, MemTracker):
    pass


class FSDPPeakTracker(_GlobalPeakOnly, FSDPMemTracker):
    pass


@contextmanager
def fake_process_group(world_size, fsdp):
    """Under FSDP (one rank included: fully_shard needs a group), a process group of world_size
    ranks whose collectives do nothing (this process is rank 0) and FSDP's mesh over it, made of
    real tensors (a fake mesh cannot list its ranks); otherwise none."""
    if not fsdp:
        yield None
        return
    if dist.is_initialized():
        raise RuntimeError("the memory trace of FSDP makes its own (fake) process group: trace "
                           "before joining the run's")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()
