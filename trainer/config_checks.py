"""The checks of a resolved training config that need no data or hardware: the model shape that
--init-from's weights impose, value ranges, and combinations of flags that cannot run together.
Each failure is argparse's one line and exit status 2 (parser.error).
"""


def model_from_weights(parser, values, given):
    """--init-from: the model's shape is the weights' (a flag or --config value that differs is
    refused); the preset's shape gives way."""
    from models.hf import hf_config  # the HF conversions, a layer below (as evaluation/models.py)

    try:
        weights = hf_config(values["init_from"]).to_dict()
    except ValueError as e:
        parser.error(f"--init-from: {e}")
    for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "bias"):
        if name in given and given[name] != weights[name]:
            flag_name = "--" + name.replace("_", "-")
            parser.error(f"{flag_name} {given[name]} contradicts --init-from {values['init_from']}, "
                         f"whose {name} is {weights[name]}: leave {flag_name} out")
        values[name] = weights[name]


def check_values(parser, c):
    """Value checks that need no data or hardware; argparse prints one line and exits 2."""
    if c.micro_batch_size != "auto" and c.micro_batch_size <= 0:
        parser.error(f"--micro-batch-size must be positive or auto, got {c.micro_batch_size}")
    positive = ("total_batch_size", "seq_len", "max_steps", "n_layer", "log_every",
                "n_head", "n_embd", "block_size", "vocab_size", "val_tokens")
    for name in positive:
        if getattr(c, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(c, name)}")
    non_negative = ("warmup_steps", "lr_decay_steps", "eval_every", "checkpoint_every", "keep_checkpoints",
                    "hellaswag_every", "hellaswag_limit", "core_max_per_task", "weight_decay", "grad_clip",
                    "embedding_lr", "head_lr", "scalar_lr", "muon_momentum", "muon_momentum_warmup",
                    "peak_flops", "num_samples", "sample_tokens", "min_lr", "lr")
    if c.dist_timeout_min <= 0:
        parser.error(f"--dist-timeout-min must be positive, got {c.dist_timeout_min}")
    for name in non_negative:
        if getattr(c, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(c, name)}")
    if c.core_every != "auto" and c.core_every < 0:
        parser.error(f"--core-every must be >= 0 or auto, got {c.core_every}")
    if c.n_embd % c.n_head:
        parser.error(f"--n-embd {c.n_embd} must be divisible by --n-head {c.n_head}")
    if c.seq_len > c.block_size:
        parser.error(f"--seq-len {c.seq_len} is longer than the model's context "
                     f"--block-size {c.block_size}")
    if c.recipe == "speedrun" and c.bias:
        parser.error("--bias true: the speedrun's model has no biases; drop --bias, or use --recipe faithful")
    if c.recipe == "speedrun" and (c.n_embd // c.n_head) % 2:
        parser.error(f"--n-embd {c.n_embd} / --n-head {c.n_head} is odd: rotary embeddings rotate pairs of "
                     f"channels, so the speedrun's heads need an even size")
    if not 0 <= c.decay_fraction <= 1:
        parser.error(f"--decay-fraction must be in [0, 1], got {c.decay_fraction}")
    if not 0 <= c.dropout < 1:
        parser.error(f"--dropout must be in [0, 1), got {c.dropout}")
    for name, choices in (("device", ("auto", "cpu", "cuda", "mps")),
                          ("dtype", ("auto", "bfloat16", "float16", "float32")),
                          ("muon_ns_dtype", ("auto", "bfloat16", "float32"))):
        if getattr(c, name) not in choices:
            parser.error(f"--{name} must be one of {', '.join(choices)}, got {getattr(c, name)!r}")
