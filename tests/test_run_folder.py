"""The run folder is the user's record (trainer/run_folder.py): one writer at a time, a start that
would mix two runs refused, a finished run left alone, the log only ever appended to."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import train_gpt2
from conftest import start_ranks, tiny_train_flags
from trainer import run_folder
from trainer.checkpoint import save_checkpoint
from trainer.config import parse_config
from trainer.distributed import Runtime
from trainer.recipes import scheduled_lr
from trainer.metrics import read_log

REPO = Path(__file__).resolve().parent.parent
STEPS = 8
FLAGS = tiny_train_flags(steps=STEPS, total_batch_size=256, eval_every=4) + ["--checkpoint-every", "4"]


def train(data, out, *extra):
    return train_gpt2.main([*FLAGS, "--data", str(data), "--out-dir", str(out), *extra])


@pytest.fixture(scope="module")
def finished(char_shards, tmp_path_factory):
    """A finished 8-step run: checkpoints at 4 and 8, DONE, report."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(char_shards, out) == 0
    return out


@pytest.fixture
def copy_of(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def losses(records):
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def hold_in_another_process(out, job):
    """A process holding `out` as take_lock does for a run of Slurm job `job`, until its stdin
    closes (pipeline.lock alone: no torch to import)."""
    out.mkdir(parents=True)
    code = ("import sys; from pipeline.lock import FolderLock; "
            "FolderLock(sys.argv[1], sys.argv[2]).__enter__(); print('held', flush=True); sys.stdin.read()")
    role = f"a training run (Slurm job {job})"
    holder = subprocess.Popen([sys.executable, "-c", code, str(out / ".lock"), role], cwd=REPO,
                              text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_writer_is_refused_and_a_requeue_of_the_same_job_takes_over(char_shards, tmp_path,
                                                                              capsys, monkeypatch):
    out = tmp_path / "run"
    holder = hold_in_another_process(out, "77")
    try:
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        assert train(char_shards, out) == 2
        [error] = capsys.readouterr().err.splitlines()
        assert error.startswith(f"error: --out-dir {out} is in use by a training run (Slurm job 77) "
                                f"(host {os.uname().nodename}, pid {holder.pid}, since "), error
        assert error.endswith("; wait for it to end, or stop it, then run this command again")
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".lock")) == []
        # the same Slurm job, requeued while its previous start is still ending: waits, then holds
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        threading.Timer(1.0, holder.stdin.close).start()
        t0 = time.monotonic()
        lock = run_folder.take_lock(out)
        assert time.monotonic() - t0 > 0.9 and holder.wait(timeout=10) == 0
        assert "waiting up to 180 s for the previous start of Slurm job 77" in capsys.readouterr().out
        lock.__exit__(None, None, None)
    finally:
        holder.kill()


