"""Training configuration: one dataclass, every field a command-line flag.

Resolution order: the dataclass defaults (= the GPT-2 124M reference recipe), then a named
--preset, then an optional --config FILE (json object of field -> value), then explicit flags.

    python train_gpt2.py --preset cpu-smoke --max-steps 50 --out-dir runs/smoke
    torchrun --nproc_per_node=8 train_gpt2.py --config my_run.json --lr 1e-3
"""

import argparse
import json
import sys
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path


@dataclass
class TrainConfig:
    # data and run folder
    data: str = "data/edu_fineweb10B"  # shard folder written by `python -m pipeline.fineweb`
    out_dir: str = "runs/gpt2-124m"  # checkpoints, log.jsonl, config.json, DONE
    resume: str = "auto"  # auto (newest checkpoint in out_dir, if any) | never | PATH
    shuffle: bool = False  # seeded shuffle of shard and sequence order per epoch
    seed: int = 1337
    # batch: total_batch_size tokens per step = micro_batch_size * seq_len * grad_accum * world_size
    total_batch_size: int = 524_288  # 2**19, ~0.5M tokens as GPT-3 125M
    # sequences per forward pass on each rank; auto: the largest power of two that divides the
    # per-rank share and fits (trainer/micro_batch.py)
    micro_batch_size: int | str = "auto"
    seq_len: int = 1024
    # optimisation (GPT-3 paper's 125M settings, as build-nanogpt)
    max_steps: int = 19_073  # 10B tokens / 524,288
    lr: float = 6e-4
    min_lr: float = 6e-5
    warmup_steps: int = 715  # 375M tokens / 524,288
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still logged)
    # model (model.GPTConfig)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    vocab_size: int = 50_304  # GPT-2's 50,257 padded to a multiple of 64
    dropout: float = 0.0
    bias: bool = True
    # hardware and parallelism
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | mps
    # auto: bfloat16 autocast where the GPU has native bf16, float16 autocast with loss scaling on
    # older GPUs (V100, T4), float32 on CPU | bfloat16 | float16 | float32
    dtype: str = "auto"
    compile: bool = False  # torch.compile the model for training
    fsdp: bool = False  # shard weights, gradients and AdamW state over the ranks (FSDP2)
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    dist_timeout_min: int = 30  # how long a collective waits for a slow rank (e.g. checkpointing)
    peak_flops: float = 0.0  # per device, for MFU; 0 = detect known GPUs
    # evaluation, samples, checkpoints
    eval_every: int = 250  # validation loss + samples every N steps (and at the end); 0 = never
    val_tokens: int = 10_485_760
    num_samples: int = 4
    sample_tokens: int = 32
    sample_prompt: str = "Hello, I'm a language model,"
    hellaswag_every: int = 250  # 0 = never
    hellaswag_limit: int = 0  # 0 = all 10,042 examples
    hellaswag_data: str = ""  # a local HellaSwag jsonl; default: hellaswag.py's cache/download
    checkpoint_every: int = 5000  # 0 = only at the end (and on a stop signal)
    keep_checkpoints: int = 3  # the newest K are kept; 0 = keep all
    # wandb (metrics.MetricsLogger)
    wandb: bool = False
    wandb_project: str = ""  # default: $WANDB_PROJECT, else "gpt2-fineweb"
    wandb_run_name: str = ""
    # which preset the values started from (informational)
    preset: str = "gpt2-124m"

    def model_config(self):
        """The GPTConfig fields of this config, as a dict."""
        return {k: getattr(self, k) for k in
                ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")}

    def to_dict(self):
        return asdict(self)


# name -> overrides of the defaults. "gpt2-124m" is the defaults themselves.
PRESETS = {
    "gpt2-124m": {},
    # The bigger GPT-2s with llm.c's recipes (karpathy/llm.c scripts/run_gpt2_{350M,774M,1558M}.sh).
    # Their token budgets exceed FineWeb-Edu sample-10BT: make data/edu_fineweb100B from
    # sample-100BT (README). llm.c trained 350M and 774M on FineWeb 100B, 1558M on FineWeb-Edu.
    # 350M: 60,000 steps x 524,288 tokens = 31.5B tokens, lr 3e-4 -> 0, warmup 700.
    "gpt2-350m": dict(
        data="data/edu_fineweb100B", out_dir="runs/gpt2-350m", n_layer=24, n_head=16, n_embd=1024,
        max_steps=60_000, lr=3e-4, min_lr=0.0, warmup_steps=700),
    # 774M: 286,102 steps x 524,288 tokens = 150B tokens (1.5 epochs of sample-100BT), lr 2.5e-4 -> 0
    "gpt2-774m": dict(
        data="data/edu_fineweb100B", out_dir="runs/gpt2-774m", n_layer=36, n_head=20, n_embd=1280,
        max_steps=286_102, lr=2.5e-4, min_lr=0.0, warmup_steps=700),
    # 1558M: 32,000 steps x 1,048,576 tokens = 33.6B tokens, lr 6e-4 -> 6e-5 (10%), warmup 700
    # (~24 h on 8 x H100 in llm.c)
    "gpt2-1558m": dict(
        data="data/edu_fineweb100B", out_dir="runs/gpt2-1558m", n_layer=48, n_head=25, n_embd=1600,
        total_batch_size=1_048_576, max_steps=32_000, lr=6e-4, min_lr=6e-5,
        warmup_steps=700),
    # a tiny GPT-2-vocabulary model that trains on CPU in seconds (any GPT-2 shard folder)
    "cpu-smoke": dict(
        out_dir="runs/cpu-smoke", total_batch_size=1024, micro_batch_size=8, seq_len=64,
        max_steps=20, lr=1e-3, min_lr=1e-4, warmup_steps=5, n_layer=2, n_head=4, n_embd=64,
        block_size=64, device="cpu", eval_every=10, val_tokens=8192, num_samples=2,
        sample_tokens=16, hellaswag_every=0, checkpoint_every=10, keep_checkpoints=2),
    # Karpathy's "Let's build GPT" lecture model on Tiny Shakespeare (python -m
    # pipeline.shakespeare_char): 4 layers, 4 heads, 64 wide, context 32, batch 16, 5,000 steps,
    # 0.2M parameters. The lecture uses a constant 1e-3 with PyTorch's default init; with GPT-2's
    # smaller init (std 0.02) that stops at val 1.86, so: 100 warmup steps to 3e-3, cosine to 1e-4
    # (val ~1.79, below the lecture's 1.82, in ~2 min on one CPU core). Val = the whole val split.
    "shakespeare-char": dict(
        data="data/shakespeare_char", out_dir="runs/shakespeare-char", total_batch_size=512,
        micro_batch_size=16, seq_len=32, block_size=32, n_layer=4, n_head=4, n_embd=64,
        vocab_size=65, max_steps=5000, lr=3e-3, min_lr=1e-4, warmup_steps=100,
        weight_decay=0.01, beta2=0.99, shuffle=True, eval_every=500, val_tokens=111_540,
        num_samples=1, sample_tokens=200, sample_prompt="\n", hellaswag_every=0,
        checkpoint_every=1000, keep_checkpoints=1),
    # The lecture's (and nanoGPT's train_shakespeare_char.py) GPU model: 10.7M parameters,
    # val ~1.47-1.48; lr 1e-3 -> 1e-4 cosine after 100 warmup steps, beta2 0.99 as nanoGPT.
    "shakespeare-char-big": dict(
        data="data/shakespeare_char", out_dir="runs/shakespeare-char-big",
        total_batch_size=64 * 256, micro_batch_size=64, seq_len=256, block_size=256, n_layer=6,
        n_head=6, n_embd=384, dropout=0.2, vocab_size=65, max_steps=5000, lr=1e-3, min_lr=1e-4,
        warmup_steps=100, beta2=0.99, shuffle=True, eval_every=250, val_tokens=111_540,
        num_samples=1, sample_tokens=500, sample_prompt="\n", hellaswag_every=0,
        checkpoint_every=1000, keep_checkpoints=1),
    # TinyStories (python -m pipeline.fineweb --source hf:roneneldan/TinyStories --out
    # data/tinystories --prefix tinystories --shard-tokens 10000000), GPT-2 BPE: 6 layers, 6 heads,
    # 384 wide, ~30M parameters (most in the 50k embedding); 40k steps x 16k tokens = 655M tokens
    # (~1.4 epochs), lr 1e-3 -> 1e-4. Expect val ~1.6 on one consumer GPU.
    "tinystories": dict(
        data="data/tinystories", out_dir="runs/tinystories", total_batch_size=64 * 256,
        micro_batch_size=64, seq_len=256, block_size=256, n_layer=6, n_head=6, n_embd=384,
        dropout=0.2, max_steps=40_000, lr=1e-3, min_lr=1e-4, warmup_steps=1000, beta2=0.99,
        shuffle=True, eval_every=500, val_tokens=1_048_576, num_samples=2, sample_tokens=100,
        sample_prompt="Once upon a time", hellaswag_every=0, checkpoint_every=2000),
}


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _auto_or_int(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="train_gpt2.py", description="Train GPT-2 on token shards (torchrun or plain python).",
        epilog="exit status: 0 finished all steps (RUN/DONE written); 2 bad input; "
               "3 stopped by SIGUSR1/SIGTERM/SIGINT after saving a checkpoint (resume with the same "
               "command)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="named starting values (default gpt2-124m)")
    parser.add_argument("--config", metavar="FILE", help="json object of field -> value")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved config, parameter count and memory plan per rank "
                             "(model built on the meta device), then exit 0: touches no data or GPU")
    parser.add_argument("--preflight", action="store_true",
                        help="check data, HellaSwag file, tokenizer, output disk, resume target and "
                             "wandb (as every start does), print one line each, then exit: 0 all "
                             "good, 2 any problem; no model, no GPU")
    for f in fields(TrainConfig):
        if f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        # default=None marks "not given": only given flags override preset and file
        if f.type is bool:  # --compile, --compile true, --compile false
            parser.add_argument(flag, nargs="?", const=True, type=_bool, default=None,
                                metavar="BOOL", help=f"(default {f.default})")
        elif f.name == "micro_batch_size":
            parser.add_argument(flag, type=_auto_or_int, default=None, metavar="N|auto",
                                help=f"(default {f.default})")
        else:
            parser.add_argument(flag, type=f.type, default=None, help=f"(default {f.default})")
    return parser


ACTIONS = ("preset", "config", "dry_run", "preflight")  # flags that are not TrainConfig fields


def wants_dry_run(argv=None):
    return build_parser().parse_args(argv).dry_run


def wants_preflight(argv=None):
    return build_parser().parse_args(argv).preflight


def parse_config(argv=None):
    """TrainConfig from defaults, --preset, --config FILE, then flags. Bad input: exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = args.preset or "gpt2-124m"
    values = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    values.update(PRESETS[preset])
    values["preset"] = preset
    if args.config:
        values.update(_read_config_file(parser, args.config))
    values.update({k: v for k, v in vars(args).items()
                   if v is not None and k not in ACTIONS})
    config = TrainConfig(**values)
    _check(parser, config)
    return config


def _read_config_file(parser, path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        parser.error(f"--config {path}: cannot read it as json ({e})")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a json object of field -> value")
    types = {f.name: f.type for f in fields(TrainConfig)}
    for key, value in data.items():
        if key not in types:
            parser.error(f"--config {path}: unknown field {key!r} (fields are the flag names "
                         f"with _ for -)")
        kind = types[key]
        if key == "micro_batch_size" and value == "auto":
            kind = str
        elif key == "micro_batch_size":
            kind = int
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            parser.error(f"--config {path}: field {key!r} must be {kind.__name__}, got {value!r}")
        data[key] = value
    return data


def _check(parser, c):
    """Value checks that need no data or hardware; argparse prints one line and exits 2."""
    if c.micro_batch_size != "auto" and c.micro_batch_size <= 0:
        parser.error(f"--micro-batch-size must be positive or auto, got {c.micro_batch_size}")
    positive = ("total_batch_size", "seq_len", "max_steps", "n_layer",
                "n_head", "n_embd", "block_size", "vocab_size", "val_tokens")
    for name in positive:
        if getattr(c, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(c, name)}")
    non_negative = ("warmup_steps", "eval_every", "checkpoint_every", "keep_checkpoints",
                    "hellaswag_every", "hellaswag_limit", "weight_decay", "grad_clip",
                    "peak_flops", "num_samples", "sample_tokens", "min_lr", "lr")
    if c.dist_timeout_min <= 0:
        parser.error(f"--dist-timeout-min must be positive, got {c.dist_timeout_min}")
    for name in non_negative:
        if getattr(c, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(c, name)}")
    if c.n_embd % c.n_head:
        parser.error(f"--n-embd {c.n_embd} must be divisible by --n-head {c.n_head}")
    if c.seq_len > c.block_size:
        parser.error(f"--seq-len {c.seq_len} is longer than the model's context "
                     f"--block-size {c.block_size}")
    if not 0 <= c.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {c.dropout}")
    for name, choices in (("device", ("auto", "cpu", "cuda", "mps")),
                          ("dtype", ("auto", "bfloat16", "float16", "float32"))):
        if getattr(c, name) not in choices:
            parser.error(f"--{name} must be one of {', '.join(choices)}, got {getattr(c, name)!r}")


def save_config(config, path):
    Path(path).write_text(json.dumps(config.to_dict(), indent=1) + "\n")


if __name__ == "__main__":  # print the resolved config: python config.py --preset cpu-smoke
    json.dump(parse_config().to_dict(), sys.stdout, indent=1)
    print()
