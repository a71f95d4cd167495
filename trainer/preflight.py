"""Know before you launch: parameter count and the memory each rank will need.

    python train_gpt2.py --preset gpt2-1558m --fsdp --dry-run   # config + plan for this world size
    python -m trainer.preflight --fit-table                       # the README's "what fits" table

The model is built on the meta device (shapes, no storage), so a 1.5B plan takes a second and no
memory. State per rank is exact (fp32 weights, gradients and AdamW's two moments: 16 bytes a
parameter, divided by the world size under FSDP); activations are an estimate (Korthikanti et al.
2022, "Reducing Activation Recomputation in Large Transformer Models": 34 bytes per token and
channel per layer in 16-bit with flash attention, plus the logits and their fp32 loss copies).
"""

import argparse
import functools
from dataclasses import replace

import torch

from model import GPT, GPTConfig

GiB = 1024**3


def count_parameters(model_config):
    """Parameters of a GPT with this config (the tied embedding counted once), on meta."""
    return _count_parameters(tuple(sorted(model_config.items())))


@functools.lru_cache
def _count_parameters(model_config_items):
    with torch.device("meta"):
        return GPT(GPTConfig(**dict(model_config_items))).num_params()


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
    optimizer = 8 * parameters / shards  # AdamW's exp_avg and exp_avg_sq, fp32
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


def describe_plan(plan, cfg, world_size):
    """Lines for the dry run and the start-up banner."""
    mode = "FSDP" if cfg.fsdp else ("DDP" if world_size > 1 else "1 process")
    ac = ", activation checkpointing" if cfg.activation_checkpointing else ""
    total = plan["weights"] + plan["gradients"] + plan["optimizer"] + plan["activations"]
    return [f"{plan['parameters']:,} parameters ({plan['parameters'] / 1e9:.2f}B)",
            f"per rank ({world_size} rank(s), {mode}{ac}): weights {plan['weights'] / GiB:.2f} GiB, "
            f"gradients {plan['gradients'] / GiB:.2f} GiB, AdamW state {plan['optimizer'] / GiB:.2f} GiB, "
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


def fit_table(presets=("gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m"), gpus=(1, 2, 8),
              memories=(24, 40, 80)):
    """Markdown: for each preset, GPU count and memory, the largest micro-batch that fits with
    DDP / FSDP / FSDP + activation checkpointing (bf16), or "-"."""
    from trainer.config import parse_config

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

