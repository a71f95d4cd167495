"""Training configuration: one dataclass, every field a command-line flag.

Resolution order: the dataclass defaults (= the GPT-2 124M reference recipe), then a named
--preset, then an optional --config FILE (json object of field -> value), then explicit flags.
Presets live in trainer/presets.py, the checks of the resolved values in trainer/config_checks.py.

    python train_gpt2.py --preset cpu-smoke --max-steps 50 --out-dir runs/smoke
    torchrun --nproc_per_node=8 train_gpt2.py --config my_run.json --lr 1e-3
"""

import argparse
import difflib
import json
import os
import re
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from trainer.config_checks import check_values, model_from_weights
from trainer.presets import PRESETS
from trainer.recipes import RECIPES, recipe_overrides


def flag(default, group, help):
    """A TrainConfig field: its default, its --help group and its one-line help."""
    return field(default=default, metadata={"group": group, "help": help})


# the --help sections, in the order a user thinks of a run
GROUPS = ("data", "model", "optimization", "evaluation", "checkpoints", "distributed and hardware",
          "logging")


@dataclass
class TrainConfig:
    data: str = flag("data/edu_fineweb10B", "data", "shard folder written by python -m pipeline.fineweb")
    shuffle: bool = flag(False, "data", "seeded shuffle of shard and sequence order, per epoch")
    seed: int = flag(1337, "data", "seed of the initial weights, the shuffle and dropout")
    # total_batch_size tokens per step = micro_batch_size * seq_len * grad_accum * world_size
    total_batch_size: int = flag(524_288, "optimization",
                                 "tokens per optimizer step, over all ranks (2**19 ~ 0.5M, as GPT-3 125M)")
    micro_batch_size: int | str = flag(
        "auto", "distributed and hardware",
        "sequences per forward pass on each rank; auto: the largest power of two that divides each "
        "rank's share and fits (probed on CUDA; at most 64 on CPU/MPS)")
    seq_len: int = flag(1024, "data", "tokens per training sequence")
    max_steps: int = flag(19_073, "optimization", "optimizer steps (19,073 x 524,288 = 10B tokens)")
    lr: float = flag(6e-4, "optimization", "peak learning rate, reached after the warmup (speedrun: Muon's)")
    min_lr: float = flag(6e-5, "optimization", "learning rate at the end of the cosine decay")
    warmup_steps: int = flag(715, "optimization", "steps of linear warmup (715 = 375M tokens)")
    lr_decay_steps: int = flag(0, "optimization", "the step where the cosine reaches --min-lr (then "
                                                  "flat); 0 = --max-steps, on resume the run's own")
    weight_decay: float = flag(0.1, "optimization", "AdamW weight decay, on matrices and embeddings only "
                                                    "(speedrun: Muon's; AdamW's is 0)")
    beta1: float = flag(0.9, "optimization", "AdamW beta1")
    beta2: float = flag(0.95, "optimization", "AdamW beta2")
    eps: float = flag(1e-8, "optimization", "AdamW epsilon")
    grad_clip: float = flag(1.0, "optimization", "clip the global gradient norm to this; 0 = no clipping")
    recipe: str = flag("faithful", "optimization",
                       "faithful: GPT-2, AdamW, warmup + cosine (build-nanogpt's) | speedrun: the modern "
                       "block, Muon + AdamW, warmup-stable-decay, with its own values of the flags "
                       "(trainer/recipes.py)")
    embedding_lr: float = flag(0.7, "optimization", "speedrun: AdamW learning rate of the token embedding")
    head_lr: float = flag(0.004, "optimization", "speedrun: AdamW learning rate of the output layer")
    scalar_lr: float = flag(0.015, "optimization", "speedrun: AdamW learning rate of the RMSNorm gains")
    decay_fraction: float = flag(0.7, "optimization", "speedrun: the last fraction of the steps, over "
                                 "which every learning rate falls linearly to min_lr/lr of its peak")
    muon_momentum: float = flag(0.95, "optimization", "speedrun: Muon's Nesterov momentum, reached "
                                "linearly from 0.85 over --muon-momentum-warmup steps")
    muon_momentum_warmup: int = flag(300, "optimization", "speedrun: steps of Muon's momentum warmup")
    muon_ns_dtype: str = flag("auto", "distributed and hardware",
                              "speedrun: dtype of Muon's Newton-Schulz iteration; auto: bfloat16 on CUDA, "
                              "float32 elsewhere (~25x faster than bf16 on CPUs without bf16 units)")
    n_layer: int = flag(12, "model", "transformer blocks")
    n_head: int = flag(12, "model", "attention heads per block")
    n_embd: int = flag(768, "model", "width of the residual stream")
    block_size: int = flag(1024, "model", "the model's context, in tokens")
    vocab_size: int = flag(50_304, "model", "output rows (GPT-2's 50,257 padded to a multiple of 64)")
    dropout: float = flag(0.0, "model", "dropout probability (0 for pretraining)")
    bias: bool = flag(True, "model", "biases in Linear and LayerNorm layers, as GPT-2")
    init_from: str = flag("", "model", "start from a Hugging Face GPT-2's weights, as nanoGPT's "
                                       "init_from: gpt2, gpt2-medium, gpt2-large, gpt2-xl or a "
                                       "save_pretrained folder; the model flags are then the "
                                       "weights' (a different one is refused); a resume loads its "
                                       "checkpoint instead")
    device: str = flag("auto", "distributed and hardware", "auto (cuda, else mps, else cpu) | cpu | cuda | mps")
    dtype: str = flag("auto", "distributed and hardware",
                      "auto (bfloat16 autocast on GPUs with native bf16, float16 with loss scaling on "
                      "older GPUs such as V100/T4, float32 on CPU/MPS) | bfloat16 | float16 | float32")
    compile: bool | str = flag("auto", "distributed and hardware",
                               "torch.compile the model for training; auto: on for CUDA, off for CPU/MPS")
    fsdp: bool = flag(False, "distributed and hardware",
                      "shard weights, gradients and AdamW state over the ranks (FSDP2) instead of DDP")
    activation_checkpointing: bool = flag(False, "distributed and hardware",
                                          "recompute each block's activations in backward: less "
                                          "memory, ~1/3 more compute")
    dist_timeout_min: int = flag(30, "distributed and hardware",
                                 "minutes a collective waits for a slow rank (e.g. one checkpointing); "
                                 "a hung rank (alive but stuck) holds every rank and its GPU this long "
                                 "before the job fails")
    peak_flops: float = flag(0.0, "logging", "peak FLOP/s of one device, for MFU; 0 = known GPUs")
    log_every: int = flag(1, "logging", "print a train step line every N steps (and the last); "
                                        "log.jsonl and wandb get every step")
    eval_every: int = flag(250, "evaluation", "validation loss, bits per byte and samples every N "
                                              "steps and at the end; 0 = never")
    val_tokens: int = flag(10_485_760, "evaluation", "validation tokens (the same for any world size)")
    num_samples: int = flag(4, "evaluation", "text samples at each evaluation")
    sample_tokens: int = flag(32, "evaluation", "tokens generated per sample")
    sample_prompt: str = flag("Hello, I'm a language model,", "evaluation", "prompt of the samples")
    hellaswag_every: int = flag(250, "evaluation", "HellaSwag accuracy every N steps; 0 = never")
    hellaswag_limit: int = flag(0, "evaluation", "score the first N examples; 0 = all 10,042")
    hellaswag_data: str = flag("", "evaluation", "a local HellaSwag jsonl; default: hellaswag.py's cache")
    core_every: int | str = flag("auto", "evaluation",
                                 "CORE (core_eval.py) every N steps and at the last step; auto: at the "
                                 "last step only, when the bundle is present; 0 = never")
    core_max_per_task: int = flag(500, "evaluation", "score the first K rows of each CORE task "
                                                     "(nanochat's 500 during training); 0 = all")
    core_bundle: str = flag("", "evaluation", "the CORE eval bundle folder; default: core_eval.py's "
                                              "data/eval_bundle")
    out_dir: str = flag("runs/gpt2-124m", "checkpoints",
                        "run folder: config.json, log.jsonl, checkpoints, report, DONE")
    resume: str = flag("auto", "checkpoints", "auto (newest checkpoint in --out-dir, if any) | never | PATH")
    checkpoint_every: int = flag(5000, "checkpoints", "steps between checkpoints; 0 = only at the "
                                                      "end and on a stop request")
    keep_checkpoints: int = flag(3, "checkpoints", "keep the newest K checkpoints; 0 = all")
    wandb: bool = flag(False, "logging", "log to Weights & Biases too (WANDB_MODE=offline works "
                                         "without an account)")
    wandb_project: str = flag("", "logging", "default: $WANDB_PROJECT, else gpt2-fineweb")
    wandb_run_name: str = flag("", "logging", "default: wandb's own")
    preset: str = flag("gpt2-124m", "data", "the preset the values started from (informational)")

    def model_config(self):
        """The model's config fields, as a dict (models.build_model builds it): GPT-2's, or with
        --recipe speedrun the modern block's."""
        shape = {k: getattr(self, k) for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd",
                                               "dropout")}
        return {**shape, "arch": "modern"} if self.recipe == "speedrun" else {**shape, "bias": self.bias}

    def to_dict(self):
        return asdict(self)


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


