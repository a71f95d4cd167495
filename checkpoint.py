"""Training checkpoints: `RUN/ckpt_{step:07d}.pt`, written atomically, the newest K kept.

A checkpoint is one torch.save'd dict:
    model         state_dict of the plain GPT (no `module.` / `_orig_mod.` prefixes)
    optimizer     AdamW state_dict
    step          number of steps done (training resumes at this step)
    loader        ShardLoader.state_dict(): a few ints
    rng           list, one entry per rank: {"torch": CPU RNG state, "cuda": CUDA RNG state|None}
    param_sha256  list, one per rank: hash of that rank's parameters (DDP replicas must agree)
    config        TrainConfig as a dict, plus config["model"] = the GPTConfig dict
    wandb_run_id  str or None, so a resumed run continues the same wandb run
It is written to a hidden temporary name, fsync'ed and renamed: a crash mid-save leaves the
previous checkpoints intact and never a partial file under a `ckpt_*.pt` name.
"""

import re
from pathlib import Path

import torch

from model import GPT, GPTConfig
from shards.format import atomic_write

PATTERN = re.compile(r"ckpt_(\d{7,})\.pt")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or from an incompatible run; one line says which."""


def checkpoint_path(run_dir, step):
    return Path(run_dir) / f"ckpt_{step:07d}.pt"


def list_checkpoints(run_dir):
    """Checkpoint paths in run_dir, oldest first (by step)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := PATTERN.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state, run_dir, step, keep=0):
    """Atomically write `state` as ckpt_{step}.pt, then delete all but the newest `keep`."""
    path = checkpoint_path(run_dir, step)
    with atomic_write(path) as f:
        torch.save(state, f)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path):
    try:
        # mmap: every rank loads it, the tensors are paged in from the file rather than copied.
        # weights_only=False: it holds RNG states and plain dicts (load trusted files only)
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not {"model", "step", "config"} <= state.keys():
        raise CheckpointError(f"{path}: not a train_gpt2.py checkpoint")
    return state


def resolve_checkpoint(path):
    """A checkpoint file, or the newest ckpt_*.pt in a run folder."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path}: no ckpt_*.pt checkpoint in this folder")
        return found[-1]
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def load_model(path, device="cpu"):
    """(GPT in eval-ready form, its shard folder or None) from a checkpoint file or run folder:
    what sampling, HellaSwag and export need, without the optimizer state."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    if "model" not in state["config"]:
        raise CheckpointError(f"{path}: its config has no 'model' entry (not a train_gpt2.py checkpoint)")
    config = GPTConfig.from_dict(state["config"]["model"])
    config.dropout = 0.0
    model = GPT(config)
    weights = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state["model"].items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: the weights do not fit its config['model']: {detail}") from None
    data = state["config"].get("data")
    return model.to(device), (str(data) if data else None)


def find_latest(run_dir):
    """(path, state) of the newest readable checkpoint in run_dir, or (None, None).

    Writes are atomic, so a damaged file means disk trouble: it is reported and skipped.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            print(f"warning: skipping {e}")
    return None, None


def check_compatible(state, model_config, path):
    """Refuse a checkpoint whose model config differs from this run's (one line, which fields)."""
    saved = state["config"].get("model", {})
    diff = [f"{k} {saved.get(k)} != {v}" for k, v in model_config.items()
            if k != "dropout" and saved.get(k) != v]
    if diff:
        raise CheckpointError(f"{path}: checkpoint is from another model config ({', '.join(diff)}); "
                              f"use the same model flags, another --out-dir, or --resume never")
