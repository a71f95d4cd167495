"""FSDP (--fsdp) against DDP and one process, checkpoints across parallelisms and world sizes,
activation checkpointing, the memory plan and --dry-run. CPU, gloo, the tiny config of
test_train.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train import REPO, STEPS, data, launch, read_log, reference, run, worker_pids  # noqa: F401
from models.checkpoint import load_model

FSDP = ["--fsdp"]


def assert_close_losses(a, b, rel):
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) / abs(b[k]) for k in a)
    assert worst <= rel, f"losses differ by up to {worst:.2e} (relative)"


def setup_records(out_dir):
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return [r["setup"] for r in rows if "setup" in r]


@pytest.fixture(scope="module")
def fsdp_run(data, tmp_path_factory):
    """The uninterrupted FSDP run: 2 ranks x accumulation 2, checkpoints every 10 steps."""
    out = tmp_path_factory.mktemp("fsdp")
    run(out, data, nproc=2, extra=FSDP)
    return out


def test_fsdp_equals_ddp_and_one_rank(fsdp_run, reference):
    """The same global batches through FSDP on 2 ranks give the losses of one process with 4
    accumulation steps (and so of DDP, tested equal to it in test_train.py): 1e-5 relative."""
    train, val = read_log(fsdp_run)
    ref_train, ref_val = read_log(reference)
    assert len(train) == STEPS
    assert_close_losses(train, ref_train, 1e-5)
    assert_close_losses(val, ref_val, 1e-5)
    assert train[0] > train[STEPS - 1] + 0.3  # it learns


def test_fsdp_holds_half_the_state_per_rank(fsdp_run, reference):
    (fsdp,), (single,) = setup_records(fsdp_run), setup_records(reference)
    assert fsdp["fsdp"] is True and fsdp["world_size"] == 2 and single["fsdp"] is False
    assert fsdp["parameters"] == single["parameters"]
    # DDP's replica on each rank is the whole state, as in one process
    ratio = fsdp["state_bytes_per_rank"]["total"] / single["state_bytes_per_rank"]["total"]
    assert ratio <= 0.55, ratio


def test_fsdp_trains_in_one_process(data, reference, tmp_path):
    """`python train_gpt2.py --fsdp`: FSDP over a group of one that the runtime makes (plain
    python has no torchrun rendezvous), with the losses of one process without FSDP."""
    run(tmp_path, data, extra=FSDP)
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    assert_close_losses(train, ref_train, 1e-5)
    assert_close_losses(val, ref_val, 1e-5)


def test_fsdp_under_torchrun_of_one_trains_in_the_runtimes_group(char_shards, tmp_path, monkeypatch):
    """torchrun --nproc_per_node=1 ... --fsdp: the group is the runtime's (its timeout), not
    one fully_shard makes for itself, and it is destroyed at the end."""
    import socket
    from datetime import timedelta

    import torch.distributed as dist

    import train_gpt2
    from conftest import tiny_train_flags

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(port)).items():
        monkeypatch.setenv(name, value)
    timeouts, init = [], dist.init_process_group
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: timeouts.append(kw["timeout"]) or init(**kw))
    argv = tiny_train_flags(2, 256, 0) + ["--fsdp", "--dist-timeout-min", "7", "--data", str(char_shards),
                                          "--out-dir", str(tmp_path), "--hellaswag-every", "0"]
    assert train_gpt2.main(argv) == 0
    assert timeouts == [timedelta(minutes=7)] and not dist.is_initialized()


def kill_after_checkpoint(out_dir, data, step):
    """Start a 2-rank FSDP run, kill -9 every process of it once ckpt_{step} exists."""
    proc = launch(out_dir, data, nproc=2, extra=FSDP)
    target = out_dir / f"ckpt_{step:07d}.pt"
    deadline = time.time() + 120
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert target.exists(), proc.communicate()[0]
    for pid in worker_pids(proc.pid) + [proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert not (out_dir / "DONE").exists()


@pytest.mark.parametrize("nproc, extra", [(1, []), (2, FSDP)], ids=["1-rank-ddp", "2-rank-fsdp"])
def test_fsdp_checkpoint_resumes_on_other_world_size_and_parallelism(
        data, fsdp_run, tmp_path, nproc, extra):
    kill_after_checkpoint(tmp_path, data, 10)
    output = run(tmp_path, data, nproc=nproc, extra=extra)
    assert "resuming from" in output
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(fsdp_run)
    assert_close_losses(train, ref_train, 1e-5)
    assert_close_losses(val, ref_val, 1e-5)
    assert (tmp_path / "DONE").exists()


def test_activation_checkpointing_gives_the_same_losses(data, reference, tmp_path):
    run(tmp_path, data, extra=["--activation-checkpointing", "--dropout", "0.0"])
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    assert train == ref_train and val == ref_val  # recomputation is exact


def test_export_of_fsdp_checkpoint_matches_the_model(fsdp_run, tmp_path):
    from transformers import GPT2LMHeadModel

    out = subprocess.run([sys.executable, "hf_gpt2.py", "export", str(fsdp_run), str(tmp_path / "hf"),
                          "--vocab-size", "64"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    model, _ = load_model(fsdp_run)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.eval()(idx)[0]
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_dry_run_traces_gpt2_without_allocating():
    """124M parameters are 2 GB with their gradients and AdamW state in fp32, 16 GB of
    activations at B=64: the dry run traces two steps of them on fake tensors and must stay far
    below that (1558m traces alike, slower)."""
    dry_run = ("import resource, runpy, sys\n"
               "sys.argv = ['train_gpt2.py', '--preset', 'gpt2-124m', '--fsdp', '--dry-run']\n"
               "try:\n    runpy.run_path('train_gpt2.py', run_name='__main__')\n"
               "except SystemExit as e:\n    assert e.code == 0, e.code\n"
               "print('peak RSS kB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", dry_run], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "WORLD_SIZE": "8"})
    assert out.returncode == 0, out.stderr
    assert "124,475,904 parameters (124.5M)" in out.stdout
    assert "per rank (8 rank(s), FSDP)" in out.stdout and "traced peak per rank" in out.stdout
    peak_kb = int(out.stdout.split("peak RSS kB")[1])
    assert peak_kb < 1_000_000, peak_kb


def test_fsdp_hellaswag_and_samples_equal_ddp(tmp_path):
    """Evaluations see the full model under FSDP: HellaSwag (3 examples on 2 ranks: unequal
    shares, the forwards kept in lockstep) and samples equal DDP's."""
    import numpy as np

    from shards.format import write_shard

    rng = np.random.default_rng(0)
    data = tmp_path / "shards"
    data.mkdir()
    for i, n in enumerate([1024, 4096]):
        write_shard(data / f"g_{'val' if i == 0 else 'train'}_{i:06d}.bin", rng.integers(0, 50257, n))
    example = {"ctx": "A man sits down.", "ctx_a": "A man sits down.", "ctx_b": "", "label": 1,
               "activity_label": "Sitting", "endings": ["He flies.", "He rests.", "He sings.", "He runs."]}
    (tmp_path / "hs.jsonl").write_text("\n".join(json.dumps(example) for _ in range(3)) + "\n")
    flags = ["--preset", "cpu-smoke", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
             "--max-steps", "2", "--micro-batch-size", "2", "--seq-len", "16", "--block-size", "64",
             "--total-batch-size", "64", "--eval-every", "1", "--val-tokens", "256",
             "--checkpoint-every", "0", "--hellaswag-every", "1", "--hellaswag-data",
             str(tmp_path / "hs.jsonl"), "--num-samples", "1", "--sample-tokens", "6"]
    logs = {}
    for name, extra in (("ddp", []), ("fsdp", FSDP)):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node=2", "train_gpt2.py", *flags, *extra, "--data", str(data),
                              "--out-dir", str(tmp_path / name)], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        logs[name] = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    for kind in ("hellaswag_acc_norm", "val_loss", "samples"):
        ddp = [r[kind] for r in logs["ddp"] if kind in r]
        fsdp = [r[kind] for r in logs["fsdp"] if kind in r]
        assert len(ddp) == 3, kind
        if kind == "val_loss":
            assert fsdp == pytest.approx(ddp, rel=1e-5)
        else:
            assert fsdp == ddp, kind
    assert all(r["hellaswag_n"] == 3 for r in logs["fsdp"] if "hellaswag_n" in r)


