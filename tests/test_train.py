"""train_gpt2.py end to end on CPU: DDP under torchrun (gloo), exact resume, signals, bad input.

One tiny configuration (vocab 64, 2 layers, 32 wide, 512 tokens/step, 40 steps) run as real
processes; each scenario launches torchrun or python once.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import TrainConfig, parse_config
from trainer.presets import PRESETS
from shards.format import write_shard
from train_gpt2 import main
from trainer.recipes import get_lr

from conftest import catches, write_char_shards

REPO = Path(__file__).resolve().parent.parent
STEPS = 40
TINY = ["--preset", "cpu-smoke", "--vocab-size", "64", "--n-layer", "2", "--n-head", "2",
        "--n-embd", "32", "--block-size", "32", "--seq-len", "32", "--micro-batch-size", "4",
        "--total-batch-size", "512", "--max-steps", str(STEPS), "--warmup-steps", "4",
        "--lr", "3e-3", "--min-lr", "3e-4", "--eval-every", "20", "--val-tokens", "1024",
        "--checkpoint-every", "10", "--keep-checkpoints", "10", "--sample-prompt", "ab",
        "--num-samples", "1", "--sample-tokens", "8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A val shard and two train shards (16 + 16 steps: the 40-step runs cross an epoch) of a
    learnable token stream (each token has 2 likely successors), with a 64-char tokenizer."""
    return write_char_shards(tmp_path_factory.mktemp("shards"), sizes=(2048, 8192, 8192))


