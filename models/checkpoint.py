"""The checkpoint file: `RUN/ckpt_{step:07d}.pt`, written atomically, read safely, turned into a
model. What every tool shares; trainer/checkpoint.py builds and restores the training state in it.

A checkpoint is one torch.save'd dict of tensors and plain Python data only:
    format        CHECKPOINT_FORMAT
    model         full state_dict of the plain model, keyed by parameter name
    optimizer     full optimizer state, keyed by parameter name (torch.distributed.checkpoint's
                  layout: the same whether DDP or FSDP wrote it, on any number of ranks): AdamW's,
                  or with --recipe speedrun Muon's and AdamW's in one
    step          number of steps done (training resumes at this step)
    loader        ShardLoader.state_dict(): a few ints
    rng           list, one entry per rank: {"torch": CPU RNG state, "cuda": CUDA RNG state|None}
    config        TrainConfig as a dict, plus config["model"] = the model's config dict (its
                  "arch" picks the class: models.build_model)
    wandb_run_id  str or None, so a resumed run continues the same wandb run

One file with the full state rather than torch.distributed.checkpoint's folder of shards: rank 0
writes it alone, which costs a gather but stays simple up to GPT-2 1.5B (~19 GB with AdamW), and
every tool (sample.py, hellaswag.py, hf_gpt2.py) reads it with a plain torch.load on one machine.
It is written to a hidden temporary name, fsync'ed and renamed: a run killed mid-save leaves the
previous checkpoints intact and never a partial file under a `ckpt_*.pt` name.

Loading never runs code: torch.load(weights_only=True) accepts tensors and plain data only, so a
shared checkpoint whose pickle would call anything else is refused before it can act.
"""

import pickle
import re
from pathlib import Path

import torch

from models import build_model
from shards.format import atomic_write

PATTERN = re.compile(r"ckpt_(\d{7,})\.pt")
# 1: optimizer state keyed by index (single-file DDP); 2: keyed by name; 3: config["recipe"], and
# with --recipe speedrun the model's config["model"]["arch"] and Muon's state beside AdamW's
CHECKPOINT_FORMAT = 3


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
    """Atomically write `state` as ckpt_{step}.pt, then delete all but the newest `keep` up to
    it. A checkpoint of a later step is not this run's history (a damaged one that resuming
    skipped, or the later steps of a run resumed from an earlier --resume PATH): never deleted."""
    path = checkpoint_path(run_dir, step)
    with atomic_write(path) as f:
        torch.save(state, f)
    if keep > 0:
        up_to_this = [p for p in list_checkpoints(run_dir) if int(PATTERN.fullmatch(p.name)[1]) <= step]
        for old in up_to_this[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path):
    not_ours = (f"{path}: not a checkpoint of this project (train_gpt2.py writes ckpt_*.pt files); "
                f"pass one of those, or a run folder")
    try:
        with open(path, "rb") as f:
            zip_archive = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not zip_archive:  # a text file, an old-format torch file, ...: torch would say "mmap ..."
        raise CheckpointError(not_ours)
    try:
        # mmap: every rank loads it, the tensors are paged in from the file rather than copied
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data, which could run "
            f"code on loading ({first}); only a file written by train_gpt2.py is accepted") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot read it as a checkpoint: damaged, or not one of this "
                              f"project's ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not {"model", "step", "config"} <= state.keys():
        raise CheckpointError(f"{not_ours}: a torch file without train_gpt2.py's model, step and "
                              f"config entries")
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
    try:
        model = build_model({**state["config"]["model"], "dropout": 0.0})
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: the weights do not fit its config['model']: {detail}") from None
    data = state["config"].get("data")
    return model.to(device), (str(data) if data else None)
