"""The run folder (--out-dir) is the user's record of a run: one writer at a time, nothing in it
overwritten by another run.

    with run_folder.hold(cfg, runtime, scheduled_lr) as start:   # every rank, after the process group
        if not start.finished:
            train(start.cfg, ...)

One writer: rank 0 holds RUN/.lock (pipeline/lock.py's flock, as the data pipeline holds its
shard folder) from before anything is written until the run ends; a second start into the same
folder is refused in one line naming the holder (host, pid, since when), exit 2, on every rank
alike. The kernel releases an flock when its process dies however it dies, so a killed run never
leaves a stale lock; a Slurm requeue of the same job (the holder's card names SLURM_JOB_ID) whose
previous processes are still ending (torchrun's shutdown, an NFS lock lease) is waited for, up to
REQUEUE_WAIT_S, then takes the folder over.

Under the lock rank 0 decides how this start relates to the run already in the folder:
- a start that would not continue the folder's run (a checkpoint or log.jsonl) from its newest
  checkpoint is refused: --resume never, or --resume PATH of another run or of an earlier step
  would mix two histories' checkpoints, log and report; another --out-dir is the fix (and the
  newest K kept never counts a checkpoint of a later step, checkpoint.save_checkpoint);
- a finished run (RUN/DONE, --resume auto, --max-steps not beyond it) is said in one line and
  nothing runs: exit 0, no evaluations repeated;
- a resumed run keeps the learning-rate schedule it was started with: the cosine's horizon is
  the checkpoint's (--lr-decay-steps, else its --max-steps), so a raised --max-steps continues at
  the floor instead of jumping back up; one line gives the old and new schedule and the flag that
  stretches the cosine instead. RUN/DONE is removed once the run is known not to be finished.

log.jsonl is only ever appended to (metrics.py): a resumed start's {"setup"} record supersedes the
earlier lines of the steps it logs again, and the readers drop them (metrics.read_log).
"""

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.lock import LOCK, FolderLock, Locked
from trainer.checkpoint import find_latest, list_checkpoints, load_checkpoint, resolve_checkpoint

# How long a requeued Slurm job waits for its previous start to let go of the folder: torchrun's
# shutdown (train.sbatch: 170 s) and an NFS client's lock lease (90 s by default) fit.
REQUEUE_WAIT_S = 180.0


class RunFolderError(ValueError):
    """This start cannot use the run folder; one line says why and what to do (exit 2)."""


@dataclass
class Start:
    cfg: object  # the TrainConfig to train with: the schedule's horizon resolved
    finished: bool  # the run is already done: nothing to do


