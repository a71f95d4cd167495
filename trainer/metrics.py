"""Metrics: one JSON object a line in RUN/log.jsonl, and optionally the same to Weights & Biases.

    metrics = MetricsLogger(run_dir, cfg.to_dict(), rank, wandb_enabled=cfg.wandb,
                            wandb_project=cfg.wandb_project, wandb_run_id=ckpt_run_id)
    metrics.log({"step": 10, "loss": 3.2})       # rank 0 only; other ranks: no-ops
    metrics.log_samples(10, ["Hello, I'm a ..."])
    checkpoint["wandb_run_id"] = metrics.run_id  # a resumed/requeued job continues the same run
    metrics.summarize({"final/val_loss": 3.1})   # the run report's headline figures
    metrics.finish()

Every log.jsonl line also gets "time" (unix seconds, when it was written): the run report reads
wall times from it, across every attempt of a requeued run. wandb keeps its own timestamps.
log.jsonl is only appended to, never rewritten (another process may be reading or following it):
read it with read_log(path), which drops the lines a resumed start superseded.

wandb is imported only when enabled: without --wandb nothing touches it. It logs the resolved
config, every line given to log() at its "step", samples as a table, and horizontal reference
lines for OpenAI's GPT-2 124M (val loss on FineWeb-Edu and HellaSwag acc_norm, as in
build-nanogpt) so a chart shows how far the run is from GPT-2. The usual WANDB_* variables apply
(WANDB_ENTITY, WANDB_DIR, WANDB_MODE=offline for machines without a key or network: the run is
written under RUN/wandb/ and `wandb sync` uploads it later).
"""

import json
import os
import re
import sys
import time
from pathlib import Path

from pipeline.tokenizer import GPT2_VOCAB_SIZE

# OpenAI GPT-2 124M, measured as build-nanogpt does: loss on FineWeb-Edu's validation shard
# (GPT-2 tokenizer) and HellaSwag acc_norm (10,042 validation examples, completion style).
GPT2_124M_REFERENCE = {"val_loss": 3.2924, "hellaswag_acc_norm": 0.2955}


# Dense (no sparsity) bf16 tensor-core peak FLOP/s per device, for MFU, from NVIDIA's datasheets
# (which print the sparse figure, twice these), by the name CUDA reports with its
# "NVIDIA "/"Tesla "/"GeForce " prefix removed. Whole names, first match wins: an L40 is not an
# L4, an H20 not an H200, and the NVL and PCIe boards run slower clocks than the SXM ones.
PEAK_FLOPS = [(r"H100 PCIe", 756e12), (r"H100 NVL", 835e12), (r"H100.*", 989e12),  # SXM5
              (r"H200 NVL", 835e12), (r"H200.*", 989e12), (r"GH200.*", 989e12),
              (r"H800 PCIe", 756e12), (r"H800.*", 989e12), (r"H20", 148e12),
              (r"A100.*", 312e12), (r"L40S", 362e12), (r"L40", 181e12), (r"L4", 121e12),
              (r"A10G", 70e12), (r"A10", 125e12), (r"RTX 4090", 165e12), (r"RTX 3090 Ti", 80e12),
              (r"RTX 3090", 71e12), (r"RTX A6000", 155e12), (r"V100.*", 125e12), (r"T4", 65e12)]


def peak_flops_of(device_name):
    """Peak FLOP/s of a GPU by its CUDA name, or None for a GPU not in the table."""
    name = re.sub(r"^(NVIDIA |Tesla |GeForce )+", "", device_name.strip())
    return next((flops for pattern, flops in PEAK_FLOPS if re.fullmatch(pattern, name)), None)


class Throughput:
    """Per-step speed: ms, tokens/s, MFU (when the device's peak is known) and ETA. The first
    step timed (compilation, warm-up) is left out of the mean that the ETA uses."""

    def __init__(self, tokens_per_step, flops_per_step, peak_flops, world_size, start_step, max_steps):
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak_total = peak_flops * world_size if peak_flops else None
        self.start_step, self.max_steps = start_step, max_steps
        self.timed_s, self.timed_steps = 0.0, 0

    def update(self, step, seconds):
        if step > self.start_step:
            self.timed_s, self.timed_steps = self.timed_s + seconds, self.timed_steps + 1
        mean = self.timed_s / self.timed_steps if self.timed_steps else seconds
        mfu = self.flops_per_step / seconds / self.peak_total if self.peak_total else None
        return {"ms": seconds * 1000, "tokens_per_s": self.tokens_per_step / seconds, "mfu": mfu,
                "eta": (self.max_steps - step - 1) * mean}


def format_eta(seconds):
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


class WandbUnavailable(Exception):
    """--wandb was asked for but wandb cannot start; the message says what to do. Raised on every
    rank alike (the outcome is broadcast), so a DDP job stops as a whole instead of hanging."""