def _hold(rank, cfg, init_file, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        with run_folder.hold(cfg, Runtime.from_env("cpu"), scheduled_lr):
            results[rank] = "held"
    except run_folder.RunFolderError as e:
        results[rank] = str(e)
    dist.barrier()
    dist.destroy_process_group()


def test_every_rank_fails_alike_when_the_folder_is_held(tmp_path):
    cfg = parse_config(["--out-dir", str(tmp_path / "run")])
    lock = run_folder.take_lock(tmp_path / "run")  # the ranks do not inherit it (pipeline/lock.py)
    results = start_ranks(_hold, cfg, tmp_path / "pg")
    assert results[0] == results[1] and "is in use by a training run" in results[0], results
    lock.__exit__(None, None, None)


def test_the_log_is_appended_to_and_readers_drop_the_lines_a_resume_supersedes(char_shards, finished,
                                                                                copy_of):
    """Resumed at step 4 after a kill that tore a line: log.jsonl is the same file, its old bytes
    untouched; the readers see each step once, with the uninterrupted run's losses."""
    (copy_of / "ckpt_0000008.pt").unlink()
    (copy_of / "DONE").unlink()
    log = copy_of / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 7, "lo')
    before, inode = log.read_bytes(), log.stat().st_ino
    assert train(char_shards, copy_of) == 0
    assert log.stat().st_ino == inode and log.read_bytes().startswith(before)
    records = read_log(log)
    assert [r["step"] for r in records if "loss" in r] == list(range(STEPS))
    assert losses(records) == losses(read_log(finished / "log.jsonl"))
    attempts = json.loads((copy_of / "report.json").read_text())["time"]["attempts"]
    assert [(a["start_step"], a["end_step"]) for a in attempts] == [(0, 4), (4, STEPS)]


def test_a_start_that_would_mix_two_runs_is_refused_and_changes_nothing(char_shards, copy_of, capsys):
    before = {p.name: p.read_bytes() for p in copy_of.iterdir()}
    assert train(char_shards, copy_of, "--resume", "never") == 2
    [error] = capsys.readouterr().err.splitlines()
    assert error == (f"error: --resume never: {copy_of} holds a run (2 checkpoint(s) up to "
                     f"ckpt_0000008.pt, log.jsonl); starting over there would mix two runs: choose "
                     f"another --out-dir, or move that run aside first (--resume auto continues it)")
    earlier = copy_of / "ckpt_0000004.pt"
    assert train(char_shards, copy_of, "--resume", str(earlier)) == 2
    [error] = capsys.readouterr().err.splitlines()
    assert f"--resume {earlier}: {copy_of} holds a run" in error and "mix two histories" in error
    assert {p.name: p.read_bytes() for p in copy_of.iterdir()} == before


def test_keeping_the_newest_never_deletes_the_checkpoint_just_saved(tmp_path):
    """A checkpoint of a later step (a damaged one resuming skipped, another history) is neither
    counted among the newest kept nor deleted."""
    for step in (5, 100):
        torch.save({"step": step}, tmp_path / f"ckpt_{step:07d}.pt")
    save_checkpoint({"step": 10}, tmp_path, 10, keep=1)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*")) == ["ckpt_0000010.pt", "ckpt_0000100.pt"]


def test_a_finished_run_does_nothing_and_more_steps_keep_the_schedule(char_shards, copy_of, capsys):
    before = {p.name: p.read_bytes() for p in copy_of.iterdir()}
    assert train(char_shards, copy_of) == 0
    out = capsys.readouterr().out
    assert f"{copy_of}: already finished (8 steps, --max-steps 8; report: {copy_of / 'report.md'}): " \
           f"nothing to do; to train further, pass a larger --max-steps" in out
    assert {p.name: p.read_bytes() for p in copy_of.iterdir()} == before, "nothing run, nothing written"

    assert train(char_shards, copy_of, "--max-steps", "12") == 0
    out = capsys.readouterr().out
    assert ("note: --max-steps 12 (the run was planned for 8): the learning rate keeps its schedule, "
            "cosine to 1.00e-04 at step 8, then 1.00e-04 to step 12; to stretch the cosine over the "
            "new length instead pass --lr-decay-steps 12 (at step 8 the learning rate would go from "
            "1.00e-04 to ") in out, out
    lrs = {r["step"]: r["lr"] for r in read_log(copy_of / "log.jsonl") if "lr" in r}
    assert [lrs[s] for s in range(8, 12)] == [1e-4] * 4, "no jump: the floor, as planned"
    assert (copy_of / "DONE").read_text() == "12\n"

    assert train(char_shards, copy_of, "--max-steps", "16", "--lr-decay-steps", "16") == 0
    stretched = parse_config([*FLAGS, "--max-steps", "16", "--lr-decay-steps", "16"])
    assert (f"note: --lr-decay-steps 16 (the run's cosine ended at step 8): at step 12 the learning "
            f"rate goes from 1.00e-04 to {scheduled_lr(12, stretched):.2e}, cosine to 1.00e-04 at "
            f"step 16, stopping at step 16") in capsys.readouterr().out
    lrs = {r["step"]: r["lr"] for r in read_log(copy_of / "log.jsonl") if "lr" in r}
    assert [lrs[s] for s in range(12, 16)] == [scheduled_lr(s, stretched) for s in range(12, 16)]
    assert lrs[12] > 1e-4


def stop_after(polls):
    """A should_stop that says True from its (polls + 1)-th call on."""
    calls = iter(range(1 << 30))
    return lambda: next(calls) >= polls


def test_hellaswag_core_and_samples_end_early_on_a_stop_request(tmp_path):
    """should_stop, polled before each batch (HellaSwag), row (CORE) or token (samples): once it
    says True the evaluation returns None, with no further forward."""
    from core_bundle import write_bundle
    from evaluation import core, hellaswag
    from models.gpt2 import GPT, GPTConfig
    from pipeline.tokenizer import get_gpt2_encoding

    enc, forwards = get_gpt2_encoding(), []

    def model_fn(idx):
        forwards.append(idx.shape)
        return torch.zeros(*idx.shape, enc.n_vocab)

    example = {"ctx": "A man sits down.", "ctx_a": "A man sits down.", "ctx_b": "", "label": 1,
               "activity_label": "Sitting", "endings": ["He flies.", "He rests.", "He sings.", "He runs."]}
    assert hellaswag.evaluate(model_fn, [example] * 40, enc, batch_size=2, should_stop=stop_after(3)) is None
    assert len(forwards) == 3  # of 20 batches
    tasks, _ = core.load_tasks(write_bundle(tmp_path / "eval_bundle"))
    forwards.clear()
    prepared = core.prepare(tasks, enc, context=64)
    assert core.evaluate(model_fn, prepared, batch_size=1, should_stop=stop_after(2)) is None
    assert len(forwards) == 2  # of 12 rows
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=1, n_embd=8))
    prompt = torch.zeros(1, 2, dtype=torch.long)
    assert model.generate(prompt, 10, should_stop=stop_after(3)) is None
    assert model.generate(prompt, 10, should_stop=stop_after(10)).shape == (1, 12)
