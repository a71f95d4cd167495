"""Train GPT-2 on token shards: one process, or one per device under torchrun (DDP).

    python train_gpt2.py --preset cpu-smoke --data data/edu_fineweb10B   # tiny model, CPU, seconds
    torchrun --standalone --nproc_per_node=8 train_gpt2.py               # GPT-2 124M, 10B tokens

The defaults are build-nanogpt's GPT-2 124M recipe (see config.py). Every flag: --help.

Run folder (--out-dir): config.json, log.jsonl (one JSON object a line: train steps, val loss,
HellaSwag), ckpt_{step:07d}.pt (see checkpoint.py), DONE once the last step is finished.
Resuming is automatic (--resume auto): the newest checkpoint in the run folder is picked up,
on any number of ranks, and the run continues as if never interrupted.

Exit status: 0 all steps done; 2 bad input (one line says what to do); 3 stopped early by
SIGUSR1, SIGTERM or SIGINT after finishing the current step and saving a checkpoint (all ranks
agree through a collective every step, so none hangs): run the same command to resume.
"""

import hashlib
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import CheckpointError, check_compatible, find_latest, load_checkpoint, save_checkpoint
from config import parse_config, save_config
from metrics import GPT2_124M_REFERENCE, MetricsLogger, WandbUnavailable
from model import GPT, GPTConfig
from pipeline.tokenizer import GPT2_VOCAB_SIZE, load_tokenizer
from shards.loader import LoaderError, ShardLoader, ValLoader

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3

# Dense bf16 tensor-core peak FLOP/s per device, for MFU (first matching name wins).
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
              ("L40S", 362e12), ("A10", 125e12), ("L4", 121e12), ("4090", 165e12),
              ("3090", 71e12), ("V100", 125e12)]


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


class StopRequest:
    """Records SIGUSR1 (Slurm's pre-emption warning), SIGTERM and SIGINT instead of dying, and
    notices `stop_file` (RUN/STOP) appearing: the loop finishes its step, checkpoints and exits
    with EXIT_STOPPED. The file is the way in when no signal can be: a site whose process
    tracking cannot reach torchrun's workers (they run in sessions of their own), or a person
    (`touch RUN/STOP`). Every rank looks every step (a stat: microseconds) and the loop's vote
    makes them agree; the rank that `owns_stop_file` (rank 0) removes it on the way out, so the
    resumed run does not stop again."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop_file, owns_stop_file):
        self.signum = 0
        self.stop_file = Path(stop_file)
        self.owns_stop_file = owns_stop_file
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame):
        self.signum = self.signum or signum

    def requested(self):
        return self.signum > 0 or self.stop_file.exists()

    def restore(self):
        """Give the signals back to their former handlers (train_gpt2.main may run in-process),
        and remove the stop file: training has ended, so it has been acted on."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.owns_stop_file:
            self.stop_file.unlink(missing_ok=True)


def params_sha256(model):
    """Hash of the parameters' bytes: DDP replicas must hold identical weights."""
    digest = hashlib.sha256()
    for t in model.state_dict().values():
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_tokenizer(data_dir):
    """The shards' tokenizer (for samples and the vocab check), or None with a warning."""
    try:
        return load_tokenizer(data_dir)
    except Exception as e:  # e.g. GPT-2's BPE files unavailable offline
        print(f"warning: no tokenizer for {data_dir} ({e}); samples are off")
        return None


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
    os.replace(tmp, path)


