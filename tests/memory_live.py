"""The live bytes of real training steps on CPU, the figure a memory trace must match: the peak
from before the model is built to the end of two steps of the run's own build() (see live_peak
for how it is counted).

    torchrun --nproc_per_node=2 tests/memory_live.py OUT.json '{"ddp": [...flags...], ...}'

Every rank measures each named case (flags of train_gpt2.py, parsed as the run parses them); rank
0 writes {name: peak bytes} as JSON. One launch for all cases saves the suite seconds.
The step is train_gpt2.optimization_step's shape with the logits dropped at once, as issue 22
item 2 makes the run do (the run's own step can replace training_step once that lands).
"""

import json
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch._C._profiler import _EventType  # noqa: E402
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from trainer.config import parse_config  # noqa: E402
from trainer.distributed import Runtime, autocast_dtype, build  # noqa: E402


class SameBatch:
    """A loader that gives every micro-step the same random batch (shape is all that matters)."""

    def __init__(self, cfg):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, cfg.vocab_size, (cfg.micro_batch_size, cfg.seq_len), generator=generator)

    def next_batch(self):
        return self.x, self.x


def training_step(parallel, optimizer, loader, grad_accum, amp_dtype, tracker=None):
    """train_gpt2.optimization_step as it allocates once the logits are no longer kept (issue
    22, item 2: `loss = ...[1]`): zero_grad, grad_accum forwards and backwards, clip, AdamW."""
    parallel.zero_grad(optimizer)
    for micro_step in range(grad_accum):
        x, y = loader.next_batch()
        if tracker:
            tracker.reset_mod_stats()  # the tracker refuses a module's second forward otherwise
        with parallel.gradient_sync(micro_step == grad_accum - 1):
            with torch.autocast("cpu", amp_dtype, enabled=amp_dtype is not None):
                loss = parallel.train_module(x, y)[1]
            (loss / grad_accum).backward()
    parallel.clip_grad_norm_(1.0)
    optimizer.step()


def live_peak(cfg, runtime):
    """The most bytes held at once while cfg's model was built and trained two steps on runtime.
    One process and DDP: the CPU allocator's own count (the profiler counts the blocks allocated
    while it runs, so everything is freed before it stops). FSDP: FSDPMemTracker on the real
    tensors, the same tracker as the trace's (a real gloo group, real collectives): the
    allocator's count of an FSDP step on CPU varies from run to run with gloo's asynchronous
    work and with when Python collects FSDP's reference cycles (seen: +0 to +27%)."""
    amp_dtype, _ = autocast_dtype(cfg.dtype, runtime.device)
    grad_accum = cfg.total_batch_size // (cfg.micro_batch_size * cfg.seq_len * runtime.world_size)
    loader = SameBatch(cfg)
    if cfg.fsdp:
        model, parallel, optimizer = build(cfg, runtime, amp_dtype)
        with FSDPMemTracker(model, optimizer[0]) as tracker:
            for _ in range(2):
                training_step(parallel, optimizer, loader, grad_accum, amp_dtype, tracker)
        return tracker.get_tracker_snapshot("peak")[runtime.device]["Total"]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model, parallel, optimizer = build(cfg, runtime, amp_dtype)
        for _ in range(2):
            training_step(parallel, optimizer, loader, grad_accum, amp_dtype)
        del model, parallel, optimizer
    events, allocations = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while events:
        event = events.pop()
        events.extend(event.children)
        if event.tag == _EventType.Allocation:
            allocations.append((event.start_time_ns, event.extra_fields))
    allocations.sort(key=lambda a: a[0])
    first = allocations[0][1]
    start = first.total_allocated - first.alloc_size
    return max(fields.total_allocated for _, fields in allocations) - start


def main(out_path, cases):
    runtime = Runtime.from_env("cpu")
    if runtime.distributed:
        dist.init_process_group("gloo", timeout=timedelta(minutes=5))
    configs = {name: replace(parse_config(flags), compile=False) for name, flags in cases.items()}
    # the least of three rounds: the first time a process runs a kind of step it also allocates
    # buffers kept for good (gloo's, the kernels' scratch), and gloo's asynchronous all-reduce
    # of DDP's buckets may copy them while the peak lasts, by chance of timing (seen: +1 copy)
    rounds = [{name: live_peak(cfg, runtime) for name, cfg in configs.items()} for _ in range(3)]
    peaks = {name: min(peaks[name] for peaks in rounds) for name in configs}
    if runtime.master:
        Path(out_path).write_text(json.dumps(peaks))
    if runtime.distributed:
        dist.barrier()  # gloo can abort at exit if one rank leaves while another is busy
        dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same kernels, and scratch buffers, whatever the machine
    main(sys.argv[1], json.loads(sys.argv[2]))