@contextmanager
def hold(cfg, runtime, lr_at):
    """Hold cfg.out_dir for this run (rank 0 takes the lock; every rank raises RunFolderError
    alike when it cannot) and yield the Start decided under it. `lr_at(step, cfg)` is the
    schedule, to say what a changed one does."""
    lock, outcome = None, None
    if runtime.master:
        try:
            lock = take_lock(Path(cfg.out_dir))
            outcome = plan(cfg, lr_at)
        except (Locked, ValueError) as e:  # RunFolderError, CheckpointError are ValueErrors
            outcome = str(e)
        except OSError as e:  # every rank must hear of it: the others wait in the broadcast
            outcome = f"--out-dir {cfg.out_dir}: {e.strerror or e}; check the folder and its disk"
    outcome = runtime.broadcast_object(outcome)
    try:
        if isinstance(outcome, str):
            raise RunFolderError(outcome)
        lr_decay_steps, finished = outcome
        yield Start(replace(cfg, lr_decay_steps=lr_decay_steps), finished)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def take_lock(out_dir):
    """RUN/.lock, held; a lock held by an earlier start of this same Slurm job is waited for."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"--out-dir {out_dir}: cannot create it ({e.strerror or e}); choose a "
                             f"writable --out-dir") from None
    job = os.environ.get("SLURM_JOB_ID")
    role = f"a training run (Slurm job {job})" if job else "a training run"
    lock = FolderLock(out_dir / LOCK, role, what=f"--out-dir {out_dir}")
    deadline, said = time.monotonic() + REQUEUE_WAIT_S, False
    while True:
        try:
            return lock.__enter__()
        except Locked as e:
            if not (job and f"(Slurm job {job})" in str(e)) or time.monotonic() > deadline:
                raise
            if not said:
                print(f"waiting up to {REQUEUE_WAIT_S:.0f} s for the previous start of Slurm job "
                      f"{job} to let go of {out_dir}: {e}", flush=True)
                said = True
            time.sleep(1.0)


def holds_a_run(out_dir):
    """What of a run lies in out_dir ("2 checkpoint(s) up to ckpt_0000040.pt, log.jsonl"), or None."""
    found = list_checkpoints(out_dir)
    parts = [f"{len(found)} checkpoint(s) up to {found[-1].name}"] if found else []
    if (Path(out_dir) / "log.jsonl").exists():
        parts.append("log.jsonl")
    return ", ".join(parts) or None


def refuse_mixing(cfg):
    """The one line refusing a start that would not continue the run already in cfg.out_dir, or
    None. Starting over (--resume never), or from a checkpoint other than the folder's newest
    (--resume PATH: another run's, or an earlier one of this run), would put a second history
    beside the first: two runs' checkpoints, log and report in one folder."""
    held = holds_a_run(cfg.out_dir) if cfg.resume != "auto" else None
    if held is None:
        return None
    fix = "choose another --out-dir, or move that run aside first (--resume auto continues it)"
    if cfg.resume == "never":
        return f"--resume never: {cfg.out_dir} holds a run ({held}); starting over there would " \
               f"mix two runs: {fix}"
    try:
        path = resolve_checkpoint(cfg.resume)
    except ValueError:  # CheckpointError: the resume check says it
        return None
    newest = list_checkpoints(cfg.out_dir)[-1:]
    if newest and path.resolve() == newest[0].resolve():
        return None
    return (f"--resume {cfg.resume}: {cfg.out_dir} holds a run ({held}) that this checkpoint does "
            f"not continue from its newest; training here would mix two histories: {fix}")


def finished_steps(out_dir):
    """The --max-steps a run in out_dir finished (RUN/DONE holds it), or None."""
    try:
        return int((Path(out_dir) / "DONE").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def plan(cfg, lr_at):
    """(cosine horizon, finished), rank 0, under the lock; prints what it decided. The checkpoint
    it reads is the one train_gpt2 resumes from (checkpoint.choose_resume): nobody else writes."""
    out_dir = Path(cfg.out_dir)
    refusal = refuse_mixing(cfg)
    if refusal:
        raise RunFolderError(refusal)
    done = finished_steps(out_dir)
    if cfg.resume == "auto" and done is not None and done >= cfg.max_steps:
        report = out_dir / "report.md"
        print(f"{out_dir}: already finished ({done:,} steps, --max-steps {cfg.max_steps:,}"
              f"{f'; report: {report}' if report.exists() else ''}): nothing to do; to train "
              f"further, pass a larger --max-steps")
        return cfg.lr_decay_steps, True
    (out_dir / "DONE").unlink(missing_ok=True)  # until the last step is done again
    if cfg.resume == "never":
        return cfg.lr_decay_steps, False
    path = find_latest(out_dir) if cfg.resume == "auto" else resolve_checkpoint(cfg.resume)
    if path is None:
        return cfg.lr_decay_steps, False
    state = load_checkpoint(path)
    return keep_schedule(cfg, state["config"], state["step"], lr_at), False


def keep_schedule(cfg, saved, step, lr_at):
    """The cosine horizon for a run resumed at `step` from a checkpoint whose config is `saved`:
    --lr-decay-steps when given, else the checkpoint's. One line when the schedule changes."""
    saved_max = saved.get("max_steps", cfg.max_steps)
    saved_horizon = saved.get("lr_decay_steps") or saved_max
    horizon = cfg.lr_decay_steps or saved_horizon
    if (saved_max, saved_horizon) == (cfg.max_steps, horizon):
        return horizon
    old = replace(cfg, max_steps=saved_max, lr_decay_steps=saved_horizon)
    lr_old = f"{lr_at(step, old):.2e}"
    floor = f"then {cfg.min_lr:.2e} to step {cfg.max_steps:,}" if cfg.max_steps > horizon else \
        f"stopping at step {cfg.max_steps:,}"
    if horizon == saved_horizon:
        stretched = lr_at(step, replace(cfg, lr_decay_steps=cfg.max_steps))
        print(f"note: --max-steps {cfg.max_steps:,} (the run was planned for {saved_max:,}): the "
              f"learning rate keeps its schedule, cosine to {cfg.min_lr:.2e} at step {horizon:,}, "
              f"{floor}; to stretch the cosine over the new length instead pass --lr-decay-steps "
              f"{cfg.max_steps} (at step {step:,} the learning rate would go from {lr_old} to "
              f"{stretched:.2e})")
    else:
        print(f"note: --lr-decay-steps {horizon:,} (the run's cosine ended at step {saved_horizon:,}): "
              f"at step {step:,} the learning rate goes from {lr_old} to "
              f"{lr_at(step, replace(cfg, lr_decay_steps=horizon)):.2e}, cosine to {cfg.min_lr:.2e} "
              f"at step {horizon:,}, {floor}")
    return horizon
