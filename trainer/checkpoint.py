"""Training state in a checkpoint (models/checkpoint.py is the file): what a run saves after a
step, which checkpoint a run resumes from, and restoring every rank from it.
"""

from pathlib import Path

import torch

from models.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, list_checkpoints,
                               load_checkpoint, resolve_checkpoint, save_checkpoint)

# Format 2 is format 3 less config["recipe"]: written before --recipe existed, so by the faithful
# recipe (the default of a missing recipe), its AdamW state already keyed by parameter name in
# torch.distributed.checkpoint's layout. It resumes as it is, exactly; format 1 (by index) not.
RESUMABLE_FORMATS = (2, CHECKPOINT_FORMAT)


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


def check_compatible(state, model_config, path, recipe="faithful"):
    """Refuse a checkpoint this run cannot continue exactly: an older layout, another recipe, or
    another model config (one line, which fields)."""
    if state.get("format") not in RESUMABLE_FORMATS:
        raise CheckpointError(f"{path}: written by an older train_gpt2.py (checkpoint format "
                              f"{state.get('format', 1)}, now {CHECKPOINT_FORMAT}); its weights still "
                              f"load in sample.py/hellaswag.py, but training cannot continue it: start "
                              f"a new run in another --out-dir")
    saved_recipe = state["config"].get("recipe", "faithful")
    if saved_recipe != recipe:
        raise CheckpointError(f"{path}: checkpoint is from --recipe {saved_recipe}, this run is --recipe "
                              f"{recipe}; use --recipe {saved_recipe}, or start a new run in another --out-dir")
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


def restore_training_state(path, parallel, optimizer, scaler, loader, recipe="faithful"):
    """Load a checkpoint chosen by choose_resume into this rank's model, optimizer, loss scaler,
    loader and RNG; returns (step, wandb_run_id). Any world size and parallelism will do; only
    dropout masks differ when the number of ranks changed (their RNG streams are per rank)."""
    runtime = parallel.runtime
    state = load_checkpoint(path)
    check_compatible(state, parallel.module.config.to_dict(), path, recipe)
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
