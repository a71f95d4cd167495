"""Presets (--preset NAME): named starting values of a run, and the command that makes each one's
shards (named by preflight when --data holds none).

A preset overrides the TrainConfig defaults (trainer/config.py, the GPT-2 124M recipe); a
--config file and explicit flags come after it, and win.
"""

import re
from pathlib import Path

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
        sample_tokens=16, hellaswag_every=0, core_every=0, checkpoint_every=10, keep_checkpoints=2),
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
        core_every=0, checkpoint_every=1000, keep_checkpoints=1, log_every=10),
    # The lecture's (and nanoGPT's train_shakespeare_char.py) GPU model: 10.7M parameters,
    # val ~1.47-1.48; lr 1e-3 -> 1e-4 cosine after 100 warmup steps, beta2 0.99 as nanoGPT.
    "shakespeare-char-big": dict(
        data="data/shakespeare_char", out_dir="runs/shakespeare-char-big",
        total_batch_size=64 * 256, micro_batch_size=64, seq_len=256, block_size=256, n_layer=6,
        n_head=6, n_embd=384, dropout=0.2, vocab_size=65, max_steps=5000, lr=1e-3, min_lr=1e-4,
        warmup_steps=100, beta2=0.99, shuffle=True, eval_every=250, val_tokens=111_540,
        num_samples=1, sample_tokens=500, sample_prompt="\n", hellaswag_every=0,
        core_every=0, checkpoint_every=1000, keep_checkpoints=1, log_every=10),
    # TinyStories (python -m pipeline.fineweb --source hf:roneneldan/TinyStories --out
    # data/tinystories --prefix tinystories --shard-tokens 10000000), GPT-2 BPE: 6 layers, 6 heads,
    # 384 wide, ~30M parameters (most in the 50k embedding); 40k steps x 16k tokens = 655M tokens
    # (~1.4 epochs), lr 1e-3 -> 1e-4. Expect val ~1.6 on one consumer GPU.
    "tinystories": dict(
        data="data/tinystories", out_dir="runs/tinystories", total_batch_size=64 * 256,
        micro_batch_size=64, seq_len=256, block_size=256, n_layer=6, n_head=6, n_embd=384,
        dropout=0.2, max_steps=40_000, lr=1e-3, min_lr=1e-4, warmup_steps=1000, beta2=0.99,
        shuffle=True, eval_every=500, val_tokens=1_048_576, num_samples=2, sample_tokens=100,
        sample_prompt="Once upon a time", hellaswag_every=0, core_every=0, checkpoint_every=2000),
}


# preset -> (the README's command that makes its shards, a note). data_command() points the
# command's --out at the run's --data.
_FINEWEB_100B = ("python -m pipeline.fineweb --source hf:HuggingFaceFW/fineweb-edu:sample-100BT "
                 "--out data/edu_fineweb100B", "~100B tokens; sample-10BT is too small for this recipe")
_SHAKESPEARE = ("python -m pipeline.shakespeare_char",
                "downloads Tiny Shakespeare; --input input.txt uses a local copy")
DATA_COMMANDS = {
    "gpt2-124m": ("python -m pipeline.fineweb", "FineWeb-Edu sample-10BT, ~10B tokens"),
    "gpt2-350m": _FINEWEB_100B,
    "gpt2-774m": _FINEWEB_100B,
    "gpt2-1558m": _FINEWEB_100B,
    "cpu-smoke": ("make demo", "small GPT-2 shards in data/demo, then --data data/demo; or your own "
                               "text: `python -m pipeline.fineweb --source FILE.txt --out {data} "
                               "--prefix {name} --shard-tokens 50000`"),
    "shakespeare-char": _SHAKESPEARE,
    "shakespeare-char-big": _SHAKESPEARE,
    "tinystories": ("python -m pipeline.fineweb --source hf:roneneldan/TinyStories --out "
                    "data/tinystories --prefix tinystories --shard-tokens 10000000", ""),
}
# where those commands write without --out
_DEFAULT_OUT = {"pipeline.fineweb": "data/edu_fineweb10B",
                "pipeline.shakespeare_char": "data/shakespeare_char", "demo": "data/demo"}


def data_command(cfg):
    """'`COMMAND` (note)': the README's command making the shards of cfg.preset, in cfg.data; or,
    where --data holds text rather than shards, the command tokenizing it into a folder beside."""
    data = Path(cfg.data)
    if holds_text(data):
        shards = data.with_name(f"{data.stem}_shards")
        return (f"`python -m pipeline.fineweb --source {data} --out {shards} --prefix {data.stem}` "
                f"(--data {data} is text, not shards: this tokenizes it with GPT-2's BPE; then "
                f"--data {shards})")
    command, note = DATA_COMMANDS.get(cfg.preset, DATA_COMMANDS["gpt2-124m"])
    if Path(cfg.data) == Path(_DEFAULT_OUT["demo"]):
        command, note = "make demo", "it then trains a small model on them"
    words = command.split()
    if "--out" in words:
        words[words.index("--out") + 1] = cfg.data
    elif words[0] == "python" and cfg.data != _DEFAULT_OUT[words[2]]:
        words += ["--out", cfg.data]
    return f"`{' '.join(words)}`" + (f" ({note.format(data=cfg.data, name=data.name)})" if note else "")


def holds_text(path):
    """A file, or a folder of files none of which is a shard or a manifest: a corpus."""
    if path.is_file():
        return True
    files = [p.name for p in path.iterdir() if p.is_file()] if path.is_dir() else []
    return bool(files) and not any(re.search(r"_(train|val)_\d{6}\.(bin|npy)$", name) or
                                   name in ("manifest.json", "tokenizer.json") for name in files)
