"""The measurements of bench/gpu.py, one function a row, each through the trainer's own code
(ParallelModel, train_gpt2's prepare_data, optimization_step and fit_micro_batch,
save_training_state and restore_training_state). A row returns a dict of figures or raises."""

import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import torch
from torch.distributed.fsdp import FSDPModule

import train_gpt2
from models.gpt2 import GPT, GPTConfig
from trainer import batch_size
from trainer.checkpoint import restore_training_state, save_training_state
from trainer.config import parse_config
from trainer.distributed import ParallelModel, Runtime, autocast_dtype
from trainer.memory import largest_fitting_micro_batch, memory_plan, traced
from trainer.metrics import peak_flops_of

GiB = 2**30
TINY = ["--preset", "cpu-smoke", "--vocab-size", "512", "--n-layer", "2", "--n-head", "2",
        "--n-embd", "32", "--block-size", "128", "--seq-len", "64"]
PRESETS = ("gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m")


@dataclass
class Settings:
    device: torch.device
    model: list  # train_gpt2.py flags of the throughput, fp16 and HellaSwag model
    presets: dict  # name -> flags, for the memory and checkpoint rows
    probe_presets: tuple  # of the probe rows and the FSDP checkpoint rows: the smallest, largest
    micro_batch: int  # of the throughput rows; 0: the fit table's for this GPU
    steps: int  # timed steps of a throughput row, after `warmup` untimed ones
    warmup: int
    hellaswag_examples: int
    checkpoint: str  # a trained model for the HellaSwag row, or ""
    data: Path  # random tokens for the loaders (see gpu.write_random_shards)
    out_dir: Path  # where the checkpoint rows write (and delete) their files

    @classmethod
    def for_run(cls, args, data, out_dir):
        if args.smoke:
            return cls(torch.device("cpu"), TINY, {"tiny": TINY}, ("tiny",), 4, 3, 1, 24,
                       args.checkpoint, data, out_dir)
        names = sorted(set(args.presets.split(",")), key=PRESETS.index)
        return cls(torch.device("cuda", 0), ["--preset", "gpt2-124m"],
                   {name: ["--preset", name] for name in names}, tuple(dict.fromkeys((names[0], names[-1]))),
                   0, 10, 3, 400, args.checkpoint, data, out_dir)

    def config(self, flags, **changes):
        """A TrainConfig from flags (bf16, eager, DDP unless changed) on this device and data."""
        cfg = parse_config(flags + ["--data", str(self.data), "--device", self.device.type,
                                    "--eval-every", "0", "--hellaswag-every", "0"])
        return replace(cfg, **{"dtype": "bfloat16", "compile": False, **changes})

    def fit_table_micro_batch(self, cfg):
        """The micro-batch of preflight's fit table for this GPU's memory (one rank)."""
        if self.device.type != "cuda":
            return self.micro_batch
        memory = torch.cuda.get_device_properties(self.device).total_memory
        return largest_fitting_micro_batch(cfg, 1, memory)


class WorldOfOne(Runtime):
    """One rank in a real process group: DDP and FSDP wrap the model as they do on N GPUs (at
    world size 1 FSDP skips its gathers and reductions: no communication is measured)."""

    @property
    def distributed(self):
        return True


def build(cfg, runtime):
    """(ParallelModel, optimizer, GradScaler, autocast dtype) for cfg, as train() builds them;
    the weights are initialised on the device (the 1.5B model in seconds, not minutes)."""
    device = runtime.device
    amp_dtype, _ = autocast_dtype(cfg.dtype, device)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = GPT(GPTConfig(**cfg.model_config()))
    parallel = ParallelModel(model, runtime, fsdp=cfg.fsdp, compile=cfg.compile,
                             activation_checkpointing=cfg.activation_checkpointing,
                             param_dtype=amp_dtype if device.type == "cuda" else None)
    optimizer = model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps,
                                          device.type, verbose=False)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return parallel, optimizer, scaler, amp_dtype


