"""Know before you launch: parameter count and the memory each rank will need.

    python train_gpt2.py --preset gpt2-1558m --fsdp --dry-run --world-size 8 --gpu-memory 80GB
    python -m trainer.memory --fit-table                          # the README's "what fits" table

The model is built on the meta device (shapes, no storage), so a 1.5B plan takes a second and no
memory. State per rank is exact (fp32 weights, gradients and AdamW's two moments: 16 bytes a
parameter, divided by the world size under FSDP); activations are an estimate (Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models": 34 bytes per token and
channel per layer in 16-bit with flash attention, plus the logits and their fp32 loss copies).
A checkpoint's size on disk is here too: the preflight checks the output folder has room for two.
"""

import argparse
import functools
import os
from dataclasses import replace

import torch

from models import build_model
from models.device import pick_device_type
from trainer import batch_size
from trainer.recipes import speedrun_groups

GiB = 1024**3
MiB = 1024**2
# A checkpoint holds fp32 weights and AdamW's two fp32 moments, no gradients: 12 bytes a
# parameter. Saved checkpoints of 28.5K, 0.81M and 3.3M parameters measured 13.4, 12.08 and
# 12.01 bytes a parameter: the rest (pickle, per-rank RNG states, config) is under 100 KB.
CHECKPOINT_BYTES_PER_PARAMETER = 12
CHECKPOINT_OVERHEAD_BYTES = MiB
# of the memory kept for what no plan holds: the CUDA context, cuBLAS workspaces, NCCL buffers,
# the allocator's fragmentation (on CPU: the rest of the process, the page cache)
RESERVE = 0.1
# The preflight traces a run whose formula's plan takes over a quarter of the usable memory; under
# that it fits by far more than trace and formula differ (the trace came out 1.2x the formula for
# a DDP 124m step, B=64 in bf16), and the start of a small run skips the trace's seconds
TRACE_ABOVE = 0.25


def count_parameters(model_config):
    """Parameters of a GPT with this config (the tied embedding counted once), on meta."""
    return _count_parameters(tuple(sorted(model_config.items())))


@functools.lru_cache
def _count_parameters(model_config_items):
    with torch.device("meta"):
        return build_model(dict(model_config_items)).num_params()


def optimizer_floats(model_config):
    """fp32 numbers of optimizer state: AdamW's two moments a parameter; under the speedrun,
    Muon's one momentum buffer for each of the blocks' matrices."""
    return _optimizer_floats(tuple(sorted(model_config.items())))


@functools.lru_cache
def _optimizer_floats(model_config_items):
    with torch.device("meta"):
        model = build_model(dict(model_config_items))
    if dict(model_config_items).get("arch") != "modern":
        return 2 * model.num_params()
    return sum(p.numel() * (1 if group == "matrices" else 2)
               for group, params in speedrun_groups(model).items() for p in params)


def memory_plan(cfg, world_size, parameters=None):
    """Bytes per rank for cfg at world_size: {"weights", "gradients", "optimizer", "state",
    "activations", "total"} plus the inputs of the estimate."""
    parameters = parameters or count_parameters(cfg.model_config())
    shards = world_size if cfg.fsdp else 1
    weights = 4 * parameters / shards  # fp32 master weights
    gradients = 4 * parameters / shards
    tokens_per_rank = cfg.total_batch_size // (cfg.seq_len * world_size)
    if cfg.fsdp and world_size > 1 and tokens_per_rank > cfg.micro_batch_size:
        gradients += 4 * parameters  # accumulated unsharded until the last micro-step's reduction
    optimizer = 4 * optimizer_floats(cfg.model_config()) / shards
    if cfg.fsdp:
        # two blocks' weights gathered at a time (the one running, the next one prefetched)
        block = 12 * cfg.n_embd**2 + 13 * cfg.n_embd
        weights += 2 * block * 2 * (world_size > 1)
    half = cfg.dtype != "float32"  # 16-bit activations under autocast
    value_bytes = 2 if half else 4
    B, T, C, L, V = cfg.micro_batch_size, cfg.seq_len, cfg.n_embd, cfg.n_layer, cfg.vocab_size
    per_layer = 17 * value_bytes * B * T * C  # 34 bytes/token/channel in 16-bit
    if cfg.activation_checkpointing:
        layers = L * value_bytes * B * T * C + per_layer  # block inputs kept, one block recomputed
    else:
        layers = L * per_layer
    logits = B * T * V * (value_bytes + 8)  # logits, their fp32 copy in the loss, its gradient
    activations = layers + logits
    state = weights + gradients + optimizer
    return {"parameters": parameters, "weights": weights, "gradients": gradients,
            "optimizer": optimizer, "state": state, "activations": activations,
            "total": state + activations}