@pytest.mark.slow
def test_fsdp_with_compile_and_bf16_trains(data, fsdp_run, tmp_path):
    """--fsdp --compile --dtype bfloat16 on 2 ranks (the GPU configuration, on CPU): losses within
    bf16's precision of the fp32 FSDP run's. (~1 min: inductor compiles on both ranks.)"""
    run(tmp_path, data, nproc=2, extra=FSDP + ["--compile", "--dtype", "bfloat16", "--max-steps", "6",
                                                "--eval-every", "3"])
    train, _ = read_log(tmp_path)
    ref_train, _ = read_log(fsdp_run)
    assert sorted(train) == list(range(6))
    for step, loss in train.items():
        assert loss == pytest.approx(ref_train[step], rel=2e-2)


def _rank_main(rank, init_file, fn, args, results):
    import torch.distributed as dist

    from trainer.distributed import Runtime

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    results[rank] = fn(Runtime.from_env("cpu"), *args)
    dist.barrier()
    dist.destroy_process_group()


def _on_two_ranks(tmp_path, fn, *args):
    """fn(runtime, *args) on 2 gloo ranks (fn at module level: conftest.start_ranks);
    {rank: what it returned}."""
    from conftest import start_ranks

    return start_ranks(_rank_main, tmp_path / "pg", fn, args)