def train_steps(cfg, runtime, n, steady_peak=False):
    """n training steps of cfg through train_gpt2's own step; (seconds per step, last loss,
    last norm, parallel, optimizer, scaler, data). steady_peak: the GPU's peak counts from the
    second step on (the first makes AdamW's state and compiles)."""
    parallel, optimizer, scaler, amp_dtype = build(cfg, runtime)
    data = train_gpt2.prepare_data(cfg, runtime)
    seconds = []
    for _ in range(n):
        t0 = time.perf_counter()
        loss, norm = train_gpt2.optimization_step(parallel, optimizer, scaler, data["train_loader"],
                                                  data["grad_accum"], cfg.grad_clip, amp_dtype)
        loss, norm = loss.item(), norm.item()  # waits for the GPU
        seconds.append(time.perf_counter() - t0)
        if steady_peak and len(seconds) == 1 and runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(runtime.device)
    return seconds, loss, norm, parallel, optimizer, scaler, data


def throughput(s, compiled, fsdp, checkpointing):
    cfg = s.config(s.model, compile=compiled, fsdp=fsdp, activation_checkpointing=checkpointing)
    micro = s.micro_batch or s.fit_table_micro_batch(replace(cfg, fsdp=False, activation_checkpointing=False))
    cfg = replace(cfg, micro_batch_size=micro, total_batch_size=2 * micro * cfg.seq_len)  # 2 micro-steps
    seconds, loss, _, parallel, *_ = train_steps(cfg, WorldOfOne(0, 0, 1, s.device), s.warmup + s.steps)
    step_s = sum(seconds[s.warmup:]) / s.steps
    tokens_per_s = cfg.total_batch_size / step_s
    peak = peak_flops_of(torch.cuda.get_device_name(s.device)) if s.device.type == "cuda" else None
    flops = parallel.module.flops_per_token(cfg.seq_len) * tokens_per_s
    return {"tokens_per_s": round(tokens_per_s), "mfu": flops / peak if peak else None,
            "ms_per_step": 1000 * step_s, "first_step_s": seconds[0], "micro_batch": micro,
            "seq_len": cfg.seq_len, "loss": loss, **peak_memory(s.device)}


def memory(s, name, compiled):
    cfg = s.config(s.presets[name], compile=compiled)
    micro = s.fit_table_micro_batch(cfg)
    if not micro:
        raise RuntimeError("memory_plan fits no micro-batch of this preset on this GPU (DDP)")
    cfg = replace(cfg, micro_batch_size=micro, total_batch_size=micro * cfg.seq_len)
    _, loss, _, parallel, *_ = train_steps(cfg, Runtime(0, 0, 1, s.device), 3, steady_peak=True)
    plan = memory_plan(cfg, 1, parallel.module.num_params())
    trace = traced(replace(cfg, compile=False), 1, s.device.type)  # eager: see memory_trace.py
    measured = peak_memory(s.device)["peak_gib"]
    return {"micro_batch": micro, "seq_len": cfg.seq_len, "peak_gib": measured,
            "traced_gib": trace["peak_bytes"] / GiB, "plan_gib": plan["total"] / GiB,
            "plan_state_gib": plan["state"] / GiB, "plan_activations_gib": plan["activations"] / GiB,
            "peak_over_traced": measured and measured * GiB / trace["peak_bytes"],
            "peak_over_plan": measured and measured * GiB / plan["total"], "loss": loss}


