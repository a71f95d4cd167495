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
from dataclasses import replace

import torch

from models import build_model
from trainer import batch_size
from trainer.config import parse_config
from trainer.recipes import speedrun_groups

GiB = 1024**3
MiB = 1024**2
# A checkpoint holds fp32 weights and AdamW's two fp32 moments, no gradients: 12 bytes a
# parameter. Saved checkpoints of 28.5K, 0.81M and 3.3M parameters measured 13.4, 12.08 and
# 12.01 bytes a parameter: the rest (pickle, per-rank RNG states, config) is under 100 KB.
CHECKPOINT_BYTES_PER_PARAMETER = 12
CHECKPOINT_OVERHEAD_BYTES = MiB


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
    """Lines of `train_gpt2.py --dry-run`: what it assumed, the micro-batch `auto` would take
    (with gpu_memory: the fit table's choice for this shape), and the plan per rank."""
    fp32 = cfg.dtype == "float32" or (cfg.dtype == "auto" and cfg.device in ("cpu", "mps"))
    assumed = (f"dry run for {world_size} rank(s) ({world_source})"
               + (f", GPUs of {gpu_memory / 1e9:g} GB = {gpu_memory / GiB:.1f} GiB (--gpu-memory)"
                  if gpu_memory else ", GPU memory not given (--gpu-memory 80GB checks the fit)")
               + (f"; activations in fp32 (--dtype {cfg.dtype}, --device {cfg.device})" if fp32 else
                  f"; activations in 16 bits (--dtype {cfg.dtype}: bf16 autocast on a recent GPU)"))
    lines = [assumed]
    planned = replace(cfg, dtype="float32" if fp32 else "bfloat16")
    per_rank = cfg.total_batch_size // (cfg.seq_len * world_size)
    if cfg.micro_batch_size != "auto":
        why = "set by --micro-batch-size"
    elif gpu_memory:
        micro = largest_fitting_micro_batch(planned, world_size, gpu_memory)
        why = (f"what auto picks here: the largest power of two (at most 64) dividing the {per_rank} "
               f"sequences per rank whose estimate fits in 90% of the GPU, as in the README's fit "
               f"table (on CUDA the run tries real steps, which may pick another)")
        if not micro:
            micro, why = 1, "auto: even a micro-batch of 1 does not fit (planned at 1)"
        cfg = replace(cfg, micro_batch_size=micro)
    else:
        why = (f"auto planned at its upper bound on CPU (at most 64 dividing the {per_rank} sequences "
               f"per rank); on CUDA the run takes the largest that fits: --gpu-memory shows which")
        cfg = replace(cfg, micro_batch_size=batch_size.candidates(
            cfg.total_batch_size, cfg.seq_len, world_size, batch_size.CPU_MAX_MICRO_BATCH)[0])
    lines.append(f"micro-batch {cfg.micro_batch_size}: {why}")
    planned = replace(planned, micro_batch_size=cfg.micro_batch_size)
    plan = memory_plan(planned, world_size)
    lines += describe_plan(plan, planned, world_size)
    if gpu_memory:
        usable = 0.9 * gpu_memory  # the fit table's reserve: CUDA context, allocator fragmentation
        remedies = ([] if cfg.fsdp else ["--fsdp"]) + \
                   ([] if cfg.activation_checkpointing else ["--activation-checkpointing"]) + \
                   (["a smaller --micro-batch-size"] if cfg.micro_batch_size > 1 else []) + ["more GPUs"]
        verdict = "fits" if plan["total"] <= usable else f"does NOT fit: try {', '.join(remedies)}"
        lines.append(f"~{plan['total'] / GiB:.1f} GiB of the {usable / GiB:.1f} GiB usable a GPU "
                     f"(90% of {gpu_memory / GiB:.1f} GiB): {verdict}")
    return cfg, lines


def fit_table(presets=("gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m"), gpus=(1, 2, 8),
              memories=(24, 40, 80)):
    """Markdown: for each preset, GPU count and memory, the largest micro-batch that fits with
    DDP / FSDP / FSDP + activation checkpointing (bf16), or "-"."""
    header = "| preset | GPUs | " + " | ".join(f"{m} GB: DDP / FSDP / FSDP+AC" for m in memories) + " |"
    lines = [header, "|" + "---|" * (2 + len(memories))]
    for name in presets:
        base = replace(parse_config(["--preset", name]), dtype="bfloat16")
        for n in gpus:
            cells = []
            for memory in memories:
                options = [replace(base, fsdp=False), replace(base, fsdp=True),
                           replace(base, fsdp=True, activation_checkpointing=True)]
                fits = [largest_fitting_micro_batch(c, n, memory * 1e9) for c in options]
                cells.append(" / ".join(f"B={b}" if b else "-" for b in fits))
            lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checkpoint_bytes(parameters):
    """Bytes of one training checkpoint of a model with this many parameters."""
    return CHECKPOINT_BYTES_PER_PARAMETER * parameters + CHECKPOINT_OVERHEAD_BYTES


def main(argv=None):
    parser = argparse.ArgumentParser(description="Memory plans for the GPT-2 presets")
    parser.add_argument("--fit-table", action="store_true",
                        help="print which preset fits on 1/2/8 GPUs of 24/40/80 GB (markdown)")
    args = parser.parse_args(argv)
    if args.fit_table:
        print(fit_table())
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

