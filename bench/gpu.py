"""What only a GPU can show, in one command (~5 minutes on one H100/H200-class GPU):

    python bench/gpu.py                  # on the first CUDA GPU
    python bench/gpu.py --only memory,checkpoint --budget-min 3
    python bench/gpu.py --smoke          # the same code on CPU with a tiny model (the suite runs it)

Measured with the trainer's own code (ParallelModel, configure_optimizer, train_gpt2's
prepare_data, optimization_step and fit_micro_batch, save_training_state):
- throughput: gpt2-124m, T=1024, bf16: tokens/s and MFU, eager vs compiled, DDP vs FSDP (in a
  process group of one rank, so both wrap the model as on N GPUs), with and without activation
  checkpointing; the first step (compilation) timed apart;
- memory: torch.cuda.max_memory_allocated of the steady steps (2 and 3: AdamW's state resident) of
  each preset at the fit table's micro-batch for this GPU (one process, bf16), eager and compiled,
  beside the traced plan (trainer/memory_trace.py) and the formula (trainer/memory.py);
- checkpoint: seconds to gather and write each preset's training checkpoint (on --out-dir);
- probe: the micro-batch --micro-batch-size auto picks, the probe's seconds, one step at it;
- fp16: one step of the float16 + GradScaler path;
- hellaswag: the ending chosen (acc_norm) in bf16 and in fp32, per example.

One JSON line per measurement as it ends ({"bench": "gpu", "row": ..., ...}), then a table. A
failure (an out-of-memory, anything) is a row with "error" and the next measurement runs; the
exit status is then 1. Needs torch, numpy and tiktoken only.
"""

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import train_gpt2  # noqa: E402
from models.gpt2 import GPT, GPTConfig  # noqa: E402
from shards.format import write_shard  # noqa: E402
from trainer import batch_size  # noqa: E402
from models.checkpoint import load_model  # noqa: E402
from trainer.checkpoint import save_training_state  # noqa: E402
from trainer.config import parse_config  # noqa: E402
from trainer.distributed import ParallelModel, Runtime, autocast_dtype  # noqa: E402
from trainer.metrics import peak_flops_of  # noqa: E402
from trainer.memory import largest_fitting_micro_batch, memory_plan, traced  # noqa: E402

GiB = 2**30
KINDS = ("throughput", "memory", "checkpoint", "probe", "fp16", "hellaswag")
TINY = ["--preset", "cpu-smoke", "--vocab-size", "512", "--n-layer", "2", "--n-head", "2",
        "--n-embd", "32", "--block-size", "128", "--seq-len", "64"]
HELLASWAG_FILE = REPO / "data" / "hellaswag" / "hellaswag_val.jsonl"


