"""Train GPT-2 on token shards: one process, or one per device under torchrun (DDP or FSDP).

    python train_gpt2.py --preset cpu-smoke --data data/edu_fineweb10B   # tiny model, CPU, seconds
    torchrun --standalone --nproc_per_node=8 train_gpt2.py               # GPT-2 124M, 10B tokens

The defaults are build-nanogpt's GPT-2 124M recipe (see trainer/config.py). Every flag: --help.
This file is the recipe: build, wrap, then loop (evaluate, forward, backward, step, log,
checkpoint). Each concern lives in its own module of trainer/: config, distributed (device,
process group, DDP/FSDP), checkpoint, evaluation, metrics, signals.

Run folder (--out-dir): config.json, log.jsonl (one JSON object a line: one "setup" record per
start, train steps, val loss, HellaSwag, samples), ckpt_{step:07d}.pt, DONE once the last step is
finished, then report.md and report.json (trainer/report.py). Resuming is automatic (--resume
auto): rank 0 picks the newest checkpoint in the run folder and the run continues as if never
interrupted, on any number of ranks, DDP or FSDP.

Every start first runs the preflight checks (trainer/preflight.py; alone: --preflight).

Exit status: 0 all steps done; 2 bad input (one line says what to do); 3 stopped early by
SIGUSR1, SIGTERM, SIGINT or a RUN/STOP file, after finishing the current step and saving a
checkpoint (all ranks agree through a collective every step, so none hangs): run the same
command to resume.
"""

import gc
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pipeline.tokenizer import load_tokenizer
from shards.loader import LoaderError, ShardLoader, ValLoader
from trainer import batch_size
from trainer.checkpoint import (CheckpointError, choose_resume, restore_training_state,
                                save_training_state)
from trainer.config import (dry_run_target, parse_config, save_config, wants_dry_run,
                            wants_preflight)
from trainer.distributed import Runtime, autocast_dtype, build
from trainer.environment import software_versions
from trainer.evaluation import Evaluator
from trainer.metrics import MetricsLogger, Throughput, WandbUnavailable, format_eta, peak_flops_of
from trainer.memory import describe_plan, dry_run_plan, memory_plan
from trainer.preflight import preflight
from trainer.report import wandb_summary, write_report
from trainer.signals import StopRequest

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3


class BadInput(Exception):
    """Reported as one line, exit status 2."""