HELP_HEADER = """Train GPT-2 on token shards, on one process or under torchrun (DDP or FSDP).

most runs are one of:
  python -m trainer.launch --standalone --nproc_per_node=8 train_gpt2.py   # GPT-2 124M on FineWeb-Edu 10B
  python train_gpt2.py --preset cpu-smoke --data data/demo     # a tiny model on CPU, seconds
  sbatch slurm/train.sbatch --preset gpt2-350m --fsdp          # a bigger GPT-2 on a Slurm cluster
(python -m trainer.launch is torchrun, exiting with the status below rather than torchrun's 1)

values: defaults (the GPT-2 124M recipe), then --preset, then --config FILE, then flags"""


def _typed(text, kinds):
    """--micro-batch-size N|auto and --compile BOOL|auto."""
    if text == "auto":
        return text
    try:
        return _bool(text) if bool in kinds else int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected {' or '.join(k.__name__ for k in kinds)} or "
                                         f"auto, got {text!r}") from None


class FlagParser(argparse.ArgumentParser):
    """argparse without abbreviations (--max-step is not --max-steps: a typo must not pass), and
    with the nearest flag suggested for an unknown one (--max_steps=10: did you mean --max-steps)."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            flags = [o for action in self._actions for o in action.option_strings]
            for word in message[len(prefix):].split():
                guess = difflib.get_close_matches(word.split("=")[0].replace("_", "-"), flags, n=1)
                if word.startswith("-") and guess:
                    message += f" (did you mean {guess[0]}?)"
                    break
        super().error(message)


def build_parser():
    parser = FlagParser(
        prog="train_gpt2.py", usage="%(prog)s [--preset NAME] [--config FILE] [flags]",
        description=HELP_HEADER,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 finished all steps (RUN/DONE written); 2 bad input; "
               "3 stopped by SIGUSR1/SIGTERM/SIGINT or RUN/STOP after saving a checkpoint (resume "
               "with the same command)")
    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), default=None,
                     help="named starting values (default gpt2-124m)")
    run.add_argument("--config", metavar="FILE", help="json object of field -> value")
    run.add_argument("--dry-run", action="store_true",
                     help="print the resolved config, parameter count and memory plan per rank "
                          "(two training steps traced on fake tensors; see --world-size, "
                          "--gpu-memory), then exit: 0, or 2 when it does not fit (GPU memory "
                          "given, or the RAM available on CPU); touches no data or GPU")
    run.add_argument("--world-size", type=int, metavar="N",
                     help="with --dry-run: plan for N ranks (default: $WORLD_SIZE, as torchrun sets "
                          "it, else 1)")
    run.add_argument("--gpu-memory", type=_memory_size, metavar="SIZE",
                     help="with --dry-run: memory of each GPU, e.g. 80GB or 24GiB: shows the "
                          "micro-batch auto would pick there (the README's fit table)")
    run.add_argument("--json", action="store_true",
                     help="with --dry-run: print the plan as one JSON line (peak_bytes traced, "
                          "formula_bytes, parts)")
    run.add_argument("--preflight", action="store_true",
                     help="check data, HellaSwag file, tokenizer, output disk, resume target and "
                          "wandb (as every start does), print one line each, then exit: 0 all "
                          "good, 2 any problem; no model, no GPU")
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in fields(TrainConfig):
        if f.name == "preset":
            continue
        flag_name = "--" + f.name.replace("_", "-")
        group = groups[f.metadata["group"]]
        # an empty default is described by the help text itself ("default: wandb's own")
        help_text = f.metadata["help"] + (f" (default {f.default})" if f.default != "" else "")
        # default=None marks "not given": only given flags override preset and file
        if f.type is bool:  # --compile, --compile true, --compile false
            group.add_argument(flag_name, nargs="?", const=True, type=_bool, default=None,
                               metavar="BOOL", help=help_text)
        elif f.type in (int | str, bool | str):
            kinds = (int,) if f.type == int | str else (bool,)
            metavar = "N|auto" if kinds == (int,) else "BOOL|auto"
            group.add_argument(flag_name, nargs="?" if kinds == (bool,) else None,
                               const=True if kinds == (bool,) else None,
                               type=lambda text, kinds=kinds: _typed(text, kinds), default=None,
                               metavar=metavar, help=help_text)
        else:
            metavar = {int: "N", float: "X", str: "TEXT"}[f.type]
            group.add_argument(flag_name, type=f.type, default=None, metavar=metavar, help=help_text)
    return parser


# flags that are not TrainConfig fields
ACTIONS = ("preset", "config", "dry_run", "world_size", "gpu_memory", "json", "preflight")


def _memory_size(text):
    """--gpu-memory 80GB | 80 (GB) | 24GiB -> bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(GB|G|GIB)?", text.strip().upper())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 80GB or 24GiB, got {text!r}")
    return float(match[1]) * (2**30 if match[2] == "GIB" else 1e9)


