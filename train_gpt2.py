"""Train GPT-2 on token shards: one process, or one per device under torchrun (DDP or FSDP).

    python train_gpt2.py --preset cpu-smoke --data data/edu_fineweb10B   # tiny model, CPU, seconds
    python -m trainer.launch --standalone --nproc_per_node=8 train_gpt2.py   # GPT-2 124M, 10B tokens

The defaults are build-nanogpt's GPT-2 124M recipe (see trainer/config.py). Every flag: --help.
This file is the recipe: build, wrap, then loop (evaluate, forward, backward, step, log,
checkpoint). Each concern lives in its own module of trainer/: config, distributed (device,
process group, DDP/FSDP), checkpoint, evaluation, metrics, signals.

Run folder (--out-dir): config.json, log.jsonl (one JSON object a line: one "setup" record per
start, train steps, val loss, HellaSwag, samples), ckpt_{step:07d}.pt, DONE once the last step is
finished, then report.md and report.json (trainer/report.py). Resuming is automatic (--resume
auto): rank 0 picks the newest checkpoint in the run folder and the run continues as if never
interrupted, on any number of ranks, DDP or FSDP. One run writes a folder at a time, and a
finished run is not run again (trainer/run_folder.py).

Every start first runs the preflight checks (trainer/preflight.py; alone: --preflight).

Exit status: 0 all steps done (now, or already: nothing to do); 2 bad input (one line says what
to do); 3 stopped early by SIGUSR1, SIGTERM, SIGINT or a RUN/STOP file, after finishing the current
step, or ending an evaluation early, and saving a checkpoint (all ranks agree through a
collective every step and every few evaluation batches, so none hangs): run the same command to
resume. Under torchrun these reach the shell through `python -m trainer.launch`
(trainer/launch.py); torchrun alone exits 1.
"""

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from models import build_model
from models.checkpoint import CheckpointError
from pipeline.tokenizer import load_tokenizer
from shards.loader import LoaderError, ShardLoader, ValLoader
from trainer import batch_size
from trainer.checkpoint import choose_resume, restore_training_state, save_training_state
from trainer.config import (dry_run_target, parse_config, save_config, wants_dry_run,
                            wants_preflight)
from trainer.distributed import ParallelModel, Runtime, autocast_dtype, build
from trainer.environment import software_versions
from trainer.evaluation import Evaluator
from trainer.launch import record_exit
from trainer.metrics import MetricsLogger, Throughput, WandbUnavailable, format_eta, peak_flops_of
from trainer.memory import describe_plan, dry_run_plan, host_memory_share, memory_plan
from trainer.preflight import preflight
from trainer.recipes import build_optimizer, scheduled_lr, set_schedule
from trainer.report import wandb_summary, write_report
from trainer.run_folder import RunFolderError, hold
from trainer.signals import StopPoll, StopRequest

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


class BadInput(Exception):
    """Reported as one line, exit status 2."""