def short_count(n):
    """1.56B, 124.4M, 3.32M, 28.5K: a parameter count at a glance."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{suffix}" if n < 100 * div else f"{n / div:.1f}{suffix}"
    return str(n)


def describe_plan(plan, cfg, world_size):
    """Lines for the dry run and the start-up banner."""
    mode = "FSDP" if cfg.fsdp else ("DDP" if world_size > 1 else "1 process")
    ac = ", activation checkpointing" if cfg.activation_checkpointing else ""
    total = plan["weights"] + plan["gradients"] + plan["optimizer"] + plan["activations"]
    optimizer = "Muon + AdamW" if cfg.recipe == "speedrun" else "AdamW"  # Muon: 1 buffer a matrix
    return [f"{plan['parameters']:,} parameters ({short_count(plan['parameters'])})",
            f"per rank ({world_size} rank(s), {mode}{ac}): weights {plan['weights'] / GiB:.2f} GiB, "
            f"gradients {plan['gradients'] / GiB:.2f} GiB, {optimizer} state {plan['optimizer'] / GiB:.2f} GiB, "
            f"activations ~{plan['activations'] / GiB:.2f} GiB (estimate, micro-batch "
            f"{cfg.micro_batch_size} x {cfg.seq_len}); total ~{total / GiB:.1f} GiB"]


def largest_fitting_micro_batch(cfg, world_size, memory_bytes, reserve=0.1):
    """The largest power-of-two micro-batch whose estimate fits in (1 - reserve) of the GPU's
    memory and divides the per-rank share of the batch, or 0 when none does."""
    per_rank = cfg.total_batch_size // (cfg.seq_len * world_size)
    parameters = count_parameters(cfg.model_config())
    best, micro = 0, 1
    while micro <= min(per_rank, 64):
        if per_rank % micro == 0:
            plan = memory_plan(replace(cfg, micro_batch_size=micro), world_size, parameters)
            if plan["total"] <= (1 - reserve) * memory_bytes:
                best = micro
        micro *= 2
    return best


def dry_run_plan(cfg, world_size, gpu_memory=None, world_source="--world-size"):
    """(cfg, lines of `train_gpt2.py --dry-run`, the plan as a dict for --json, whether it fits or
    None where the memory is not known): what it assumed, the micro-batch `auto` would take, the
    formula's plan per rank and the traced peak (trainer/memory_trace.py), which wins. The memory
    is --gpu-memory on a GPU, the RAM available now on CPU."""
    on_cpu = cfg.device in ("cpu", "mps")
    fp32 = planned_dtype(cfg, on_cpu) == "float32"
    memory = host_memory_available() if on_cpu else gpu_memory
    assumed = (f"dry run for {world_size} rank(s) ({world_source})"
               + (f", {memory / GiB:.1f} GiB of RAM available (--device {cfg.device})" if on_cpu else
                  f", GPUs of {gpu_memory / 1e9:g} GB = {gpu_memory / GiB:.1f} GiB (--gpu-memory)"
                  if gpu_memory else ", GPU memory not given (--gpu-memory 80GB checks the fit)")
               + (f"; activations in fp32 (--dtype {cfg.dtype}, --device {cfg.device})" if fp32 else
                  f"; activations in 16 bits (--dtype {cfg.dtype}: bf16 autocast on a recent GPU)"))
    lines = [assumed]
    planned = replace(cfg, dtype="float32" if fp32 else "bfloat16")
    usable = memory and (1 - RESERVE) * memory
    per_rank = cfg.total_batch_size // (cfg.seq_len * world_size)
    if cfg.micro_batch_size != "auto":
        why = "set by --micro-batch-size"
    elif usable:
        largest = batch_size.CPU_MAX_MICRO_BATCH
        micro = largest_fitting_micro_batch(planned, world_size, memory) or 1
        micro = largest_traced_micro_batch(planned, world_size, usable, micro, largest,
                                           "cpu" if on_cpu else "cuda")
        why = (f"what auto picks here: the largest power of two (at most {largest}) dividing the "
               f"{per_rank} sequences per rank whose traced peak fits in {100 - 100 * RESERVE:g}% of "
               f"the memory" + ("" if on_cpu else " (on CUDA the run tries real steps, which may pick "
                                                  "another)"))
        if not micro:
            micro, why = 1, "auto: even a micro-batch of 1 does not fit (planned at 1)"
        cfg = replace(cfg, micro_batch_size=micro)
    else:
        why = (f"auto planned at its upper bound (at most 64 dividing the {per_rank} sequences per "
               f"rank); on CUDA the run takes the largest that fits: --gpu-memory shows which")
        cfg = replace(cfg, micro_batch_size=batch_size.candidates(
            cfg.total_batch_size, cfg.seq_len, world_size, batch_size.CPU_MAX_MICRO_BATCH)[0])
    lines.append(f"micro-batch {cfg.micro_batch_size}: {why}")
    planned = replace(planned, micro_batch_size=cfg.micro_batch_size)
    plan = memory_plan(planned, world_size)
    lines += describe_plan(plan, planned, world_size)
    trace = traced(planned, world_size, "cpu" if on_cpu else "cuda")
    lines.append(describe_trace(trace, plan))
    fits = None
    if usable:
        fits = trace["peak_bytes"] <= usable
        remedies = ([] if cfg.fsdp else ["--fsdp"]) + \
                   ([] if cfg.activation_checkpointing else ["--activation-checkpointing"]) + \
                   (["a smaller --micro-batch-size"] if cfg.micro_batch_size > 1 else []) + \
                   (["a machine with more RAM"] if on_cpu else ["more GPUs"])
        verdict = "fits" if fits else f"does NOT fit: try {', '.join(remedies)}"
        where = "of RAM" if on_cpu else "usable a GPU"
        lines.append(f"traced {trace['peak_bytes'] / GiB:.1f} GiB of the {usable / GiB:.1f} GiB {where} "
                     f"({100 - 100 * RESERVE:g}% of {memory / GiB:.1f} GiB): {verdict}")
    summary = {"world_size": world_size, "device": "cpu" if on_cpu else "cuda",
               "dtype": planned.dtype, "micro_batch_size": cfg.micro_batch_size,
               "fsdp": cfg.fsdp, "activation_checkpointing": cfg.activation_checkpointing,
               "peak_bytes": trace["peak_bytes"], "formula_bytes": int(plan["total"]),
               "parts": trace["parts"], "micro_steps": trace["micro_steps"],
               "memory_bytes": memory and int(memory), "fits": fits}
    return cfg, lines, summary, fits


def planned_dtype(cfg, on_cpu):
    """The dtype a plan traces: --dtype, where auto is fp32 on CPU/MPS and bf16 autocast on GPUs
    (float16 on older ones: the same bytes)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "float32" if on_cpu else "bfloat16"


