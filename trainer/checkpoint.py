"""Training checkpoints: `RUN/ckpt_{step:07d}.pt`, written atomically, the newest K kept.

A checkpoint is one torch.save'd dict of tensors and plain Python data only:
    format        CHECKPOINT_FORMAT
    model         full state_dict of the plain GPT, keyed by parameter name
    optimizer     full AdamW state, keyed by parameter name (torch.distributed.checkpoint's
                  layout: the same whether DDP or FSDP wrote it, on any number of ranks)
    step          number of steps done (training resumes at this step)
    loader        ShardLoader.state_dict(): a few ints
    rng           list, one entry per rank: {"torch": CPU RNG state, "cuda": CUDA RNG state|None}
    config        TrainConfig as a dict, plus config["model"] = the GPTConfig dict
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

from model import GPT, GPTConfig
from shards.format import atomic_write

PATTERN = re.compile(r"ckpt_(\d{7,})\.pt")
CHECKPOINT_FORMAT = 2  # 1: optimizer state keyed by index (single-file DDP); 2: keyed by name


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
    config = GPTConfig.from_dict(state["config"]["model"])
    config.dropout = 0.0
    model = GPT(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: the weights do not fit its config['model']: {detail}") from None
    data = state["config"].get("data")
    return model.to(device), (str(data) if data else None)


def find_latest(run_dir):
    """The newest readable checkpoint in run_dir, or None.

    Writes are atomic, so a damaged file means disk trouble: it is reported and skipped.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            load_checkpoint(path)
            return path
        except CheckpointError as e:
            print(f"warning: skipping {e}")
    return None


def choose_resume(resume, run_dir, runtime):
    """The checkpoint to resume from (or None), chosen by rank 0 and broadcast: ranks reading a
    shared folder through stale NFS listings must not resume from different steps. A bad
    --resume PATH raises the same CheckpointError on every rank (none is left waiting)."""
    choice = (None, None)  # (path, error message)
    if runtime.master:
        try:
            if resume == "auto":
                choice = (find_latest(run_dir), None)
            elif resume != "never":
                choice = (resolve_checkpoint(resume), None)
        except CheckpointError as e:
            choice = (None, str(e))
        choice = (None if choice[0] is None else str(choice[0]), choice[1])
    path, error = runtime.broadcast_object(choice)
    if error:
        raise CheckpointError(error)
    return None if path is None else Path(path)


def check_compatible(state, model_config, path):
    """Refuse a checkpoint this run cannot continue exactly: an older layout, or another model
    config (one line, which fields)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: written by an older train_gpt2.py (checkpoint format "
                              f"{state.get('format', 1)}, now {CHECKPOINT_FORMAT}); its weights still "
                              f"load in sample.py/hellaswag.py, but training cannot continue it: start "
                              f"a new run in another --out-dir")
    saved = state["config"].get("model", {})
    diff = [f"{k} {saved.get(k)} != {v}" for k, v in model_config.items()
            if k != "dropout" and saved.get(k) != v]
    if diff:
        raise CheckpointError(f"{path}: checkpoint is from another model config ({', '.join(diff)}); "
                              f"use the same model flags, or start a new run in another --out-dir")


def rng_state(device):
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save_training_state(run_dir, step, parallel, optimizer, scaler, loader, cfg, wandb_run_id):
    """Checkpoint after `step` steps: every rank takes part (FSDP gathers, RNG states of every
    rank), rank 0 writes. Returns the path on rank 0, else None."""
    runtime = parallel.runtime
    full = parallel.full_state(optimizer)
    rngs = runtime.all_gather_object(rng_state(runtime.device))
    if not runtime.master:
        return None
    state = {"format": CHECKPOINT_FORMAT, **full, "scaler": scaler.state_dict(), "step": step,
             "loader": loader.state_dict(), "rng": rngs,
             "config": {**cfg.to_dict(), "model": parallel.module.config.to_dict()},
             "wandb_run_id": wandb_run_id}
    return save_checkpoint(state, run_dir, step, keep=cfg.keep_checkpoints)


def restore_training_state(path, parallel, optimizer, scaler, loader):
    """Load a checkpoint chosen by choose_resume into this rank's model, optimizer, loss scaler,
    loader and RNG; returns (step, wandb_run_id). Any world size and parallelism will do; only
    dropout masks differ when the number of ranks changed (their RNG streams are per rank)."""
    runtime = parallel.runtime
    state = load_checkpoint(path)
    check_compatible(state, parallel.module.config.to_dict(), path)
    parallel.load_full_state(optimizer, state)
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    if len(state["rng"]) == runtime.world_size:
        mine = state["rng"][runtime.rank]
        torch.set_rng_state(mine["torch"])
        if runtime.device.type == "cuda" and mine["cuda"] is not None:
            torch.cuda.set_rng_state(mine["cuda"], runtime.device)
    elif runtime.master and parallel.module.config.dropout > 0:
        print(f"note: checkpoint from {len(state['rng'])} ranks, now {runtime.world_size}: dropout "
              f"masks will differ from the original run")
    return state["step"], state.get("wandb_run_id")