def main(argv=None):
    cfg = parse_config(argv)  # argparse exits 2 on bad flags
    if wants_dry_run(argv):
        return dry_run(cfg, *dry_run_target(argv))
    # data, HellaSwag file, disk, resume target, wandb: checked on every rank before any model,
    # process group or GPU (trainer/preflight.py); --preflight stops here
    passed = preflight(cfg)
    if wants_preflight(argv) or not passed:
        return 0 if passed else EXIT_BAD_INPUT
    try:
        runtime = Runtime.from_env(cfg.device)
        if cfg.compile == "auto":  # compiling pays off on GPUs; on CPU it costs minutes
            cfg = replace(cfg, compile=runtime.device.type == "cuda")
        # "auto" is decided in train() (all ranks agree there), by trying steps on CUDA, by the
        # memory plan on CPU; here, for the data checks, by arithmetic
        probe = cfg.micro_batch_size == "auto"
        micro_batch, why = batch_size.choose(cfg, runtime)
        cfg = replace(cfg, micro_batch_size=micro_batch)
        data = prepare_data(cfg, runtime)
    except (BadInput, LoaderError, ValueError) as e:
        if int(os.environ.get("RANK", 0)) == 0:  # every rank fails alike; one says so
            print(f"error: {e}", file=sys.stderr)
        record_exit(f"error: {e}", EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
    runtime.init_process_group(cfg.dist_timeout_min, group_of_one=cfg.fsdp)
    # from here on a stop request means: checkpoint and exit 3
    stop = StopRequest(Path(cfg.out_dir) / "STOP", announce=runtime.master)
    try:
        with hold(cfg, runtime, scheduled_lr) as start:  # one writer: rank 0 locks RUN until the end
            status = 0 if start.finished else train(start.cfg, runtime, data, stop, probe, why)
    except (BadInput, CheckpointError, LoaderError, RunFolderError, WandbUnavailable,
            batch_size.MicroBatchError) as e:  # raised alike on every rank
        if runtime.master:
            print(f"error: {e}", file=sys.stderr)
        record_exit(f"error: {e}", EXIT_BAD_INPUT)
        status = EXIT_BAD_INPUT
    finally:
        stop.restore()
    runtime.close()
    return status


def dry_run(cfg, world_size, gpu_memory, world_source, as_json=False):
    """The resolved config and the memory plan per rank for world_size ranks (--world-size, else
    torchrun's WORLD_SIZE, else 1), and with --gpu-memory (on CPU: the RAM available) the
    micro-batch auto picks there; traced under fake tensors: no data, no GPU, no allocation.
    --json: the plan as one JSON line. Exit 2 when it does not fit."""
    try:
        batch_size.sequences_per_rank(cfg.total_batch_size, cfg.seq_len, world_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cfg, lines, plan, fits = dry_run_plan(cfg, world_size, gpu_memory, world_source)
    status = EXIT_BAD_INPUT if fits is False else 0
    if as_json:
        print(json.dumps(plan))
        return status
    tokens_per_micro_step = cfg.micro_batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % tokens_per_micro_step:
        print(f"error: --total-batch-size {cfg.total_batch_size} is not divisible by micro-batch "
              f"{cfg.micro_batch_size} x --seq-len {cfg.seq_len} x {world_size} ranks; change "
              f"--micro-batch-size (or use auto)", file=sys.stderr)
        return EXIT_BAD_INPUT
    accumulation = cfg.total_batch_size // tokens_per_micro_step
    # what it assumed first; the ~50 values of the config only on request
    print("\n".join([lines[0], f"{accumulation} accumulation step{'s' * (accumulation != 1)} x "
                                f"micro-batch {cfg.micro_batch_size} x {cfg.seq_len} tokens x "
                                f"{world_size} rank{'s' * (world_size != 1)} = "
                                f"{cfg.total_batch_size:,} tokens a step", *lines[1:],
                      "every resolved value: python -m trainer.config with the same flags"]))
    return status


def prepare_data(cfg, runtime):
    """Loaders, tokenizer and the input checks that need no process group (so a bad flag or
    shard folder fails at once, with the same message on every rank)."""
    tokens_per_micro_step = cfg.micro_batch_size * cfg.seq_len * runtime.world_size
    if cfg.total_batch_size % tokens_per_micro_step:
        raise BadInput(
            f"--total-batch-size {cfg.total_batch_size} is not divisible by --micro-batch-size "
            f"{cfg.micro_batch_size} x --seq-len {cfg.seq_len} x {runtime.world_size} ranks = "
            f"{tokens_per_micro_step}; change --micro-batch-size (or use auto) or the number of ranks")
    grad_accum = cfg.total_batch_size // tokens_per_micro_step
    train_loader = ShardLoader(cfg.data, "train", cfg.micro_batch_size, cfg.seq_len, grad_accum,
                               runtime.rank, runtime.world_size, shuffle=cfg.shuffle, seed=cfg.seed)
    val_loader = None
    if cfg.eval_every:
        try:
            val_loader = ValLoader(cfg.data, cfg.micro_batch_size, cfg.seq_len, runtime.rank,
                                   runtime.world_size, tokens=cfg.val_tokens)
        except LoaderError as e:
            raise BadInput(f"{e} (or pass --eval-every 0 to train without validation)") from None
    tokenizer = load_tokenizer(cfg.data)  # the preflight checked it loads and fits --vocab-size
    return dict(grad_accum=grad_accum, train_loader=train_loader, val_loader=val_loader,
                tokenizer=tokenizer)


def train(cfg, runtime, data, stop, probe_micro_batch=False, micro_batch_why=""):
    master, device = runtime.master, runtime.device
    out_dir = Path(cfg.out_dir)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    amp_dtype, precision = autocast_dtype(cfg.dtype, device)
    # fp16 needs the loss scaled so small gradients do not underflow; a no-op otherwise
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    if probe_micro_batch:
        cfg, data, micro_batch_why = fit_micro_batch(cfg, runtime, amp_dtype, data)
    model, parallel, optimizer = build(cfg, runtime, amp_dtype, verbose=master)
    grad_accum, train_loader = data["grad_accum"], data["train_loader"]
    torch.manual_seed(cfg.seed + runtime.rank)  # then per-rank randomness (dropout)

    start_step, wandb_run_id = 0, None
    resume_path = choose_resume(cfg.resume, out_dir, runtime)
    if resume_path is not None:
        start_step, wandb_run_id = restore_training_state(resume_path, parallel, optimizer, scaler,
                                                          train_loader, cfg.recipe)
        if master:
            print(f"resuming from {resume_path} at step {start_step}")
    elif cfg.init_from:
        load_pretrained(parallel, cfg.init_from, master)
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.json")
    metrics = MetricsLogger(out_dir, cfg.to_dict(), runtime.rank, wandb_enabled=cfg.wandb,
                            wandb_project=cfg.wandb_project, wandb_run_name=cfg.wandb_run_name or None,
                            wandb_run_id=wandb_run_id)
    record_start(cfg, runtime, parallel, optimizer, metrics, grad_accum, len(train_loader),
                 start_step, precision, micro_batch_why)
    evaluator = Evaluator(cfg, parallel, data["val_loader"], data["tokenizer"], metrics, amp_dtype,
                          StopPoll(stop, runtime))
    peak_flops = cfg.peak_flops or (peak_flops_of(torch.cuda.get_device_name(device))
                                    if device.type == "cuda" else None)
    throughput = Throughput(cfg.total_batch_size, model.flops_per_token(cfg.seq_len) * cfg.total_batch_size,
                            peak_flops, runtime.world_size, start_step, cfg.max_steps)

    saved_step = start_step if resume_path is not None else None  # its checkpoint is on disk
    for step in range(start_step, cfg.max_steps + 1):
        last_step = step == cfg.max_steps
        # evaluations see the model after `step` updates; a stop request ends them early, on every
        # rank alike, and the checkpoint follows at once (the resumed run evaluates `step` again)
        if not evaluator.run(step, last_step):
            # before the first step there is nothing to save: the same command starts over (and
            # torch's optimizer state dict would give AdamW a step count of 1 before any step)
            if step not in (0, saved_step):
                checkpoint(out_dir, step, parallel, optimizer, scaler, train_loader, cfg, metrics)
            return stopped(stop, step, runtime, metrics)
        if last_step:
            break

        t0 = time.time()
        lr = set_schedule(optimizer, step, cfg)  # the learning rates (and Muon's momentum) of `step`
        loss_accum, norm = optimization_step(parallel, optimizer, scaler, train_loader, grad_accum,
                                             cfg.grad_clip, amp_dtype)
        # one collective for the mean loss and the stop vote: every rank agrees on stopping
        stats = torch.stack([loss_accum.float(), torch.tensor(float(stop.requested()), device=device)])
        loss_sum, stop_votes = runtime.all_reduce(stats).tolist()
        loss_value, stop_now = loss_sum / runtime.world_size, stop_votes > 0
        speed = throughput.update(step, time.time() - t0)
        metrics.log({"step": step, "loss": loss_value, "lr": lr, "norm": norm.item(), **speed,
                     "epoch": train_loader.epoch})
        if master and (step % cfg.log_every == 0 or step + 1 == cfg.max_steps or stop_now):
            mfu_text = f" | mfu {100 * speed['mfu']:.1f}%" if speed["mfu"] is not None else ""
            print(f"step {step:5d} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
                  f"{speed['ms']:.1f} ms | {speed['tokens_per_s']:,.0f} tok/s{mfu_text} | "
                  f"eta {format_eta(speed['eta'])}")

        done = step + 1
        if stop_now or done == cfg.max_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            checkpoint(out_dir, done, parallel, optimizer, scaler, train_loader, cfg, metrics)
            saved_step = done
        if stop_now:
            return stopped(stop, done, runtime, metrics)

    if master:
        finish_run(out_dir, cfg, metrics)
    metrics.finish()
    return 0


def checkpoint(out_dir, done, parallel, optimizer, scaler, train_loader, cfg, metrics):
    """The checkpoint after `done` steps (every rank takes part, rank 0 writes); its save time
    goes to log.jsonl at the step it follows, so a resume from it keeps the line."""
    t_save = time.time()
    path = save_training_state(out_dir, done, parallel, optimizer, scaler, train_loader, cfg,
                               metrics.run_id)
    save_s = time.time() - t_save  # what a stop on SIGTERM needs before KillWait's SIGKILL
    metrics.log({"step": done - 1, "checkpoint_s": save_s})
    if parallel.runtime.master:
        print(f"saved {path} in {save_s:.1f} s")


def stopped(stop, done, runtime, metrics):
    """After the stop checkpoint at `done` steps: rank 0 says so and removes RUN/STOP; exit 3."""
    since = stop.seconds_since_signal()
    since = f" ({since:.1f} s after the signal)" if since is not None else ""
    saved = f"checkpoint at step {done} saved" if done else "nothing to save before the first step"
    message = (f"stop requested ({stop.reason or 'by another rank'}): {saved}, exiting with status "
               f"{EXIT_STOPPED}{since}; run the same command to resume")
    if runtime.master:
        stop.acknowledge()
        print(message)
    record_exit(message, EXIT_STOPPED)
    metrics.finish()
    return EXIT_STOPPED


def optimization_step(parallel, optimizer, scaler, train_loader, grad_accum, grad_clip, amp_dtype):
    """One step over the global batch: grad_accum micro-batches, clip, the optimizers at the
    learning rates set on them. Returns (this rank's mean loss, the global gradient norm)."""
    device = parallel.runtime.device
    parallel.zero_grad(optimizer)
    loss_accum = torch.zeros((), device=device)
    for micro_step in range(grad_accum):
        x, y = train_loader.next_batch()
        if device.type == "cuda":  # pinned host memory: the copy overlaps the compute
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # gradients are reduced across ranks on the last micro-step only
        with parallel.gradient_sync(micro_step == grad_accum - 1):
            with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
                # the logits (B x T x vocab) are not kept: backward does not need them
                loss = parallel.train_module(x, y)[1]
            # each micro-batch's loss is a mean: scale so the gradients sum to the global mean
            loss = loss / grad_accum
            loss_accum += loss.detach()
            scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients
    norm = parallel.clip_grad_norm_(grad_clip or float("inf"))
    scaler.step(optimizer)
    scaler.update()
    return loss_accum, norm


def load_pretrained(parallel, source, verbose):
    """--init-from: a Hugging Face GPT-2's weights into every rank's model (its shards under FSDP)."""
    from models.hf import hf_weights  # imports transformers: seconds

    try:
        _, state = hf_weights(source)
    except ValueError as e:
        raise BadInput(f"--init-from {source}: {e}") from None
    parallel.load_full_state(None, {"model": state})
    if verbose:
        print(f"initialized from the weights of {source}")


def fit_micro_batch(cfg, runtime, amp_dtype, data):
    """--micro-batch-size auto: the largest micro-batch whose training step fits on every rank;
    (cfg, data loaders, why) for it. On CUDA tried on a throwaway copy of the model built as the
    run builds it (uncompiled; without DDP, see batch_size.try_training_step); on CPU planned."""
    micro_batch, why = _probe(cfg, runtime, amp_dtype)
    batch_size.release_memory(runtime.device)  # the copy's FSDP state holds reference cycles
    if micro_batch != cfg.micro_batch_size:
        cfg = replace(cfg, micro_batch_size=micro_batch)
        data = prepare_data(cfg, runtime)
    return cfg, data, why


def _probe(cfg, runtime, amp_dtype):
    """(micro-batch, why) from trying steps on the copy, which is freed on return; where no
    out-of-memory error comes before the machine swaps, from the memory plan in host RAM."""
    if runtime.device.type not in batch_size.PROBED_DEVICES:
        planned = cfg if amp_dtype is not None else replace(cfg, dtype="float32")  # fp32 activations
        return batch_size.choose_in_host_memory(cfg, runtime, lambda b: memory_plan(
            replace(planned, micro_batch_size=b), runtime.world_size)["total"], *host_memory_share())
    per_rank = batch_size.sequences_per_rank(cfg.total_batch_size, cfg.seq_len, runtime.world_size)
    parallel, optimizer = build_probe_copy(cfg, runtime, amp_dtype)
    keep_gradients = runtime.distributed and not cfg.fsdp  # DDP's buckets

    def fits(b):
        micro_steps = min(2, per_rank // b)  # accumulating steps hold gradients between micro-steps
        batch_size.try_training_step(parallel, optimizer, b, micro_steps, cfg.seq_len,
                                     cfg.vocab_size, amp_dtype, keep_gradients)

    with batch_size.headroom(runtime.device):
        return batch_size.choose(replace(cfg, micro_batch_size="auto"), runtime, fits)


def build_probe_copy(cfg, runtime, amp_dtype):
    """(ParallelModel, optimizers) of the model the run builds, sharded alike under FSDP, uncompiled,
    built on the meta device and left uninitialised: its values do not matter, and drawing
    them takes minutes for the largest GPT-2 on CPU. The votes (batch_size) before FSDP's
    collectives."""
    with torch.device("meta"):
        model = build_model(cfg.model_config())
    wrap_runtime = runtime if cfg.fsdp else replace(runtime, world_size=1)
    parallel = ParallelModel(model, wrap_runtime, fsdp=cfg.fsdp,
                             activation_checkpointing=cfg.activation_checkpointing,
                             param_dtype=amp_dtype if runtime.device.type == "cuda" else None,
                             draw_weights=False)
    batch_size.vote_before_collectives(parallel.module, runtime)
    optimizer = build_optimizer(model, cfg, runtime.device)
    return parallel, optimizer


def record_start(cfg, runtime, parallel, optimizer, metrics, grad_accum, steps_per_epoch,
                 start_step, precision, micro_batch_why):
    """What this start of the run is, printed (rank 0) and as log.jsonl's {"setup": ...} record."""
    parameters = parallel.module.num_params()
    state_bytes = parallel.state_bytes(optimizer)
    plan = memory_plan(cfg, runtime.world_size, parameters)
    if runtime.master:
        print(json.dumps(cfg.to_dict(), indent=1))
        ranks = (f"{runtime.world_size} ranks ({'FSDP' if cfg.fsdp else 'DDP'})"
                 if runtime.distributed else "1 process")  # the parameters: describe_plan's line
        print(f"{ranks} x {grad_accum} accumulation step{'s' * (grad_accum != 1)} x "
              f"{cfg.micro_batch_size} x {cfg.seq_len} tokens = {cfg.total_batch_size:,} tokens/step; "
              f"{steps_per_epoch} steps/epoch; {precision}")
        print(f"micro-batch {cfg.micro_batch_size}: {micro_batch_why}")
        print("\n".join(describe_plan({**plan, **state_bytes}, cfg, runtime.world_size)))
    metrics.log_setup({"world_size": runtime.world_size, "parallelism": "fsdp" if cfg.fsdp else "ddp",
                       "fsdp": cfg.fsdp, "parameters": parameters,
                       "devices": runtime.device_names(), "precision": precision,
                       "start_step": start_step, "command": sys.argv, "versions": software_versions(),
                       "grad_accum": grad_accum, "micro_batch_size": cfg.micro_batch_size,
                       "state_bytes_per_rank": state_bytes,
                       "activation_bytes_estimate": plan["activations"]})


def finish_run(out_dir, cfg, metrics):
    """Rank 0 after the last step: RUN/DONE, then the run report (and its wandb summary)."""
    (out_dir / "DONE").write_text(f"{cfg.max_steps}\n")
    print(f"done: {cfg.max_steps} steps; wrote {out_dir / 'DONE'}")
    try:  # the run is done whatever happens here: `python -m trainer.report` can redo it
        report_path, report = write_report(out_dir)
    except Exception as e:
        print(f"warning: no run report ({type(e).__name__}: {e}); python -m trainer.report {out_dir}")
    else:
        metrics.summarize(wandb_summary(report))
        print(f"report: {report_path}")


if __name__ == "__main__":
    sys.exit(main())