def launch(out_dir, data, nproc=1, extra=(), env=None):
    """Start a training process (plain python for 1 rank, torchrun for more); returns Popen."""
    if nproc == 1:
        cmd = [sys.executable, "train_gpt2.py"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "train_gpt2.py"]
    cmd += TINY + ["--data", str(data), "--out-dir", str(out_dir), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def run(out_dir, data, nproc=1, extra=(), expect=0, env=None):
    proc = launch(out_dir, data, nproc, extra, env)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == expect, output
    return output


def read_log(out_dir):
    """({step: train loss}, {step: val loss}) from log.jsonl."""
    train, val = {}, {}
    for line in (Path(out_dir) / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "val_loss" in row:
            val[row["step"]] = row["val_loss"]
    return train, val


def assert_same_losses(a, b, tol):
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst <= tol, f"losses differ by up to {worst}"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run: 1 process, gradient accumulation 4."""
    out = tmp_path_factory.mktemp("reference")
    run(out, data)
    return out


def test_reference_run_writes_its_run_folder(reference):
    train, val = read_log(reference)
    assert sorted(train) == list(range(STEPS)) and sorted(val) == [0, 20, 40]
    assert all(math.isfinite(v) for v in train.values())
    assert (reference / "DONE").exists()
    assert json.loads((reference / "config.json").read_text())["max_steps"] == STEPS
    assert [p.name for p in sorted(reference.glob("ckpt_*.pt"))] == [
        f"ckpt_{s:07d}.pt" for s in (10, 20, 30, 40)]
    rows = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    row = next(r for r in rows if "loss" in r)
    assert {"step", "loss", "lr", "norm", "ms", "tokens_per_s", "mfu", "eta"} <= row.keys()
    (setup,) = [r["setup"] for r in rows if "setup" in r]  # one per start
    assert setup["world_size"] == 1 and setup["parameters"] > 0 and setup["precision"] == "float32"
    assert setup["versions"]["torch"] == torch.__version__.split("+")[0] or \
        setup["versions"]["torch"] == torch.__version__
    assert len(setup["versions"]["git_commit"]) == 40 and len(setup["devices"]) == 1
    ckpt = torch.load(reference / "ckpt_0000040.pt", weights_only=True)
    assert ckpt["step"] == STEPS and ckpt["config"]["model"]["n_embd"] == 32
    assert ckpt["loader"]["epoch"] == 1 and len(ckpt["rng"]) == 1
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    # weight decay on matrices and embeddings only
    decay, no_decay = ckpt["optimizer"]["param_groups"]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    n_matrices = sum(1 for k, v in ckpt["model"].items() if v.dim() >= 2 and k != "lm_head.weight")
    assert len(decay["params"]) == n_matrices  # lm_head is tied to wte: counted once
    assert len(no_decay["params"]) == sum(1 for v in ckpt["model"].values() if v.dim() < 2)


def test_two_ranks_equal_one_rank(data, reference, tmp_path):
    """2 ranks x accumulation 2 sees the same global batches as 1 rank x 4: same losses."""
    run(tmp_path, data, nproc=2)
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    assert_same_losses(train, ref_train, 1e-5)
    assert_same_losses(val, ref_val, 1e-5)
    assert np.mean([train[s] for s in range(5)]) > np.mean([train[s] for s in range(35, 40)]) + 0.3
    ckpt = torch.load(tmp_path / "ckpt_0000040.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2


@pytest.mark.parametrize("nproc", [1, 2])
def test_resume_after_kill_equals_uninterrupted(data, reference, tmp_path, nproc):
    """What a kill -9 after step 10's checkpoint leaves (later log lines, a half-written
    checkpoint under its temporary name): the resumed run, on 1 or 2 ranks, gives the
    uninterrupted run's per-step losses."""
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    for path in tmp_path.glob("ckpt_*.pt"):
        if path.name != "ckpt_0000010.pt":
            path.unlink()
    (tmp_path / "DONE").unlink()
    (tmp_path / ".ckpt_0000020.pt.tmp-12345").write_bytes(b"half a checkpoint")
    output = run(tmp_path, data, nproc=nproc)
    assert "resuming from" in output and "at step 10" in output
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    tol = 0.0 if nproc == 1 else 1e-5
    assert_same_losses(train, ref_train, tol)
    assert_same_losses(val, ref_val, tol)
    assert (tmp_path / "DONE").exists()


def worker_pids(torchrun_pid):
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def test_signal_checkpoints_exits_3_and_resumes(data, reference, tmp_path):
    """SIGUSR1 to one rank only, during training: both finish the step, agree, checkpoint and
    exit 3; resuming (here on 1 rank) continues the uninterrupted run's losses."""
    proc = launch(tmp_path, data, nproc=2)
    deadline, log = time.time() + 60, tmp_path / "log.jsonl"
    target = None
    while (target is None or not (log.exists() and '"loss"' in log.read_text())) and \
            time.time() < deadline and proc.poll() is None:
        for pid in worker_pids(proc.pid):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if b"RANK=1" in env and catches(pid, signal.SIGUSR1):
                target = pid
        time.sleep(0.005)
    assert target is not None, "rank 1 never installed its signal handler"
    os.kill(target, signal.SIGUSR1)
    output, _ = proc.communicate(timeout=120)
    assert "exiting with status 3" in output and "exitcode" in output and ": 3" in output, output
    assert not (tmp_path / "DONE").exists()
    stop_step = max(int(p.stem[5:]) for p in tmp_path.glob("ckpt_*.pt"))
    assert 0 < stop_step < STEPS
    run(tmp_path, data, nproc=1)
    train, _ = read_log(tmp_path)
    assert_same_losses(train, read_log(reference)[0], 1e-5)


def test_stop_file_checkpoints_exits_3_and_resumes(data, reference, tmp_path):
    """`touch RUN/STOP` during a 2-rank run (the fallback where no signal reaches the workers):
    both ranks stop after the same step, checkpoint, exit 3; rank 0 removes STOP, so resuming
    (here on 1 rank) runs to the end with the uninterrupted run's losses."""
    proc = launch(tmp_path, data, nproc=2)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 60
    while not (log.exists() and '"loss"' in log.read_text()):  # training under way
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.005)
    (tmp_path / "STOP").touch()
    output, _ = proc.communicate(timeout=120)
    assert "exiting with status 3" in output and "exitcode" in output and ": 3" in output, output
    stop_step = max(int(p.stem[5:]) for p in tmp_path.glob("ckpt_*.pt"))
    assert 0 < stop_step < STEPS and f"checkpoint at step {stop_step} saved" in output, output
    assert not (tmp_path / "STOP").exists(), "rank 0 removes the stop file it acted on"
    assert not (tmp_path / "DONE").exists()
    output = run(tmp_path, data, nproc=1)
    assert f"at step {stop_step}" in output and (tmp_path / "DONE").exists()
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    assert_same_losses(train, ref_train, 1e-5)
    assert_same_losses(val, ref_val, 1e-5)


def test_sigterm_exit_status_3_single_process(data, tmp_path):
    proc = launch(tmp_path, data, extra=["--max-steps", "100000", "--eval-every", "0"])
    deadline = time.time() + 60
    while not catches(proc.pid, signal.SIGTERM) and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)  # a few steps in
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, output
    step = max(int(p.stem[5:]) for p in tmp_path.glob("ckpt_*.pt"))
    assert f"checkpoint at step {step} saved" in output