def preflight_fit(cfg, world_size):
    """(level, line) of the preflight's memory check, or None where the run's shape or memory is
    not known here: micro-batch auto (the run's probe picks one that fits), a batch the micro-batch
    does not divide (another check says so), MPS, or no CUDA. The memory is the RAM available on
    CPU, the GPU's on CUDA; a plan near it is traced (see TRACE_ABOVE), and the trace decides."""
    per_rank = cfg.total_batch_size // (cfg.seq_len * world_size)
    if cfg.micro_batch_size == "auto" or per_rank % cfg.micro_batch_size or not per_rank:
        return None
    try:
        device_type = pick_device_type(cfg.device)
    except ValueError:
        return None
    if device_type == "cpu":
        memory, what = host_memory_available(), "RAM available"
    elif device_type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        memory, what = torch.cuda.get_device_properties(local_rank).total_memory, "a GPU's memory"
    else:
        return None
    planned = replace(cfg, dtype=planned_dtype(cfg, device_type == "cpu"))
    usable = (1 - RESERVE) * memory
    formula = memory_plan(planned, world_size)["total"]
    of = (f"{usable / GiB:.2f} GiB usable ({100 - 100 * RESERVE:g}% of {memory / GiB:.1f} GiB of "
          f"{what}; {world_size} rank(s), micro-batch {cfg.micro_batch_size}, {planned.dtype})")
    if formula <= TRACE_ABOVE * usable:
        return "ok", (f"memory: the formula's {formula / GiB:.2f} GiB a rank is under "
                      f"{100 * TRACE_ABOVE:g}% of the {of}: fits (not traced)")
    peak = traced(planned, world_size, device_type)["peak_bytes"]
    said = f"traced peak {peak / GiB:.2f} GiB a rank (the formula's: {formula / GiB:.2f} GiB)"
    if peak <= usable:
        return "ok", f"memory: {said} of the {of}: fits"
    return "error", (f"memory: {said} is over the {of}; use --micro-batch-size auto or a smaller "
                     f"one, --activation-checkpointing, or --fsdp")