def get_lr(step, cfg):
    """Linear warmup for warmup_steps, then cosine decay from lr to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    decay_ratio = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


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
        # on CUDA "auto" is decided by trying steps (train()); here, and for the data checks,
        # by arithmetic
        probe = cfg.micro_batch_size == "auto" and runtime.device.type in batch_size.PROBED_DEVICES
        micro_batch, why = batch_size.choose(cfg, runtime)
        cfg = replace(cfg, micro_batch_size=micro_batch)
        data = prepare_data(cfg, runtime)
    except (BadInput, LoaderError, ValueError) as e:
        if int(os.environ.get("RANK", 0)) == 0:  # every rank fails alike; one says so
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    runtime.init_process_group(cfg.dist_timeout_min)
    # from here on a stop request means: checkpoint and exit 3
    stop = StopRequest(Path(cfg.out_dir) / "STOP", announce=runtime.master)
    try:
        status = train(cfg, runtime, data, stop, probe, why)
    except (BadInput, CheckpointError, LoaderError, WandbUnavailable) as e:  # raised alike on every rank
        if runtime.master:
            print(f"error: {e}", file=sys.stderr)
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
    if as_json:
        print(json.dumps(plan))
    else:
        print(json.dumps(cfg.to_dict(), indent=1))
        print("\n".join(lines))
    return EXIT_BAD_INPUT if fits is False else 0


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
                                                          train_loader)
        if master:
            print(f"resuming from {resume_path} at step {start_step}")
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.json")
        (out_dir / "DONE").unlink(missing_ok=True)
        trim_log(out_dir / "log.jsonl", start_step)
    metrics = MetricsLogger(out_dir, cfg.to_dict(), runtime.rank, wandb_enabled=cfg.wandb,
                            wandb_project=cfg.wandb_project, wandb_run_name=cfg.wandb_run_name or None,
                            wandb_run_id=wandb_run_id)
    record_start(cfg, runtime, parallel, optimizer, metrics, grad_accum, len(train_loader),
                 start_step, precision, micro_batch_why)
    evaluator = Evaluator(cfg, parallel, data["val_loader"], data["tokenizer"], metrics, amp_dtype)
    peak_flops = cfg.peak_flops or (peak_flops_of(torch.cuda.get_device_name(device))
                                    if device.type == "cuda" else None)
    throughput = Throughput(cfg.total_batch_size, model.flops_per_token(cfg.seq_len) * cfg.total_batch_size,
                            peak_flops, runtime.world_size, start_step, cfg.max_steps)

    for step in range(start_step, cfg.max_steps + 1):
        last_step = step == cfg.max_steps
        evaluator.run(step, last_step)  # evaluations see the model after `step` updates
        if last_step:
            break

        t0 = time.time()
        lr = get_lr(step, cfg)
        loss_accum, norm = optimization_step(parallel, optimizer, scaler, train_loader, grad_accum,
                                             lr, cfg.grad_clip, amp_dtype)
        # one collective for the mean loss and the stop vote: every rank agrees on stopping
        stats = torch.stack([loss_accum.float(), torch.tensor(float(stop.requested()), device=device)])
        loss_sum, stop_votes = runtime.all_reduce(stats).tolist()
        loss_value, stop_now = loss_sum / runtime.world_size, stop_votes > 0
        speed = throughput.update(step, time.time() - t0)
        metrics.log({"step": step, "loss": loss_value, "lr": lr, "norm": norm.item(), **speed,
                     "epoch": train_loader.epoch})
        if master:
            mfu_text = f" | mfu {100 * speed['mfu']:.1f}%" if speed["mfu"] is not None else ""
            print(f"step {step:5d} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
                  f"{speed['ms']:.1f} ms | {speed['tokens_per_s']:,.0f} tok/s{mfu_text} | "
                  f"eta {format_eta(speed['eta'])}")

        done = step + 1
        if stop_now or done == cfg.max_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            t_save = time.time()
            path = save_training_state(out_dir, done, parallel, optimizer, scaler, train_loader, cfg,
                                       metrics.run_id)
            save_s = time.time() - t_save  # what a stop on SIGTERM needs before KillWait's SIGKILL
            metrics.log({"step": step, "checkpoint_s": save_s})  # the step it follows: kept on resume
            if master:
                print(f"saved {path} in {save_s:.1f} s")
        if stop_now:
            if master:
                stop.acknowledge()
                since = stop.seconds_since_signal()
                since = f" ({since:.1f} s after the signal)" if since is not None else ""
                print(f"stop requested ({stop.reason or 'by another rank'}): checkpoint at step "
                      f"{done} saved, exiting with status {EXIT_STOPPED}{since}; run the same command "
                      f"to resume")
            metrics.finish()
            return EXIT_STOPPED

    if master:
        finish_run(out_dir, cfg, metrics)
    metrics.finish()
    return 0


def optimization_step(parallel, optimizer, scaler, train_loader, grad_accum, lr, grad_clip, amp_dtype):
    """One step over the global batch: grad_accum micro-batches, clip, AdamW at `lr`. Returns
    (this rank's mean loss, the global gradient norm)."""
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
                _, loss = parallel.train_module(x, y)
            # each micro-batch's loss is a mean: scale so the gradients sum to the global mean
            loss = loss / grad_accum
            loss_accum += loss.detach()
            scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients
    norm = parallel.clip_grad_norm_(grad_clip or float("inf"))
    for group in optimizer.param_groups:
        group["lr"] = lr
    scaler.step(optimizer)
    scaler.update()
    return loss_accum, norm


def fit_micro_batch(cfg, runtime, amp_dtype, data):
    """--micro-batch-size auto on CUDA: the largest micro-batch whose training step fits on every
    GPU; (cfg, data loaders, why) for it. Tried on a throwaway copy of the model built as the
    run builds it (uncompiled; without DDP, whose reduction buckets are the run's gradients)."""
    micro_batch, why = _probe(cfg, runtime, amp_dtype)
    gc.collect()  # the copy's FSDP state holds reference cycles: free its memory before the run's
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    if micro_batch != cfg.micro_batch_size:
        cfg = replace(cfg, micro_batch_size=micro_batch)
        data = prepare_data(cfg, runtime)
    return cfg, data, why


def _probe(cfg, runtime, amp_dtype):
    """(micro-batch, why) from trying steps on the copy, which is freed on return."""
    per_rank = batch_size.sequences_per_rank(cfg.total_batch_size, cfg.seq_len, runtime.world_size)
    wrap_runtime = runtime if cfg.fsdp else replace(runtime, world_size=1)
    _, parallel, optimizer = build(replace(cfg, compile=False), wrap_runtime, amp_dtype)
    batch_size.vote_before_collectives(parallel.module, runtime)

    def fits(b):
        micro_steps = min(2, per_rank // b)  # accumulating steps hold gradients between micro-steps
        batch_size.try_training_step(parallel, optimizer, b, micro_steps, cfg.seq_len,
                                     cfg.vocab_size, amp_dtype)

    return batch_size.choose(replace(cfg, micro_batch_size="auto"), runtime, fits)


def record_start(cfg, runtime, parallel, optimizer, metrics, grad_accum, steps_per_epoch,
                 start_step, precision, micro_batch_why):
    """What this start of the run is, printed (rank 0) and as log.jsonl's {"setup": ...} record."""
    parameters = parallel.module.num_params()
    state_bytes = parallel.state_bytes(optimizer)
    plan = memory_plan(cfg, runtime.world_size, parameters)
    if runtime.master:
        print(json.dumps(cfg.to_dict(), indent=1))
        print(f"{parameters:,} parameters; {runtime.world_size} rank(s) "
              f"{'FSDP' if cfg.fsdp else 'DDP' if runtime.distributed else ''} x {grad_accum} "
              f"accumulation step(s) x {cfg.micro_batch_size} x {cfg.seq_len} tokens = "
              f"{cfg.total_batch_size:,} tokens/step; {steps_per_epoch} steps/epoch; {precision}")
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


def trim_log(path, step):
    """Drop log.jsonl lines of steps >= `step` (a resumed run logs them again) and any line torn
    by a kill mid-write."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line).get("step", -1) < step:
                keep.append(line)
        except ValueError:
            pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