def wants_dry_run(argv=None):
    return build_parser().parse_args(argv).dry_run


def dry_run_target(argv=None):
    """(world size, GPU memory in bytes or None, where the world size came from, --json) of a
    dry run."""
    args = build_parser().parse_args(argv)
    if args.world_size is not None:
        return args.world_size, args.gpu_memory, "--world-size", args.json
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]), args.gpu_memory, "$WORLD_SIZE", args.json
    return 1, args.gpu_memory, "the default; --world-size N plans for N", args.json


def wants_preflight(argv=None):
    return build_parser().parse_args(argv).preflight


def parse_config(argv=None):
    """TrainConfig from defaults, --preset, --config FILE, then flags. Bad input: exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dry_run and (args.world_size is not None or args.gpu_memory is not None or args.json):
        parser.error("--world-size, --gpu-memory and --json plan a --dry-run; a run's world size is "
                     "torchrun's, its GPU memory the GPU's")
    if args.world_size is not None and args.world_size <= 0:
        parser.error(f"--world-size must be positive, got {args.world_size}")
    preset = args.preset or "gpt2-124m"
    values = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    values.update(PRESETS[preset])
    values["preset"] = preset
    file_values = _read_config_file(parser, args.config) if args.config else {}
    recipe = args.recipe or file_values.get("recipe", values["recipe"])
    if recipe not in RECIPES:
        parser.error(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    values.update(recipe_overrides(recipe, preset))
    given = {**file_values, **{k: v for k, v in vars(args).items() if v is not None and k not in ACTIONS}}
    values.update(given)
    if values["init_from"]:
        if recipe != "faithful":
            parser.error(f"--init-from loads GPT-2's weights, which --recipe {recipe}'s model cannot "
                         "take; fine-tune with --recipe faithful")
        model_from_weights(parser, values, given)
    config = TrainConfig(**values)
    check_values(parser, config)
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
        if kind in (int | str, bool | str):  # a number or flag, or "auto"
            kind = str if value == "auto" else (int if kind == int | str else bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            parser.error(f"--config {path}: field {key!r} must be {kind.__name__}, got {value!r}")
        data[key] = value
    return data


def save_config(config, path):
    Path(path).write_text(json.dumps(config.to_dict(), indent=1) + "\n")


if __name__ == "__main__":  # print the resolved config: python -m trainer.config --preset cpu-smoke
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends quietly
    json.dump(parse_config().to_dict(), sys.stdout, indent=1)
    print()