def test_sigterm_during_a_long_validation_checkpoints_within_seconds_and_resumes(data, reference,
                                                                               tmp_path):
    """Resumed from the reference's step-10 checkpoint with a validation of 16M tokens every 3
    steps (minutes here), SIGTERM to rank 1 alone during step 12's: both ranks end it together at
    their next poll, the checkpoint of step 12 follows at once, exit 3, no validation logged;
    resumed again with the reference's flags, the losses are the uninterrupted run's."""
    long_val = tmp_path / "long_val"
    long_val.mkdir()
    for path in data.iterdir():
        if "_val_" not in path.name:
            shutil.copy(path, long_val)
    write_shard(long_val / "t_val_000000.bin", np.random.default_rng(0).integers(0, 64, 16_000_000))
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(reference / "ckpt_0000010.pt", out)
    proc = launch(out, long_val, nproc=2, extra=["--val-tokens", "16000000", "--eval-every", "3"])
    deadline, rank1, log = time.time() + 90, None, out / "log.jsonl"
    while rank1 is None or not (log.exists() and '"step": 11, "loss"' in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        for pid in worker_pids(proc.pid):
            if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                rank1 = pid
        time.sleep(0.01)
    time.sleep(1.0)  # step 12's validation under way
    t0 = time.monotonic()
    os.kill(rank1, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert "checkpoint at step 12 saved, exiting with status 3" in output and "exitcode  : 3" in output, output
    assert time.monotonic() - t0 < 20, "the stop waited for the validation"
    assert "val_loss" not in log.read_text()
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_0000010.pt", "ckpt_0000012.pt"]
    assert "at step 12" in run(out, data, nproc=1)
    train, val = read_log(out)
    ref_train, ref_val = read_log(reference)
    assert_same_losses(train, {s: ref_train[s] for s in range(10, STEPS)}, 1e-5)
    assert_same_losses(val, {s: ref_val[s] for s in (20, 40)}, 1e-5)


@pytest.mark.slow
def test_sigterm_storm_from_slurm_and_torchrun_still_checkpoints_and_resumes(data, reference, tmp_path):
    """What one scancel does to a torchrun job: Slurm sends SIGTERM to every process of the step
    (the workers too), and torchrun, on its own SIGTERM, sends the workers another one a moment
    later. Both are one request: every rank finishes its step, checkpoints, exits 3; the same
    command resumes to the uninterrupted run's losses. The TERMs land during training, torchrun's
    right after the workers' own, while the ranks finish their step and checkpoint (a real
    model's step and checkpoint take seconds; this one's a fraction of one: an evaluation, which
    used to keep them busy, now ends at once)."""
    proc = launch(tmp_path, data, nproc=2)
    deadline, log = time.time() + 60, tmp_path / "log.jsonl"
    workers = []
    while not (len(workers) == 2 and log.exists() and '"step": 1, "loss"' in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        workers = worker_pids(proc.pid)
        time.sleep(0.005)
    for pid in workers:  # slurmstepd signals every process of the step...
        os.kill(pid, signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # ...torchrun among them, which passes it on to its workers
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun exits 1 after a SIGTERM, whatever its workers did
    assert "Sending process" in output and "closing signal SIGTERM" in output, output  # it did forward
    stopped = re.search(r"checkpoint at step (\d+) saved, exiting with status 3", output)
    assert stopped, output
    assert (tmp_path / f"ckpt_{int(stopped.group(1)):07d}.pt").exists()
    output = run(tmp_path, data, nproc=2)
    assert f"at step {stopped.group(1)}" in output and (tmp_path / "DONE").exists()
    train, val = read_log(tmp_path)
    ref_train, ref_val = read_log(reference)
    assert_same_losses(train, ref_train, 1e-5)
    assert_same_losses(val, ref_val, 1e-5)


def test_lr_schedule():
    cfg = TrainConfig()  # 6e-4 peak, 715 warmup, cosine to 6e-5 at 19,073
    assert get_lr(0, cfg) == pytest.approx(6e-4 / 715)
    assert get_lr(714, cfg) == pytest.approx(6e-4)
    assert get_lr(715, cfg) == pytest.approx(6e-4)
    assert get_lr((715 + 19073) // 2, cfg) == pytest.approx((6e-4 + 6e-5) / 2, rel=1e-3)
    assert get_lr(19072, cfg) == pytest.approx(6e-5, rel=1e-4)
    assert get_lr(19073, cfg) == get_lr(30000, cfg) == 6e-5
    assert all(get_lr(s, cfg) >= get_lr(s + 1, cfg) for s in range(715, 19073))


def test_config_resolution(tmp_path):
    assert parse_config([]) == TrainConfig()
    cfg = parse_config(["--preset", "cpu-smoke"])
    assert cfg.n_layer == PRESETS["cpu-smoke"]["n_layer"] and cfg.preset == "cpu-smoke"
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"lr": 1, "max_steps": 7, "compile": True}))
    cfg = parse_config(["--preset", "cpu-smoke", "--config", str(file), "--max-steps", "9",
                        "--compile", "false", "--shuffle"])
    assert (cfg.lr, cfg.max_steps, cfg.compile, cfg.shuffle, cfg.n_layer) == (1.0, 9, False, True, 2)


@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "ten"], "invalid int value"),
    (["--seq-len", "2048"], "longer than the model's context"),
    (["--dtype", "float8"], "--dtype must be one of"),
    (["--nope"], "unrecognized arguments"),
])
def test_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bad_input_exit_2(data, reference, tmp_path, capsys):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}

    def fails(extra, message):
        argv = TINY + ["--data", str(data), "--out-dir", str(tmp_path / "run"), *extra]
        try:
            assert main(argv) == 2
        finally:  # main() installs its stop-signal handlers: give pytest its own back
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err

    fails(["--data", str(tmp_path / "nothing")], "python -m pipeline.fineweb")
    fails(["--total-batch-size", "500"], "not divisible")
    fails(["--vocab-size", "32"], "raise --vocab-size")
    fails(["--resume", str(tmp_path / "missing.pt")], "no such checkpoint")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    fails(["--resume", str(tmp_path / "garbage.pt")], "not a checkpoint of this project")
    (tmp_path / "run").mkdir()
    shutil.copy(reference / "ckpt_0000010.pt", tmp_path / "run")
    fails(["--n-embd", "64"], "another model config")


