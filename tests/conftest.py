"""Shared fixtures: a tiny char-level shard folder, and reading wandb's offline run files back."""

import json
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from shards.format import write_shard


def write_char_shards(d, sizes=(2048, 16384), seed=0):
    """A val shard then train shards of the given sizes, of a learnable 64-token stream (each
    token has 2 likely successors), plus a 64-char tokenizer.json: trains in milliseconds a step."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, 64, size=(64, 2))
    for i, n in enumerate(sizes):
        tokens = [0]
        for _ in range(n - 1):
            noisy = rng.random() > 0.9
            tokens.append(int(rng.integers(0, 64)) if noisy else int(successors[tokens[-1], rng.integers(0, 2)]))
        write_shard(d / f"t_{'val' if i == 0 else 'train'}_{i:06d}.bin", tokens)
    chars = string.ascii_letters + string.digits + " ."
    (d / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list(chars)}))
    return d


def tiny_train_flags(steps, total_batch_size, eval_every):
    """train_gpt2.py flags for a 2-layer, 32-wide model on char_shards: a step takes milliseconds."""
    return ["--preset", "cpu-smoke", "--vocab-size", "64", "--n-layer", "2", "--n-head", "2",
            "--n-embd", "32", "--block-size", "32", "--seq-len", "32", "--micro-batch-size", "4",
            "--total-batch-size", str(total_batch_size), "--max-steps", str(steps),
            "--warmup-steps", "4", "--eval-every", str(eval_every), "--val-tokens", "512",
            "--checkpoint-every", "0", "--sample-prompt", "ab", "--num-samples", "1",
            "--sample-tokens", "8"]


def catches(pid, sig):
    """True once process `pid` has installed a handler for `sig` (Linux /proc SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(next(l.split()[1] for l in status.splitlines() if l.startswith("SigCgt")), 16)
    return bool(mask >> (sig - 1) & 1)


def start_ranks(fn, *args, nprocs=2):
    """fn(rank, *args, results) on `nprocs` processes; returns {rank: what each stored in results}.
    The ranks fork from a fork server, not from pytest: a fork of this many-threaded process can
    deadlock in the child (it did once), and spawn re-imports torch in every rank (~3 s each). The
    server imports torch and the trainer once, single-threaded, and forks each rank from there;
    so `fn` must be importable (a module-level function)."""
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "train_gpt2"])
    with context.Manager() as manager:
        results = manager.dict()
        mp.start_processes(fn, args=(*args, results), nprocs=nprocs, start_method="forkserver")
        return dict(results)


@pytest.fixture(scope="session")
def char_shards(tmp_path_factory):
    return write_char_shards(tmp_path_factory.mktemp("char_shards"))


def wandb_offline_runs(run_dir):
    """Every offline wandb run under RUN/wandb/, oldest first, read back from its .wandb file with
    `wandb leet inspect --json`: [{"id", "config", "summary", "history": [item, ...]}]."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    runs = []
    for folder in sorted(Path(run_dir, "wandb").glob("offline-run-*")):
        out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(folder)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        run = {"id": None, "config": {}, "summary": {}, "history": []}
        for line in out.stdout.splitlines():
            record = json.loads(line)
            kind = record.get("type")
            if kind == "run":
                run["id"] = record["run"]["run_id"]
                run["config"] = record["run"].get("config", {}).get("update", {})
            elif kind == "history":
                run["history"].append(record["history"]["item"])
            elif kind == "summary":
                run["summary"].update(record["summary"].get("update", {}))
        runs.append(run)
    return runs


@pytest.fixture(scope="session")
def read_wandb_runs():
    return wandb_offline_runs


@pytest.fixture(scope="session")
def speedrun_export(tmp_path_factory):
    """(checkpoint, its `hf_gpt2.py export` folder): a tiny --recipe speedrun model (models/modern.py)
    with GPT-2's vocabulary padded to 50304 as training pads it (the export crops it to 50257 and
    writes GPT-2's tokenizer), a 128-token context, its weights moved off their zero init so that
    its answers differ from example to example; the export a Qwen3ForCausalLM."""
    import torch

    import hf_gpt2
    from models.modern import ModernConfig, ModernGPT

    folder = tmp_path_factory.mktemp("speedrun_export")
    torch.manual_seed(0)
    config = ModernConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
    model = ModernGPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    checkpoint = folder / "ckpt_0000001.pt"
    torch.save({"model": model.state_dict(), "step": 1, "format": 3,
                "config": {"data": "", "model": config.to_dict()}}, checkpoint)
    assert hf_gpt2.main(["export", str(checkpoint), str(folder / "hf")]) == 0
    return checkpoint, folder / "hf"