def _jsonable(value):
    """Tensors and numpy scalars to plain Python numbers; anything else to its str."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class MetricsLogger:
    def __init__(self, run_dir, config, rank, wandb_enabled=False, wandb_project=None,
                 wandb_run_name=None, wandb_run_id=None):
        self.run_dir = Path(run_dir)
        self.config = dict(config)
        self.rank = rank
        self.wandb_enabled = bool(wandb_enabled)
        # kept even without --wandb, so a checkpoint written by a run that paused wandb still
        # leads a later --wandb resume back to the original run
        self.run_id = wandb_run_id
        self._file = None
        self._wandb = None  # the wandb module, when a run is active on this rank
        self._run = None
        self._refs = self._reference_lines(self.config)
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.run_dir / "log.jsonl", "a", buffering=1)
            if not _ends_a_line(self.run_dir / "log.jsonl"):  # a kill mid-write: keep ours apart
                self._file.write("\n")
        if self.wandb_enabled:
            error = self._start_wandb(wandb_project, wandb_run_name) if rank == 0 else None
            error = _agree(error)  # every rank learns rank 0's outcome
            if error:
                self.close_file()
                raise WandbUnavailable(error)

    @staticmethod
    def _reference_lines(config):
        """The GPT-2 124M lines that mean something for this run: val loss only with the GPT-2
        vocabulary (a char-level loss is on another scale); HellaSwag always (it is GPT-2 BPE)."""
        refs = {"hellaswag_acc_norm": {"gpt2_124m/hellaswag_acc_norm": GPT2_124M_REFERENCE["hellaswag_acc_norm"]}}
        if config.get("vocab_size", GPT2_VOCAB_SIZE) >= GPT2_VOCAB_SIZE:
            refs["val_loss"] = {"gpt2_124m/val_loss": GPT2_124M_REFERENCE["val_loss"]}
        return refs

    def _start_wandb(self, project, run_name):
        """Start (or resume) the wandb run on rank 0. Returns None, or an error message."""
        try:
            import wandb
        except ImportError:
            return "--wandb: the wandb package is not installed (pip install wandb), or drop --wandb"
        mode = os.environ.get("WANDB_MODE", "")
        try:
            self._run = wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or "gpt2-fineweb",
                name=run_name or None,
                id=self.run_id,  # None: wandb picks a new id, saved with every checkpoint
                resume="allow",  # the same id continues the same run: one curve across requeues
                dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir),
                config={**self.config, "reference": {"gpt2_124m": GPT2_124M_REFERENCE}},
            )
        except Exception as e:  # UsageError (no API key), CommError (no network), ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = ("set WANDB_API_KEY (or run `wandb login`), or WANDB_MODE=offline to log to "
                    "files under the run folder and `wandb sync` them later, or drop --wandb")
            where = f" (WANDB_MODE={mode})" if mode else ""
            return f"--wandb: wandb could not start a run{where}: {first}; {hint}"
        self._wandb = wandb
        self.run_id = self._run.id
        for key, value in GPT2_124M_REFERENCE.items():
            self._run.summary[f"gpt2_124m/{key}"] = value
        return None

    def log(self, metrics):
        """Append one line to log.jsonl; with wandb, log the numbers at metrics["step"]."""
        if self.rank != 0 or self._file is None:
            return
        self._write(metrics)
        if self._run is not None:
            data = {k: _jsonable(v) if hasattr(v, "item") else v
                    for k, v in metrics.items() if k != "step" and v is not None}
            for key in list(data):
                data.update(self._refs.get(key, {}))
            self._wandb_call(self._run.log, data, step=int(metrics["step"]))

    def log_setup(self, setup):
        """One {"setup": {...}} line per start of the run (a requeued job adds one): what ran
        where. wandb gets it in the run's config."""
        if self.rank != 0 or self._file is None:
            return
        self._write({"setup": setup})
        if self._run is not None:
            self._wandb_call(self._run.config.update, {"setup": setup}, allow_val_change=True)

    def log_samples(self, step, samples):
        """Generated texts: a log.jsonl line {"step", "samples"} and a wandb table."""
        if self.rank != 0 or self._file is None:
            return
        samples = [str(s) for s in samples]
        self._write({"step": step, "samples": samples})
        if self._run is not None:
            table = self._wandb.Table(columns=["step", "index", "text"],
                                      data=[[step, i, text] for i, text in enumerate(samples)])
            self._wandb_call(self._run.log, {"samples": table}, step=int(step))

    def summarize(self, summary):
        """Put the run's headline figures (the run report's) in the wandb run's summary, where
        the runs table shows them; None values are left out. log.jsonl is not touched."""
        if self.rank != 0 or self._run is None:
            return
        self._wandb_call(self._run.summary.update, {k: v for k, v in summary.items() if v is not None})

    def _write(self, record):
        self._file.write(json.dumps({**record, "time": round(time.time(), 3)}, default=_jsonable) + "\n")
        self._file.flush()

    def _wandb_call(self, fn, *args, **kwargs):
        """wandb must never stop training: e.g. a SIGTERM to every process of a Slurm step also
        ends wandb's service process, and the next log() raises. Warn once, go on without wandb
        (log.jsonl keeps everything)."""
        try:
            fn(*args, **kwargs)
        except Exception as e:
            print(f"warning: wandb stopped working ({type(e).__name__}: {e}); logging continues "
                  f"in {self.run_dir / 'log.jsonl'} only", file=sys.stderr, flush=True)
            self._run = None

    def close_file(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self):
        """Flush and close; idempotent. The wandb run is finished (offline: files complete)."""
        self.close_file()
        if self._run is not None:
            self._wandb_call(self._run.finish)
            self._run = None


def _ends_a_line(path):
    """Whether the file is empty or ends with a newline."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_log(path):
    """The records of a log.jsonl that stand, in order. The file is only ever appended to: a
    start's {"setup"} record with "start_step" S supersedes the earlier records of steps S and
    later (the steps a stopped or killed run did after its last checkpoint, which the resumed run
    does and logs again), and a line torn by a kill mid-write is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            setup = record.get("setup")
            start = setup.get("start_step") if isinstance(setup, dict) else None
            if start is not None:
                records = [r for r in records if r.get("step", -1) < start]
            records.append(record)
    return records


def _agree(error):
    """Rank 0's error message (or None) on every rank, when torch.distributed is running."""
    try:
        import torch.distributed as dist
    except ImportError:
        return error
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return error
    box = [error]
    dist.broadcast_object_list(box, src=0)
    return box[0]

