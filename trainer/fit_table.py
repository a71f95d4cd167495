"""The README's "what fits" table, every cell traced: `python -m trainer.memory --fit-table`.

A cell is the largest power-of-two micro-batch B (at most 64, dividing a rank's share of the
batch) whose traced peak (trainer/memory_trace.py, bf16 on CUDA) fits in 90% of the GPU
(trainer/memory.py's RESERVE), for a preset, a GPU count, a GPU memory and DDP / FSDP / FSDP with
activation checkpointing. A trace costs its operations, not its bytes (about 10 s of a CPU core
for gpt2-124m, more with depth), so the table traces as few shapes as the claims need:

- A rank's live bytes at any moment of a step are affine in B (activations scale with it;
  weights, gradients and optimizer state do not), so the step's peak, their maximum, is convex in
  B: the line through the traced peaks at B=2 and B=4 is a lower bound of the peak at every larger
  B of the same micro-steps (two: every B below a rank's share). A B the line puts over the memory
  does not fit; the largest it puts within is traced, and stays only if its trace fits (else the
  next smaller is traced). The one B with a single micro-step (64 on 8 GPUs), off the line, is
  traced whenever the B below it fits. B=1 is off the line too, traced where 2 does not fit:
  tensors with a batch of one take other paths (a tiny FSDP model peaked higher at B=1 than at 2,
  in the optimizer step).
- A shape is traced once for all the cells that have it: a DDP rank's trace depends on the world
  size only through having DDP at all and the micro-steps, so 2 and 8 GPUs share theirs.
- The traces of a round (the lines', then each cell's next question) run in one process pool.
"""

import multiprocessing
import os
import resource
import sys
import time
from dataclasses import replace

from trainer import batch_size
from trainer.config import parse_config
from trainer.memory import RESERVE
from trainer.memory_trace import micro_steps, trace_training_step

PRESETS = ("gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m")
GPUS = (1, 2, 8)
MEMORIES_GB = (24, 40, 80)
PARALLELISMS = {"DDP": {"fsdp": False}, "FSDP": {"fsdp": True},
                "FSDP+AC": {"fsdp": True, "activation_checkpointing": True}}
LARGEST = 64  # as `--micro-batch-size auto` on CUDA
LINE = (2, 4)  # the micro-batches whose traces make the line (B=1 takes other paths: docstring)


def shape(cfg, world_size):
    """(cfg, world_size) of the trace of cfg on world_size ranks, everything the trace does not
    depend on made equal: FSDP shards over the world size; DDP only adds its buckets (the same on
    2 or 8 ranks); the batch only sets the micro-steps."""
    ranks = world_size if cfg.fsdp else min(world_size, 2)
    steps = micro_steps(cfg, world_size)
    return replace(cfg, total_batch_size=steps * cfg.micro_batch_size * cfg.seq_len * ranks), ranks


def _key(cfg, world_size):
    return tuple(sorted(cfg.to_dict().items())), world_size


def _traced_peak(cfg, world_size):
    return trace_training_step(cfg, world_size, "cuda")["peak_bytes"]


class Untraced(Exception):
    """A cell's search needs this shape's trace first."""

    def __init__(self, shape_):
        super().__init__()
        self.shape = shape_


def largest_fitting(cfg, world_size, usable, peaks):
    """The largest B whose traced peak fits in `usable` bytes (0: not even 1), by the module
    docstring's search over `peaks` ({shape key: traced peak}); raises Untraced for a shape it
    needs and lacks (ask again once it is traced)."""
    options = batch_size.candidates(cfg.total_batch_size, cfg.seq_len, world_size, LARGEST)[::-1]

    def at(b):
        return replace(cfg, micro_batch_size=b)

    def peak(b):
        key = _key(*shape(at(b), world_size))
        if key not in peaks:
            raise Untraced(shape(at(b), world_size))
        return peaks[key]

    def line(b):  # through B=2 and B=4; a lower bound at any larger B of two micro-steps
        return peak(2) + (peak(4) - peak(2)) * (b - 2) / 2

    def over_by_the_line(b):
        return b > 4 and micro_steps(at(b), world_size) == 2 and line(b) > usable

    i = len(options) - 1
    if set(LINE) <= set(options):  # the line's guess; else options are few: down from the largest
        i = max((k for k, b in enumerate(options) if line(b) <= usable), default=0)
    while i >= 0 and peak(options[i]) > usable:
        i -= 1
    while 0 <= i < len(options) - 1 and not over_by_the_line(options[i + 1]) \
            and peak(options[i + 1]) <= usable:
        i += 1
    return options[i] if i >= 0 else 0


def search(cells, trace_all):
    """({cell: B}, {shape key: peak}) for cells {cell: (cfg, world_size, usable bytes)}: rounds of
    trace_all(shapes) -> their peaks (a process pool's starmap), for what the searches still lack."""
    peaks, picks = {}, {}
    wanted = [shape(replace(cfg, micro_batch_size=b), n) for cfg, n, _ in cells.values()
              for b in LINE if b in batch_size.candidates(cfg.total_batch_size, cfg.seq_len, n, LARGEST)]
    while wanted:
        unique = {_key(*s): s for s in sorted(wanted, key=lambda s: -s[0].n_layer)  # longest first
                  if _key(*s) not in peaks}
        print(f"fit table: tracing {len(unique)} shape(s) ({len(peaks)} traced so far)",
              file=sys.stderr, flush=True)
        peaks.update(zip(unique, trace_all(list(unique.values()))))
        wanted = []
        for cell, (cfg, world_size, usable) in cells.items():
            if cell not in picks:
                try:
                    picks[cell] = largest_fitting(cfg, world_size, usable, peaks)
                except Untraced as e:
                    wanted.append(e.shape)
    return picks, peaks


def fit_table(presets=PRESETS, gpus=GPUS, memories=MEMORIES_GB, processes=None):
    """Markdown: the table and its caption (see the module docstring)."""
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = processes or os.cpu_count()
    cells = {}
    for name in presets:
        for p, flags in PARALLELISMS.items():
            cfg = replace(parse_config(["--preset", name]), dtype="bfloat16", **flags)
            for n in gpus:
                for m in memories:
                    cells[name, n, p, m] = (cfg, n, (1 - RESERVE) * m * 1e9)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        picks, peaks = search(cells, lambda shapes: pool.starmap(_traced_peak, shapes, chunksize=1))
    minutes = (time.perf_counter() - t0) / 60
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's processes, ended and reaped
    cpu_minutes = (cpu.ru_utime + cpu.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / 60
    header = "| preset | GPUs | " + " | ".join(f"{m} GB: {' / '.join(PARALLELISMS)}" for m in memories) + " |"
    lines = [header, "|" + "---|" * (2 + len(memories))]
    for name in presets:
        for n in gpus:
            row = [" / ".join(f"B={picks[name, n, p, m]}" if picks[name, n, p, m] else "-"
                              for p in PARALLELISMS) for m in memories]
            lines.append(f"| {name} | {n} | " + " | ".join(row) + " |")
    lines.append(f"\nAll {len(picks)} cells traced, none measured on a GPU: {len(peaks)} shapes "
                 f"traced in {minutes:.1f} min ({processes} process{'es' if processes > 1 else ''}, "
                 f"{cpu_minutes:.1f} min of CPU).")
    return "\n".join(lines)