# 65 tokens and 33 positions: rows that 2 ranks cannot split evenly
UNEVEN = ["--preset", "cpu-smoke", "--vocab-size", "65", "--block-size", "33", "--seq-len", "32",
          "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--seed", "7", "--compile", "false"]


def _gathered_weights(runtime, cfg):
    """(this rank's number of parameters, the full state dict gathered) of an FSDP build."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from train_gpt2 import build

    model, _, _ = build(cfg, runtime, None)
    local = sum(p.to_local().numel() for p in model.parameters())
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return local, full


def test_fsdp_materialises_its_shards_with_the_weights_of_a_model_built_whole(tmp_path):
    """Built on the meta device, each rank holds only its shards, and gathered they are exactly
    the weights one process builds from the same seed (uneven shards included)."""
    from models.gpt2 import GPT, GPTConfig
    from trainer.config import parse_config

    cfg = parse_config(UNEVEN + ["--fsdp"])
    results = _on_two_ranks(tmp_path, _gathered_weights, cfg)
    torch.manual_seed(cfg.seed)
    whole = GPT(GPTConfig(**cfg.model_config()))
    assert results[0][1].keys() == whole.state_dict().keys()
    for name, tensor in whole.state_dict().items():
        assert torch.equal(results[0][1][name], tensor), name
    assert results[0][0] + results[1][0] == whole.num_params()  # each rank its share only


def _gradient_copies(runtime, cfg):
    """Two DDP steps of 2 micro-steps: after each first micro-step, how many gradients are not
    views of DDP's buckets."""
    from train_gpt2 import build

    _, parallel, optimizer = build(cfg, runtime, None)
    x = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(runtime.rank))
    copies = []
    for _ in range(2):
        parallel.zero_grad(optimizer)
        for micro_step in range(2):
            with parallel.gradient_sync(micro_step == 1):
                parallel.train_module(x, x)[1].backward()
            if micro_step == 0:
                copies.append(sum(p.grad._base is None for p in parallel.module.parameters()))
        optimizer.step()
    return copies


def test_ddp_gradients_stay_in_its_buckets_while_accumulating(tmp_path):
    """Zeroed in place between steps, the gradients of an accumulation micro-step (no reduction)
    are views of DDP's reduction buckets, not a second copy beside them."""
    from trainer.config import parse_config

    results = _on_two_ranks(tmp_path, _gradient_copies, parse_config(UNEVEN))
    # the first step starts from no gradients at all; from then on none is a copy
    assert results[0][1] == results[1][1] == 0 and results[0][0] > 0