@dataclass
class Settings:
    device: torch.device
    model: list  # train_gpt2.py flags of the throughput, fp16 and HellaSwag model
    presets: dict  # name -> flags, for the memory, checkpoint and probe rows
    probe_presets: tuple
    micro_batch: int  # of the throughput rows; 0: the fit table's for this GPU
    steps: int  # timed steps of a throughput row, after `warmup` untimed ones
    warmup: int
    hellaswag_examples: int
    checkpoint: str  # a trained model for the HellaSwag row, or ""
    data: Path  # random tokens for the loaders (see write_random_shards)
    out_dir: Path  # where the checkpoint rows write (and delete) their files

    @classmethod
    def for_run(cls, args, data, out_dir):
        if args.smoke:
            return cls(torch.device("cpu"), TINY, {"tiny": TINY}, ("tiny",), 4, 3, 1, 24,
                       args.checkpoint, data, out_dir)
        presets = {name: ["--preset", name] for name in ("gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1558m")}
        return cls(torch.device("cuda", 0), ["--preset", "gpt2-124m"], presets, ("gpt2-124m", "gpt2-1558m"),
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
    """One rank in a real process group: DDP and FSDP wrap the model as they do on N GPUs."""

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


def checkpoint(s, name):
    """A training checkpoint after one step (so AdamW's state exists), as the trainer saves it."""
    cfg = s.config(s.presets[name])
    micro = s.fit_table_micro_batch(cfg) or 1
    cfg = replace(cfg, micro_batch_size=micro, total_batch_size=micro * cfg.seq_len, keep_checkpoints=0)
    _, _, _, parallel, optimizer, scaler, data = train_steps(cfg, Runtime(0, 0, 1, s.device), 1)
    t0 = time.perf_counter()
    path = save_training_state(s.out_dir, 1, parallel, optimizer, scaler, data["train_loader"], cfg, None)
    seconds = time.perf_counter() - t0
    size = path.stat().st_size
    path.unlink()
    return {"save_s": seconds, "gb": size / 1e9, "gb_per_s": size / 1e9 / seconds,
            "parameters": parallel.module.num_params()}


def probe(s, name):
    """--micro-batch-size auto as train_gpt2.main and train() run it, then one real step (two
    micro-steps) at the micro-batch picked."""
    runtime = Runtime(0, 0, 1, s.device)
    cfg = s.config(s.presets[name], micro_batch_size="auto")
    start, _ = batch_size.choose(cfg, runtime)  # main()'s arithmetic, before any model
    cfg = replace(cfg, micro_batch_size=start)
    amp_dtype, _ = autocast_dtype(cfg.dtype, s.device)
    data = train_gpt2.prepare_data(cfg, runtime)
    t0 = time.perf_counter()
    cfg, data, why = train_gpt2.fit_micro_batch(cfg, runtime, amp_dtype, data)
    probe_s = time.perf_counter() - t0
    del data
    release(s.device)
    picked = cfg.micro_batch_size
    seconds, loss, *_ = train_steps(replace(cfg, total_batch_size=2 * picked * cfg.seq_len), runtime, 1)
    fit_table = s.fit_table_micro_batch(cfg) if s.device.type == "cuda" else None
    return {"picked": picked, "probe_s": probe_s, "fit_table": fit_table,
            "step_s": seconds[0], "loss": loss, **peak_memory(s.device), "why": why}


def fp16(s):
    cfg = s.config(s.model, dtype="float16")
    micro = s.micro_batch or 8
    cfg = replace(cfg, micro_batch_size=micro, total_batch_size=micro * cfg.seq_len)
    seconds, loss, norm, _, _, scaler, _ = train_steps(cfg, Runtime(0, 0, 1, s.device), 1)
    # the scale starts at 2**16 and halves on a step whose gradients overflowed (then skipped)
    return {"loss": loss, "norm": norm, "scale": scaler.get_scale(), "step_s": seconds[0]}


class ByteEncoding:
    """A stand-in tokenizer, one token a byte, for the synthetic examples: no BPE files needed."""

    n_vocab = 256

    def encode_ordinary(self, text):
        return list(text.encode())


def hellaswag_examples(n, vocab_size):
    """(examples, encoding, where they come from): the first n of the local HellaSwag file when
    the model reads GPT-2 tokens and the tokenizer loads offline, else n synthetic ones."""
    from pipeline.tokenizer import GPT2_VOCAB_SIZE

    reason = f"no {HELLASWAG_FILE.relative_to(REPO)}"
    if vocab_size < GPT2_VOCAB_SIZE:
        reason = "the model has no GPT-2 vocabulary"
    elif HELLASWAG_FILE.is_file():
        try:
            from evaluation import hellaswag
            from pipeline.tokenizer import get_gpt2_encoding

            return (hellaswag.load_examples(HELLASWAG_FILE, limit=n), get_gpt2_encoding(),
                    f"{HELLASWAG_FILE.relative_to(REPO)}")
        except Exception as e:  # e.g. no tokenizer files and no network
            reason = f"{type(e).__name__}: {e}"
    rng = np.random.default_rng(0)
    words = "the a man woman dog child ball water house street runs sits jumps walks throws into " \
            "onto then while and slowly quickly red small".split()

    def text(k):
        return " ".join(rng.choice(words, size=k))

    examples = [{"ctx": text(12), "endings": [text(int(rng.integers(3, 8))) for _ in range(4)],
                 "label": int(rng.integers(0, 4))} for _ in range(n)]
    return examples, ByteEncoding(), f"synthetic ({reason})"


def hellaswag_choices(model, examples, enc, amp_dtype, device):
    """({example index: ending chosen by acc_norm}, acc_norm): the bench's one call into the
    HellaSwag scoring."""
    from evaluation import hellaswag

    result = hellaswag.evaluate(lambda idx: model(idx)[0], examples, enc, "default", batch_size=8,
                                device=device, rank=0, world_size=1, autocast_dtype=amp_dtype,
                                max_length=model.config.block_size)
    return {i: pred_norm for i, (_, pred_norm, _) in result["predictions"].items()}, result["acc_norm"]


def hellaswag_agreement(s):
    if s.checkpoint:
        model, _ = load_model(s.checkpoint)
        model, what = model.to(s.device), s.checkpoint
    else:
        cfg = s.config(s.model)
        torch.manual_seed(cfg.seed)
        with torch.device(s.device):
            model = GPT(GPTConfig(**cfg.model_config()))
        what = "random init (pass --checkpoint for a trained model)"
    model.eval()
    examples, enc, source = hellaswag_examples(s.hellaswag_examples, model.config.vocab_size)
    bf16, acc_bf16 = hellaswag_choices(model, examples, enc, torch.bfloat16, s.device)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # true fp32, not TF32, for the reference
    try:
        fp32, acc_fp32 = hellaswag_choices(model, examples, enc, None, s.device)
    finally:
        torch.set_float32_matmul_precision(precision)
    same = sum(bf16[i] == fp32[i] for i in fp32)
    return {"examples": len(fp32), "same_choice": same / len(fp32), "acc_norm_bf16": acc_bf16,
            "acc_norm_fp32": acc_fp32, "data": source, "model": what}


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


def plan_measurements(s, kinds):
    """[(row name, function, arguments)] in the order they run."""
    todo = []
    if "throughput" in kinds:
        for compiled in (False, True):
            for fsdp in (False, True):
                for checkpointing in (False, True):
                    name = (f"throughput {'compiled' if compiled else 'eager'} {'fsdp' if fsdp else 'ddp'}"
                            f"{' +ac' if checkpointing else ''}")
                    todo.append((name, throughput, (s, compiled, fsdp, checkpointing)))
    if "memory" in kinds:
        todo += [(f"memory {'compiled' if compiled else 'eager'} {name}", memory, (s, name, compiled))
                 for compiled in (False, True) for name in s.presets]
    if "probe" in kinds:  # before the checkpoints: their writes may run past the budget
        todo += [(f"probe {name}", probe, (s, name)) for name in s.probe_presets]
    if "checkpoint" in kinds:
        todo += [(f"checkpoint {name}", checkpoint, (s, name)) for name in s.presets]
    if "fp16" in kinds:
        todo.append(("fp16 GradScaler step", fp16, (s,)))
    if "hellaswag" in kinds:
        todo.append(("hellaswag bf16 vs fp32", hellaswag_agreement, (s,)))
    return todo


def run_measurements(s, kinds, budget_s):
    """Each measurement isolated: its failure (an out-of-memory above all) becomes an error row."""
    rows, start = [], time.perf_counter()
    for name, function, args in plan_measurements(s, kinds):
        row = {"bench": "gpu", "row": name}
        t0 = time.perf_counter()
        if t0 - start > budget_s:
            row["error"] = f"skipped: past --budget-min {budget_s / 60:g}"
        else:
            try:
                row.update(function(*args))
            except Exception as e:
                traceback.print_exc()
                lines = str(e).strip().splitlines() or [""]
                row["error"] = f"{type(e).__name__}: {lines[0][:300]}"
            release(s.device)
        row["seconds"] = time.perf_counter() - t0
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def write_random_shards(folder, vocab_size):
    """Random tokens for the loaders: enough for the largest global batch (gpt2-1558m's 2**20
    tokens), and a char tokenizer.json beside them so that train_gpt2.prepare_data needs no
    GPT-2 BPE files (a bare CUDA image has none, and no network)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tokens = min(vocab_size, 50257)
    write_shard(folder / "bench_val_000000.bin", rng.integers(0, tokens, 4096))
    write_shard(folder / "bench_train_000001.bin", rng.integers(0, tokens, int(1.01 * 2**20) + 4096))
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ."
    (folder / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list(chars)}))
    return folder


def join_group_of_one(device, folder):
    """A process group of this process alone, for the DDP and FSDP rows (no torchrun, no port)."""
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                store=dist.FileStore(str(folder / "store"), 1), rank=0, world_size=1)
    except Exception as e:  # the DDP and FSDP rows will say they failed; the others still run
        print(f"warning: no process group ({type(e).__name__}: {e})", file=sys.stderr)


def print_table(rows):
    width = max(len(r["row"]) for r in rows)
    print(f"\n{'measurement':<{width}} | result\n{'-' * width}-|-------")
    for r in rows:
        fields = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                  for k, v in r.items() if k not in ("bench", "row"))
        print(f"{r['row']:<{width}} | {', '.join(fields)}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same code on CPU with a tiny model")
    parser.add_argument("--only", default=",".join(KINDS), help=f"comma-separated, of: {', '.join(KINDS)}")
    parser.add_argument("--checkpoint", default="", help="a trained model (run folder or ckpt file) "
                        "for the HellaSwag row; default: random weights")
    parser.add_argument("--out-dir", default=None, help="where the checkpoint rows write (on the disk "
                        "your runs use); default: the system's temporary folder")
    parser.add_argument("--budget-min", type=float, default=7.5,
                        help="measurements not started by then are skipped (a row says so)")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"--only {','.join(sorted(unknown))}: choose from {', '.join(KINDS)}")
    if args.out_dir and not Path(args.out_dir).is_dir():
        parser.error(f"--out-dir {args.out_dir}: no such folder; create it or pick another")
    if args.checkpoint and not Path(args.checkpoint).exists():
        parser.error(f"--checkpoint {args.checkpoint}: no such file or run folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU here: bench/gpu.py measures a GPU (--smoke runs the same code on "
              "CPU with a tiny model)", file=sys.stderr)
        return 2
    if args.smoke:  # inductor takes minutes on CPU; Dynamo's part (breaks, guards) is the same
        os.environ.setdefault("TRAIN_COMPILE_BACKEND", "aot_eager")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.out_dir) as folder:
        data = write_random_shards(Path(folder) / "data", parse_config(TINY if args.smoke else []).vocab_size)
        s = Settings.for_run(args, data, Path(folder))
        if s.device.type == "cuda":
            torch.cuda.set_device(s.device)
            torch.set_float32_matmul_precision("high")  # TF32, as train() sets it
            print(f"device: {torch.cuda.get_device_name(s.device)}, torch {torch.__version__}", flush=True)
        join_group_of_one(s.device, Path(folder))
        release(s.device)
        try:
            rows = run_measurements(s, args.only.split(","), 60 * args.budget_min)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    print_table(rows)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