def checkpoint(s, name, fsdp=False):
    """A training checkpoint after one step (so AdamW's state exists), as the trainer saves it;
    under FSDP (a one-rank group: its gather to rank 0's CPU) also loaded into a fresh run."""
    runtime = WorldOfOne(0, 0, 1, s.device) if fsdp else Runtime(0, 0, 1, s.device)
    cfg = s.config(s.presets[name], fsdp=fsdp)
    micro = s.fit_table_micro_batch(replace(cfg, fsdp=False)) or 1
    cfg = replace(cfg, micro_batch_size=micro, total_batch_size=micro * cfg.seq_len, keep_checkpoints=0)
    _, _, _, parallel, optimizer, scaler, data = train_steps(cfg, runtime, 1)
    t0 = time.perf_counter()
    path = save_training_state(s.out_dir, 1, parallel, optimizer, scaler, data["train_loader"], cfg, None)
    seconds = time.perf_counter() - t0
    size = path.stat().st_size
    row = {"save_s": seconds, "gb": size / 1e9, "gb_per_s": size / 1e9 / seconds,
           "parameters": parallel.module.num_params()}
    if fsdp:
        del parallel, optimizer, scaler, data
        release(s.device)
        parallel, optimizer, scaler, _ = build(cfg, runtime)
        loader = train_gpt2.prepare_data(cfg, runtime)["train_loader"]
        t0 = time.perf_counter()
        step, _ = restore_training_state(path, parallel, optimizer, scaler, loader)
        row.update(load_s=time.perf_counter() - t0, resumed_step=step)
    path.unlink()
    return row


def probe(s, name, fsdp=False):
    """--micro-batch-size auto as train_gpt2.main and train() run it, then one real step (two
    micro-steps) at the micro-batch picked. Under FSDP (a one-rank group: world size 1 is what
    one GPU gives) the row counts the votes and the resets of FSDP's state after a failed try."""
    runtime = WorldOfOne(0, 0, 1, s.device) if fsdp else Runtime(0, 0, 1, s.device)
    cfg = s.config(s.presets[name], micro_batch_size="auto", fsdp=fsdp)
    start, _ = batch_size.choose(cfg, runtime)  # main()'s arithmetic, before any model
    cfg = replace(cfg, micro_batch_size=start)
    amp_dtype, _ = autocast_dtype(cfg.dtype, s.device)
    data = train_gpt2.prepare_data(cfg, runtime)
    votes = mock.patch.object(batch_size, "agree", wraps=batch_size.agree)
    resets = mock.patch.object(FSDPModule, "reset_iter_state", autospec=True,
                               side_effect=FSDPModule.reset_iter_state)
    t0 = time.perf_counter()
    with votes as agree, resets as reset_iter_state:
        cfg, data, why = train_gpt2.fit_micro_batch(cfg, runtime, amp_dtype, data)
    probe_s = time.perf_counter() - t0
    del data
    release(s.device)
    picked = cfg.micro_batch_size
    seconds, loss, *_ = train_steps(replace(cfg, total_batch_size=2 * picked * cfg.seq_len), runtime, 1)
    fit_table = s.fit_table_micro_batch(replace(cfg, fsdp=False)) if s.device.type == "cuda" else None
    row = {"picked": picked, "probe_s": probe_s, "fit_table": fit_table, "step_s": seconds[0],
           "loss": loss, **peak_memory(s.device), "why": why}
    if fsdp:
        row.update(world_size=1, votes=agree.call_count, fsdp_resets=reset_iter_state.call_count)
    return row


def fp16(s):
    cfg = s.config(s.model, dtype="float16")
    micro = s.micro_batch or 8
    cfg = replace(cfg, micro_batch_size=micro, total_batch_size=micro * cfg.seq_len)
    seconds, loss, norm, _, _, scaler, _ = train_steps(cfg, Runtime(0, 0, 1, s.device), 1)
    # the scale starts at 2**16 and halves on a step whose gradients overflowed (then skipped)
    return {"loss": loss, "norm": norm, "scale": scaler.get_scale(), "step_s": seconds[0]}


def peak_memory(device):
    """{"peak_gib": the most GPU memory allocated since the measurement began} (None on CPU)."""
    if device.type != "cuda":
        return {"peak_gib": None}
    return {"peak_gib": torch.cuda.max_memory_allocated(device) / GiB}


def release(device):
    """Drop what a measurement left: compiled graphs, tensors, cached GPU blocks, the peak."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
