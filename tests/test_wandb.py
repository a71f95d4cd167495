"""metrics.py and --wandb with real wandb in offline mode (no key, no network): what the trainer
logs is read back from the offline run files; a resumed run continues the same wandb run; without
--wandb nothing imports wandb; without a key one clear line, no traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_train_flags
from trainer.metrics import GPT2_124M_REFERENCE, MetricsLogger

REPO = Path(__file__).resolve().parent.parent
STEPS = 30
TINY = tiny_train_flags(STEPS, total_batch_size=256, eval_every=10)


def clean_env(tmp_path, **extra):
    """No WANDB_* from the caller, and a HOME without ~/.netrc: wandb sees no API key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_SILENT="true", **extra)
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def train_cmd(data, out, *extra, nproc=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    return [*launcher, "train_gpt2.py", *TINY, "--data", str(data), "--out-dir", str(out), *extra]


def log_lines(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def test_logger_lines_reference_lines_samples_and_other_ranks(tmp_path, read_wandb_runs):
    """MetricsLogger itself: log.jsonl lines, wandb history at the given steps, GPT-2 reference
    lines next to val loss (GPT-2 vocabulary), samples as a table; rank 1 writes nothing."""
    env_before = dict(os.environ)
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    try:
        config = {"vocab_size": 50304, "n_layer": 2}
        m = MetricsLogger(tmp_path / "run", config, 0, wandb_enabled=True, wandb_project="t",
                          wandb_run_name="unit")
        other = MetricsLogger(tmp_path / "other", config, 1, wandb_enabled=True)
        m.log({"step": 0, "val_loss": 4.5})
        m.log_samples(0, ["hello", "world"])
        m.log({"step": 0, "loss": 5.0, "lr": 1e-3, "mfu": None})
        m.log({"step": 1, "loss": 4.0, "lr": 1e-3, "mfu": None})
        other.log({"step": 0, "loss": 9.0})
        other.log_samples(0, ["x"])
        run_id = m.run_id
        m.finish()
        m.finish()  # idempotent
        other.finish()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert not (tmp_path / "other").exists() and other.run_id is None
    lines = log_lines(tmp_path / "run")
    times = [line.pop("time") for line in lines]  # every line says when it was written
    assert times == sorted(times) and abs(times[-1] - time.time()) < 60
    assert lines == [
        {"step": 0, "val_loss": 4.5}, {"step": 0, "samples": ["hello", "world"]},
        {"step": 0, "loss": 5.0, "lr": 1e-3, "mfu": None}, {"step": 1, "loss": 4.0, "lr": 1e-3, "mfu": None}]
    [run] = read_wandb_runs(tmp_path / "run")
    assert run["id"] == run_id and run["config"]["n_layer"] == 2
    assert run["config"]["reference"] == {"gpt2_124m": GPT2_124M_REFERENCE}
    assert run["summary"]["gpt2_124m/hellaswag_acc_norm"] == 0.2955
    step0, step1 = run["history"]
    assert (step0["_step"], step0["val_loss"], step0["loss"]) == (0, 4.5, 5.0)
    assert step0["gpt2_124m/val_loss"] == 3.2924  # the reference line beside our val loss
    assert step0["samples._type"] == "table-file" and step0["samples.nrows"] == 2
    assert "mfu" not in step0  # None values are left out of wandb
    assert (step1["_step"], step1["loss"]) == (1, 4.0)


def test_without_wandb_flag_nothing_imports_wandb(char_shards, tmp_path, monkeypatch):
    """A whole (short) training run in this process with `import wandb` made to fail."""
    import torch
    from train_gpt2 import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # any import of wandb now raises ImportError
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun does: a tiny model only loses from more threads
    try:
        assert main([*train_cmd(char_shards, out)[2:], "--max-steps", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (out / "DONE").exists() and not (out / "wandb").exists()
    assert len([r for r in log_lines(out) if "loss" in r]) == 3


@pytest.mark.parametrize("nproc", [1, 2])
def test_wandb_without_key_is_one_clear_line(char_shards, tmp_path, nproc):
    """No API key and no WANDB_MODE: one line saying what to set, exit 2, no traceback; under
    torchrun the other rank stops too (rank 0's outcome is broadcast) instead of hanging."""
    proc = subprocess.run(train_cmd(char_shards, tmp_path / "run", "--wandb", nproc=nproc), cwd=REPO,
                          env=clean_env(tmp_path), capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "--wandb" in errors[0] and "WANDB_API_KEY" in errors[0] and "WANDB_MODE=offline" in errors[0]
    if nproc == 1:
        assert proc.returncode == 2 and "Traceback" not in output, output
    else:  # torchrun reports the workers' status 2 as a failure of its own
        assert proc.returncode != 0 and "exitcode  : 2" in output, output


def test_offline_history_holds_train_and_val_and_resume_continues_the_run(char_shards, tmp_path,
                                                                           read_wandb_runs):
    out = tmp_path / "run"
    env = clean_env(tmp_path, WANDB_MODE="offline")
    cmd = train_cmd(char_shards, out, "--wandb", "--wandb-project", "tests", "--wandb-run-name", "resume")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:  # stop it a few steps in
        if (out / "log.jsonl").exists() and any(r.get("step", 0) >= 5 and "loss" in r for r in log_lines(out)):
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=90)
    assert proc.returncode == 3, output
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout

    runs = read_wandb_runs(out)
    assert len(runs) == 2, "expected one offline run folder per process"
    assert runs[0]["id"] == runs[1]["id"], "the resumed process must continue the same wandb run"
    for run in runs:
        assert run["config"]["n_layer"] == 2 and run["config"]["max_steps"] == STEPS
    train = [(h["_step"], h["loss"]) for run in runs for h in run["history"] if "loss" in h]
    val = {h["_step"]: h["val_loss"] for run in runs for h in run["history"] if "val_loss" in h}
    steps = [s for s, _ in train]
    assert steps == list(range(STEPS)), "one continuous curve: every step once, in order"
    assert 0 < len([h for h in runs[0]["history"] if "loss" in h]) < STEPS
    # the same numbers as log.jsonl (which the resume trimmed and continued)
    lines = log_lines(out)
    assert dict(train) == pytest.approx({r["step"]: r["loss"] for r in lines if "loss" in r})
    assert val == pytest.approx({r["step"]: r["val_loss"] for r in lines if "val_loss" in r})
    assert sorted(val) == [0, 10, 20, 30]
    samples = [h for run in runs for h in run["history"] if "samples._type" in h]
    assert sorted(h["_step"] for h in samples) == [0, 10, 20, 30]
    assert all("gpt2_124m/val_loss" not in h for run in runs for h in run["history"]), \
        "a char-level loss is not on GPT-2's scale: no reference line"