def traced(cfg, world_size, device_type):
    """trace_training_step, each shape traced once in a process (the fit table asks again)."""
    # imported here: PyTorch's trackers pull in inductor, 0.7 s of every start that plans nothing
    from trainer.memory_trace import trace_training_step

    key = (tuple(sorted(cfg.to_dict().items())), world_size, device_type)
    if key not in _TRACES:
        _TRACES[key] = trace_training_step(cfg, world_size, device_type)
    return _TRACES[key]


_TRACES = {}


def largest_traced_micro_batch(cfg, world_size, usable, guess, largest, device_type):
    """The largest power-of-two micro-batch (at most `largest`, dividing the per-rank share)
    whose traced peak fits in `usable` bytes, or 0; searched from the formula's guess, which is
    usually within a factor of two, so a few traces decide it."""
    options = batch_size.candidates(cfg.total_batch_size, cfg.seq_len, world_size, largest)[::-1]

    def fits(b):
        return traced(replace(cfg, micro_batch_size=b), world_size, device_type)["peak_bytes"] <= usable

    i = max((k for k, b in enumerate(options) if b <= guess), default=0)
    if not fits(options[i]):
        while i > 0 and not fits(options[i - 1]):
            i -= 1
        return options[i - 1] if i > 0 else 0
    while i + 1 < len(options) and fits(options[i + 1]):
        i += 1
    return options[i]


def describe_trace(trace, plan):
    """One line: the traced peak, its parts, and how far the formula is from it."""
    parts = ", ".join(f"{name} {value / GiB:.2f}" for name, value in
                      sorted(trace["parts"].items(), key=lambda kv: -kv[1]))
    gap = plan["total"] - trace["peak_bytes"]
    return (f"traced peak per rank {trace['peak_bytes'] / GiB:.2f} GiB ({parts} GiB; two steps of "
            f"{trace['micro_steps']} micro-step(s), eager); the formula's {plan['total'] / GiB:.2f} GiB "
            f"is {abs(gap) / GiB:.2f} GiB {'above' if gap >= 0 else 'below'} it: the trace is the plan")


def host_memory_available():
    """Bytes of RAM available now (Linux's MemAvailable; else all of it)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_memory_share():
    """(bytes of RAM this rank's plan may use, the same in words): 1 - RESERVE of the RAM
    available now, shared by the ranks on this host (torchrun's LOCAL_WORLD_SIZE)."""
    ranks, available = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), host_memory_available()
    usable = (1 - RESERVE) * available / ranks
    shared = f", shared by the {ranks} ranks on this host" if ranks > 1 else ""
    return usable, (f"{usable / GiB:.2f} GiB of RAM ({100 - 100 * RESERVE:g}% of the "
                    f"{available / GiB:.1f} GiB available{shared})")


def checkpoint_bytes(parameters):
    """Bytes of one training checkpoint of a model with this many parameters."""
    return CHECKPOINT_BYTES_PER_PARAMETER * parameters + CHECKPOINT_OVERHEAD_BYTES


def main(argv=None):
    parser = argparse.ArgumentParser(description="Memory plans for the GPT-2 presets")
    parser.add_argument("--fit-table", action="store_true",
                        help="print which preset fits on 1/2/8 GPUs of 24/40/80 GB (markdown; traced: "
                             "trainer/fit_table.py)")
    parser.add_argument("--presets", default="gpt2-124m,gpt2-350m,gpt2-774m,gpt2-1558m",
                        help="comma-separated presets of the fit table")
    parser.add_argument("--processes", type=int, default=None,
                        help="traces run at once (default: one per CPU core)")
    args = parser.parse_args(argv)
    if args.fit_table:
        from trainer.fit_table import fit_table  # the trackers' imports: only for the table

        print(fit_table(tuple(args.presets.split(",")), processes=args.processes))
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