def in_process(argv):
    """main(argv) in this process. It must give the signal handlers back as it found them: a
    trainer's SIGTERM handler left behind would, for one, keep forked worker pools from stopping."""
    signals = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    before = [signal.getsignal(s) for s in signals]
    status = main(argv)
    assert [signal.getsignal(s) for s in signals] == before
    return status


def test_hellaswag_hook_runs_and_a_missing_file_is_refused_at_start(tmp_path, capsys):
    """A GPT-2-vocabulary model on GPT-2-token shards (no manifest: GPT-2 assumed) scores the
    HellaSwag examples it is given; with the data unavailable the preflight refuses to start."""
    rng = np.random.default_rng(0)
    for i, n in enumerate([1024, 4096]):
        write_shard(tmp_path / f"g_{'val' if i == 0 else 'train'}_{i:06d}.bin", rng.integers(0, 50257, n))
    example = {"ctx": "A man sits down.", "ctx_a": "A man sits down.", "ctx_b": "", "label": 1,
               "activity_label": "Sitting", "endings": ["He flies.", "He rests.", "He sings.", "He runs."]}
    (tmp_path / "hs.jsonl").write_text("\n".join(json.dumps(example) for _ in range(3)) + "\n")
    argv = TINY + ["--data", str(tmp_path), "--vocab-size", "50304", "--max-steps", "2",
                   "--micro-batch-size", "2", "--seq-len", "16", "--total-batch-size", "64",
                   "--eval-every", "0", "--checkpoint-every", "0", "--hellaswag-every", "1"]
    assert in_process(argv + ["--out-dir", str(tmp_path / "a"),
                              "--hellaswag-data", str(tmp_path / "hs.jsonl")]) == 0
    rows = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "hellaswag_acc_norm" in r]
    assert [r["step"] for r in scored] == [0, 1, 2] and all(r["hellaswag_n"] == 3 for r in scored)
    harness = [r for r in rows if "hellaswag_harness_acc_norm" in r]  # both styles at the end
    assert [(r["step"], r["hellaswag_harness_n"]) for r in harness] == [(2, 3)]
    out = capsys.readouterr().out
    assert "HellaSwag (default style) acc_norm" in out and "HellaSwag (harness style) acc_norm" in out
    assert in_process(argv + ["--out-dir", str(tmp_path / "b"),
                              "--hellaswag-data", str(tmp_path / "missing.jsonl")]) == 2
    assert "python hellaswag.py --download" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_compile_keeps_eval_and_samples_working(data, tmp_path):
    """--compile in one process: training runs compiled, validation and generation still run
    (eagerly), and checkpoint keys carry no `_orig_mod.` prefix. Dynamo's aot_eager backend: what
    is asserted does not depend on the backend, and inductor's ~20 s of code generation runs in
    test_fsdp.py's compiled bf16 run."""
    output = run(tmp_path, data, extra=["--compile", "--max-steps", "3", "--eval-every", "2"],
                 env={**os.environ, "TRAIN_COMPILE_BACKEND": "aot_eager"})
    assert output.count("val loss") == 3 and output.count("sample:") == 3
    ckpt = torch.load(tmp_path / "ckpt_0000003.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])


def test_help_groups_every_flag_with_a_line_of_its_own(capsys):
    from dataclasses import fields

    from trainer.config import GROUPS

    with pytest.raises(SystemExit) as e:
        parse_config(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "python -m trainer.launch --standalone --nproc_per_node=8 train_gpt2.py" in out
    for name in GROUPS:
        assert f"\n{name}:\n" in out
    for f in fields(TrainConfig):
        assert f.metadata["group"] in GROUPS and len(f.metadata["help"]) > 10, f.name
        if f.name != "preset":
            assert "--" + f.name.replace("_", "-") in out


def test_float16_with_loss_scaling_trains_and_resumes_exactly(data, tmp_path):
    """--dtype float16 (V100/T4's precision): autocast plus a GradScaler, whose scale is saved in
    the checkpoint so a resume is exact. Runs on CPU, where torch implements both."""
    extra = ["--dtype", "float16", "--max-steps", "12", "--checkpoint-every", "6", "--eval-every", "6"]
    output = run(tmp_path / "a", data, extra=extra)
    assert "float16 autocast with loss scaling" in output
    train, _ = read_log(tmp_path / "a")
    assert all(math.isfinite(v) for v in train.values()) and train[11] < train[0] - 0.3
    ckpt = torch.load(tmp_path / "a" / "ckpt_0000006.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "ckpt_0000012.pt").unlink()
    (tmp_path / "b" / "DONE").unlink()
    run(tmp_path / "b", data, extra=extra)
    assert read_log(tmp_path / "b")[0] == train


def test_peak_flops_by_exact_gpu_name():
    from trainer.metrics import peak_flops_of

    assert peak_flops_of("NVIDIA L40") == 181e12 and peak_flops_of("NVIDIA L4") == 121e12
    assert peak_flops_of("NVIDIA L40S") == 362e12
    assert peak_flops_of("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_of("NVIDIA H100 PCIe") == 756e12 and peak_flops_of("NVIDIA H100 NVL") == 835e12
    assert peak_flops_of("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_of("Tesla V100-SXM2-32GB") == 125e12 and peak_flops_of("Tesla T4") == 65e12
    assert peak_flops_of("NVIDIA GeForce RTX 4090") == 165e12
    assert peak_flops_of("NVIDIA A10G") == 70e12 and peak_flops_of("NVIDIA A10") == 125e12
    assert peak_flops_of("NVIDIA H200") == 989e12 and peak_flops_of("NVIDIA H200 NVL") == 835e12
    assert peak_flops_of("NVIDIA GH200 480GB") == 989e12 and peak_flops_of("NVIDIA H20") == 148e12
    assert peak_flops_of("NVIDIA H800") == 989e12 and peak_flops_of("NVIDIA H800 PCIe") == 756e12
    assert peak_flops_of("NVIDIA GeForce RTX 3090") == 71e12 and peak_flops_of("NVIDIA RTX A6000") == 155e12
    assert peak_flops_of("NVIDIA RTX 6000 Ada Generation") is None  # unknown: no MFU, not a wrong one


def stop_request_process(tmp_path, same_request_s):
    """A process with the trainer's stop handlers, busy forever (a step that never ends)."""
    code = ("import time, sys; sys.path.insert(0, '.')\n"
            "from trainer.signals import StopRequest\n"
            f"StopRequest.SAME_REQUEST_S = {same_request_s}\n"
            f"stop = StopRequest({str(tmp_path / 'STOP')!r})\n"
            "print('ready', flush=True)\n"
            "while True: time.sleep(0.01)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("later", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_second_ctrl_c_after_the_window_ends_the_process_at_once(tmp_path, later):
    """Ctrl-C asks for a checkpoint; another within the window (torchrun or srun passing the
    same Ctrl-C on) is the same request; one after it is a person meaning "now". Under torchrun
    that second Ctrl-C reaches the workers as SIGTERM."""
    proc = stop_request_process(tmp_path, same_request_s=1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(later)  # within the window
    time.sleep(1.2)
    assert proc.poll() is None, "a repeat within the window only records the request"
    proc.send_signal(later)  # after it
    assert proc.wait(timeout=10) == -later


@pytest.mark.parametrize("signals", [
    (signal.SIGTERM, signal.SIGUSR1, signal.SIGTERM, signal.SIGTERM),
    (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR1)], ids=["sigterm", "ctrl-c-then-usr1"])
def test_repeated_sigterm_never_ends_the_process(tmp_path, signals):
    """A GraceTime preemption sends SIGTERM at once and again when the grace time ends, then
    allows KillWait seconds: the repeat must not cut the checkpoint short. SIGUSR1 (Slurm's
    warning) never hurries a stop either."""
    proc = stop_request_process(tmp_path, same_request_s=0.2)
    try:
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.3)  # each past the window
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_gpt2_124m_preset_two_ranks_end_to_end(tmp_path):
    """The full gpt2-124m shape (12 x 12 x 768, a context of 1024, vocab 50304) under 2-rank
    torchrun: micro-batch 1, 2 accumulation steps, fused AdamW, validation, samples, HellaSwag, a
    checkpoint. Sequences of 256 tokens, not 1024: the shapes of every weight, gradient bucket and
    optimizer state are the same, and each step costs a quarter. fp32 and eager: on a CPU without
    native bf16 one 124M step in bf16 takes minutes, and compiling the 124M model takes longer
    than the suite (ENVIRONMENT.md); bf16 and compile run on 2 ranks with a small model in
    test_fsdp.py. (~30 s)"""
    rng = np.random.default_rng(0)
    data = tmp_path / "shards"
    data.mkdir()
    pattern = rng.integers(0, 50257, 97)  # a repeating stream: the loss falls within 3 steps
    write_shard(data / "g_val_000000.bin", np.tile(pattern, 40))
    write_shard(data / "g_train_000001.bin", np.tile(pattern, 200))
    example = {"ctx": "A woman is outside with a bucket and a dog. The dog is running around trying to "
                      "avoid a bath. She", "ctx_a": "", "ctx_b": "", "activity_label": "Bathing dog",
               "endings": ["rinses the bucket off with soap and blow dry the dog's head.",
                           "uses a hose to keep it from getting soapy.",
                           "gets the dog wet, then it runs away again.",
                           "gets into a bath tub with the dog."], "label": 2}
    (tmp_path / "hs.jsonl").write_text(json.dumps(example) + "\n" + json.dumps({**example, "label": 0}) + "\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train_gpt2.py", "--preset", "gpt2-124m", "--data", str(data), "--out-dir", str(out),
           "--seq-len", "256", "--micro-batch-size", "1", "--total-batch-size", "1024",
           "--max-steps", "3", "--lr", "1e-4", "--min-lr", "1e-4", "--warmup-steps", "1", "--eval-every", "3",
           "--val-tokens", "512", "--num-samples", "1",
           "--sample-tokens", "4", "--hellaswag-every", "3", "--hellaswag-data", str(tmp_path / "hs.jsonl"),
           "--checkpoint-every", "0", "--core-every", "0"]  # not CORE, even with data/eval_bundle here
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "124,475,904 parameters" in proc.stdout and "AdamW fused" in proc.stdout
    assert "2 ranks (DDP) x 2 accumulation steps x 1 x 256 tokens" in proc.stdout
    train, val = read_log(out)
    assert sorted(train) == [0, 1, 2] and all(math.isfinite(v) for v in train.values())
    assert train[2] < train[1] < train[0] and sorted(val) == [0, 3] and val[3] < val[0]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["hellaswag_n"] for r in rows if "hellaswag_n" in r] == [2, 2]
    assert sum(1 for r in rows if "samples" in r) == 2
    ckpt = torch.load(out / "ckpt_0000003.pt", weights_only=True, mmap=True)
    assert ckpt["step"] == 3 and ckpt["model"]["lm_head.weight"].shape == (50304, 768)
    assert ckpt["model"]["transformer.wpe.weight"].shape == (1024, 768)