def main(argv=None):
    cfg = parse_config(argv)  # argparse exits 2 on bad flags
    # torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; plain python is a world of one
    ddp = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    master = rank == 0
    try:
        setup = prepare(cfg, rank, world_size)
    except (BadInput, LoaderError) as e:
        if master:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT

    device_type = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    device = torch.device(f"cuda:{local_rank}" if device_type == "cuda" else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    # from here on a signal or RUN/STOP means "checkpoint and exit 3"
    stop = StopRequest(Path(cfg.out_dir) / "STOP", owns_stop_file=master)
    try:
        status = train(cfg, setup, ddp, rank, world_size, device, stop)
    except (BadInput, CheckpointError, LoaderError, WandbUnavailable) as e:  # raised alike on every rank
        if master:
            print(f"error: {e}", file=sys.stderr)
        status = EXIT_BAD_INPUT
    finally:
        stop.restore()
    if ddp:
        dist.barrier()  # gloo can abort at exit if one rank leaves while another is busy
        dist.destroy_process_group()
    return status


def prepare(cfg, rank, world_size):
    """Loaders, tokenizer and the input checks that need no process group (so a bad flag or
    shard folder fails at once, with the same message on every rank)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda but no CUDA device is available; use --device cpu")
    tokens_per_micro_step = cfg.micro_batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % tokens_per_micro_step:
        raise BadInput(
            f"--total-batch-size {cfg.total_batch_size} is not divisible by --micro-batch-size "
            f"{cfg.micro_batch_size} x --seq-len {cfg.seq_len} x {world_size} ranks = "
            f"{tokens_per_micro_step}; change --micro-batch-size or the number of ranks")
    grad_accum = cfg.total_batch_size // tokens_per_micro_step
    train_loader = ShardLoader(cfg.data, "train", cfg.micro_batch_size, cfg.seq_len, grad_accum,
                               rank, world_size, shuffle=cfg.shuffle, seed=cfg.seed)
    val_loader = None
    if cfg.eval_every:
        try:
            val_loader = ValLoader(cfg.data, cfg.micro_batch_size, cfg.seq_len, rank, world_size,
                                   tokens=cfg.val_tokens)
        except LoaderError as e:
            raise BadInput(f"{e} (or pass --eval-every 0 to train without validation)") from None
    tokenizer = data_tokenizer(cfg.data)  # on every rank: all must take the same decisions
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise BadInput(f"the shards in {cfg.data} use a {tokenizer.name} vocabulary of "
                       f"{tokenizer.vocab_size} tokens, more than the model's --vocab-size "
                       f"{cfg.vocab_size}; raise --vocab-size")
    return dict(grad_accum=grad_accum, train_loader=train_loader, val_loader=val_loader,
                tokenizer=tokenizer)


def train(cfg, setup, ddp, rank, world_size, device, stop):
    master = rank == 0
    grad_accum, train_loader, val_loader = setup["grad_accum"], setup["train_loader"], setup["val_loader"]
    tokenizer = setup["tokenizer"]
    out_dir = Path(cfg.out_dir)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
    use_bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    # the same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
    torch.manual_seed(cfg.seed)
    model_config = GPTConfig(**cfg.model_config())
    raw_model = GPT(model_config).to(device)
    optimizer = raw_model.configure_optimizer(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2),
                                              cfg.eps, device.type, verbose=master)
    torch.manual_seed(cfg.seed + rank)  # then per-rank randomness (dropout)

    # resume
    ckpt_path, ckpt = None, None
    if cfg.resume == "auto":
        ckpt_path, ckpt = find_latest(out_dir)
    elif cfg.resume != "never":
        ckpt_path, ckpt = Path(cfg.resume), load_checkpoint(cfg.resume)
    start_step = 0
    if ckpt is not None:
        check_compatible(ckpt, cfg.model_config(), ckpt_path)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        train_loader.load_state_dict(ckpt["loader"])
        start_step = ckpt["step"]
        if len(ckpt["rng"]) == world_size:
            torch.set_rng_state(ckpt["rng"][rank]["torch"])
            if device.type == "cuda" and ckpt["rng"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"])
        elif master and cfg.dropout > 0:
            print(f"note: checkpoint from {len(ckpt['rng'])} ranks, now {world_size}: dropout "
                  f"masks will differ from the original run")
        if master:
            print(f"resuming from {ckpt_path} at step {start_step}")

    model = torch.compile(raw_model) if cfg.compile else raw_model
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.json")
        print(json.dumps(cfg.to_dict(), indent=1))
        print(f"{raw_model.num_params():,} parameters; {world_size} rank(s) x {grad_accum} "
              f"accumulation step(s) x {cfg.micro_batch_size} x {cfg.seq_len} tokens = "
              f"{cfg.total_batch_size:,} tokens/step; {len(train_loader)} steps/epoch")
        (out_dir / "DONE").unlink(missing_ok=True)
        trim_log(out_dir / "log.jsonl", start_step)
    metrics = MetricsLogger(out_dir, cfg.to_dict(), rank, wandb_enabled=cfg.wandb,
                            wandb_project=cfg.wandb_project, wandb_run_name=cfg.wandb_run_name or None,
                            wandb_run_id=ckpt.get("wandb_run_id") if ckpt else None)
    del ckpt  # the optimizer state copy can be large
    hellaswag_examples = load_hellaswag(cfg, tokenizer, ddp, master, device)
    peak_flops = cfg.peak_flops or detect_peak_flops(device)
    flops_per_step = raw_model.flops_per_token(cfg.seq_len) * cfg.total_batch_size

    def checkpoint(step):
        # every rank contributes its RNG states and a hash of its weights (replicas must agree)
        mine = {"rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "param_sha256": params_sha256(raw_model)}
        everyone = [None] * world_size
        if ddp:
            dist.all_gather_object(everyone, mine)
        else:
            everyone = [mine]
        if not master:
            return
        hashes = [r["param_sha256"] for r in everyone]
        if len(set(hashes)) > 1:
            print(f"warning: step {step}: parameters differ between ranks ({hashes})", file=sys.stderr)
        state = {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "loader": train_loader.state_dict(), "rng": [r["rng"] for r in everyone],
                 "param_sha256": hashes, "config": {**cfg.to_dict(), "model": model_config.to_dict()},
                 "wandb_run_id": metrics.run_id}
        path = save_checkpoint(state, out_dir, step, keep=cfg.keep_checkpoints)
        print(f"saved {path}")

    timed_ms, timed_steps = 0.0, 0  # for the ETA; the first step (compilation, warm-up) left out
    for step in range(start_step, cfg.max_steps + 1):
        last_step = step == cfg.max_steps
        # evaluations see the model after `step` updates
        if val_loader is not None and (step % cfg.eval_every == 0 or last_step):
            val_loss = evaluate_loss(raw_model, val_loader, device, autocast, ddp)
            metrics.log({"step": step, "val_loss": val_loss})
            if master:
                print(f"step {step:5d} | val loss {val_loss:.4f} ({val_loader.num_tokens:,} tokens)")
                if tokenizer is not None and cfg.num_samples:
                    samples = generate_samples(raw_model, tokenizer, cfg, step, device, autocast)
                    for text in samples:
                        print(f"sample: {text!r}")
                    metrics.log_samples(step, samples)
        if hellaswag_examples and (step % cfg.hellaswag_every == 0 or last_step):
            import hellaswag

            result = hellaswag.evaluate_gpt(raw_model, hellaswag_examples, device=device,
                                            autocast_dtype=torch.bfloat16 if use_bf16 else None)
            metrics.log({"step": step, "hellaswag_acc_norm": result["acc_norm"],
                         "hellaswag_acc": result["acc"], "hellaswag_n": result["n"]})
            if master:
                print(f"step {step:5d} | HellaSwag acc_norm {result['acc_norm']:.4f} "
                      f"(OpenAI GPT-2 124M: {GPT2_124M_REFERENCE['hellaswag_acc_norm']}) on {result['n']} examples")
        if last_step:
            break

        # one optimisation step over the global batch
        t0 = time.time()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        for micro_step in range(grad_accum):
            x, y = train_loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if ddp:
                # all-reduce gradients only on the last micro-step; must be set before its forward
                model.require_backward_grad_sync = micro_step == grad_accum - 1
            with autocast:
                _, loss = model(x, y)
            # each micro-batch's loss is a mean: scale so the gradients sum to the global mean
            loss = loss / grad_accum
            loss_accum += loss.detach()
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        # one collective for the mean loss and the stop flag: every rank agrees on stopping
        stats = torch.stack([loss_accum.float(), torch.tensor(float(stop.requested()), device=device)])
        if ddp:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        loss_sum, stop_votes = stats.tolist()
        loss_value, stop_now = loss_sum / world_size, stop_votes > 0
        dt = time.time() - t0
        if step > start_step:
            timed_ms, timed_steps = timed_ms + dt * 1000, timed_steps + 1
        mean_ms = timed_ms / timed_steps if timed_steps else dt * 1000
        tokens_per_s = cfg.total_batch_size / dt
        mfu = flops_per_step / dt / (peak_flops * world_size) if peak_flops else None
        eta = (cfg.max_steps - step - 1) * mean_ms / 1000
        metrics.log({"step": step, "loss": loss_value, "lr": lr, "norm": norm.item(),
                     "ms": dt * 1000, "tokens_per_s": tokens_per_s, "mfu": mfu, "eta": eta,
                     "epoch": train_loader.epoch})
        if master:
            mfu_text = f" | mfu {100 * mfu:.1f}%" if mfu is not None else ""
            print(f"step {step:5d} | loss {loss_value:.6f} | lr {lr:.4e} | norm {norm.item():.4f} | "
                  f"{dt * 1000:.1f} ms | {tokens_per_s:,.0f} tok/s{mfu_text} | eta {format_eta(eta)}")

        done = step + 1
        if stop_now or done == cfg.max_steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            checkpoint(done)
        if stop_now:
            if master:
                print(f"stop signal received: checkpoint at step {done} saved, exiting with "
                      f"status {EXIT_STOPPED}; run the same command to resume")
            metrics.finish()
            return EXIT_STOPPED

    if master:
        (out_dir / "DONE").write_text(f"{cfg.max_steps}\n")
        print(f"done: {cfg.max_steps} steps; wrote {out_dir / 'DONE'}")
    metrics.finish()
    return 0


@torch.no_grad()
def evaluate_loss(model, val_loader, device, autocast, ddp):
    """Mean cross-entropy over the val loader's tokens, summed over ranks: world-size invariant.

    Runs the plain module (not the compiled/DDP one): no recompilation for the last, smaller batch.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
    for x, y in val_loader:
        x, y = x.to(device), y.to(device)
        with autocast:
            logits, _ = model(x)
        # per-token losses summed in float64: the same total however sequences are batched
        losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none")
        total += torch.stack([losses.double().sum(), torch.tensor(float(y.numel()), device=device, dtype=torch.float64)])
    if ddp:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    model.train(was_training)
    return (total[0] / total[1]).item()


def generate_samples(model, tokenizer, cfg, step, device, autocast):
    """cfg.num_samples continuations of cfg.sample_prompt; a generator seeded by the step keeps
    the training RNG stream (and so a resumed run) untouched."""
    try:
        prompt = tokenizer.encode(cfg.sample_prompt)[-cfg.block_size:]  # generate() crops as it goes
    except ValueError as e:  # e.g. a character outside a char vocabulary
        return [f"(no samples: --sample-prompt: {e})"]
    if not prompt:
        prompt = [tokenizer.eot if tokenizer.eot is not None else 0]
    idx = torch.tensor([prompt] * cfg.num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed + step)
    with autocast:
        out = model.generate(idx, cfg.sample_tokens, top_k=50, generator=generator,
                             vocab_size=tokenizer.vocab_size)
    return [tokenizer.decode(row.tolist()) for row in out]


def load_hellaswag(cfg, tokenizer, ddp, master, device):
    """HellaSwag examples, or None after one warning: never a crash. All ranks agree."""
    if not cfg.hellaswag_every:
        return None
    examples, reason = None, None
    if cfg.vocab_size < GPT2_VOCAB_SIZE or tokenizer is None or tokenizer.name != "gpt2":
        reason = "it needs a GPT-2-tokenizer model and shards"
    else:
        try:
            import hellaswag

            examples = hellaswag.load_examples(cfg.hellaswag_data or None,
                                               limit=cfg.hellaswag_limit or None)
        except Exception as e:  # HellaSwagUnavailable (offline, no cached copy), bad file, ...
            reason = str(e)
    available = torch.tensor(float(examples is not None), device=device)
    if ddp:  # all ranks must run it (counts are all-reduced) or none
        dist.all_reduce(available, op=dist.ReduceOp.MIN)
    if available.item() == 0:
        if master:
            print(f"warning: HellaSwag evaluation skipped: {reason or 'unavailable on another rank'}")
        return None
    return examples


def detect_peak_flops(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS if key in name), None)


def format_eta(seconds):
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


if __name__ == "__main__":
    sys.exit(main())
