"""CORE during training: the preflight checks the bundle, --core-every logs CORE to log.jsonl and
wandb, plot.py draws it beside GPT-2's, the run report shows the per-task table; the report's
HellaSwag command works for the run."""

import json
import shutil

import numpy as np
import pytest

import hellaswag as hellaswag_cli
import train_gpt2
from conftest import tiny_train_flags
from core_bundle import ABSENT, write_bundle
from evaluation import core
from evaluation.core import load_rows
from shards.format import write_shard
from trainer import plots
from trainer.metrics import read_log


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("bundle") / "eval_bundle")


def gpt2_shards(folder):
    """GPT-2-token shards (no manifest, no tokenizer.json: GPT-2 is assumed)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate([1024, 4096]):
        write_shard(folder / f"g_{'val' if i == 0 else 'train'}_{i:06d}.bin", rng.integers(0, 50257, n))
    return folder


def test_preflight_checks_the_bundle_like_the_hellaswag_file(tmp_path, bundle, capsys, monkeypatch):
    data = gpt2_shards(tmp_path / "data")
    base = tiny_train_flags(steps=3, total_batch_size=128, eval_every=0) + [
        "--data", str(data), "--out-dir", str(tmp_path / "run"), "--vocab-size", "50304", "--block-size", "64",
        "--seq-len", "16", "--preflight"]  # cpu-smoke's --core-every 0, overridden below

    def preflight(*flags):
        status = train_gpt2.main(base + list(flags))
        out, err = capsys.readouterr()
        return status, out, err

    monkeypatch.setattr(core, "DEFAULT_BUNDLE", tmp_path / "no-bundle")
    status, out, err = preflight("--core-every", "auto")  # no bundle: CORE is simply not run
    assert status == 0 and f"CORE: no bundle at {tmp_path / 'no-bundle'}: not run" in out
    status, out, err = preflight("--core-every", "5")  # asked for: refused before any work
    assert status == 2 and f"CORE bundle: {tmp_path / 'no-bundle' / 'core.yaml'} not found" in err
    assert "or pass --core-every 0" in err
    status, out, err = preflight("--core-every", "auto", "--core-bundle", str(bundle), "--core-max-per-task", "1")
    assert status == 2 and "--core-max-per-task 1: CORE draws each row's 1 shots from the other kept rows" in err
    status, out, err = preflight("--core-every", "auto", "--core-bundle", str(bundle))
    assert status == 0
    assert f"CORE: 3 of 22 tasks in {bundle}; 19 absent: {', '.join(ABSENT)}; run at the last step" in out
    status, out, err = preflight("--core-every", "0", "--core-bundle", str(tmp_path / "no-bundle"))
    assert status == 0 and "CORE" not in out


def test_training_logs_core_and_the_report_shows_it(tmp_path, bundle, capsys, monkeypatch, read_wandb_runs):
    """A GPT-2-vocabulary model (context 64) on GPT-2-token shards with --core-every 2 over 3 steps:
    CORE at steps 2 and 3 (the last; not at step 0) in log.jsonl, its rows built once, the plot and
    the run report with its per-task table; the report's HellaSwag command, run as written, works
    for this short-context model."""
    data = gpt2_shards(tmp_path / "data")
    long_ending = {"ctx": "A man sits down.", "ctx_a": "A man sits down.", "ctx_b": "", "label": 1,
                   "activity_label": "Sitting",
                   "endings": ["He flies.", "He rests.", "He sings.", " ".join(["and then he rests"] * 20)]}
    short = dict(long_ending, endings=["He flies.", "He rests.", "He sings.", "He runs."])
    hs = tmp_path / "hs.jsonl"
    hs.write_text("".join(json.dumps(ex) + "\n" for ex in (short, long_ending, short)))
    run = tmp_path / "run"
    argv = tiny_train_flags(steps=3, total_batch_size=128, eval_every=0) + [
        "--data", str(data), "--out-dir", str(run), "--vocab-size", "50304", "--block-size", "64",
        "--seq-len", "16", "--micro-batch-size", "4", "--checkpoint-every", "0", "--num-samples", "0",
        "--core-every", "2", "--core-bundle", str(bundle), "--core-max-per-task", "3",
        "--hellaswag-data", str(hs), "--wandb"]
    monkeypatch.setenv("WANDB_MODE", "offline")
    loaded = []
    monkeypatch.setattr(core, "load_rows", lambda task, *args: loaded.append(task.label) or load_rows(task, *args))
    assert train_gpt2.main(argv) == 0
    assert loaded == ["arc_easy", "winograd", "lambada_openai"]  # once a run, not at every evaluation
    out = capsys.readouterr().out
    assert f"CORE: 3 of 22 tasks in {bundle}; 19 absent: {', '.join(ABSENT)}; run every 2 steps and at the last" in out
    assert "step     2 | CORE over 3 of 22 tasks " in out
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "core" in r]
    assert [r["step"] for r in scored] == [2, 3]  # every 2 steps but step 0, and the last
    last = scored[-1]
    assert [t["n"] for t in last["core_per_task"].values()] == [3, 3, 3] and last["core_missing"] == ",".join(ABSENT)
    assert last["core_tasks"] == 3
    assert last["core"] == pytest.approx(sum(t["centered"] for t in last["core_per_task"].values()) / 3)
    assert last["core_gpt2"] == pytest.approx(0.3) and last["core_gpt2_model"] == "OpenAI GPT-2 124M"
    (wandb_run,) = read_wandb_runs(run)
    logged = [h for h in wandb_run["history"] if "core" in h]
    assert [(h["_step"], h["core"]) for h in logged] == [(r["step"], r["core"]) for r in scored]
    assert logged[-1]["core_per_task.arc_easy.centered"] == last["core_per_task"]["arc_easy"]["centered"]
    assert (wandb_run["summary"]["report/core"], wandb_run["summary"]["report/core_tasks"]) == (last["core"], 3)

    report = json.loads((run / "report.json").read_text())
    assert report["core"]["core"] == last["core"] and report["core"]["missing"] == ABSENT
    md = (run / "report.md").read_text()
    assert "## CORE" in md and f"CORE over 3 of 22 tasks (absent: {', '.join(ABSENT)}) at step 3" in md
    assert f"| CORE | {last['core']:.4f} at step 3 (over 3 of 22 tasks; see CORE below) |" in md
    assert f"| arc_easy | 3 | {last['core_per_task']['arc_easy']['accuracy']:.4f} |" in md
    _, drawn = plots.plot([run], tmp_path / "plot.png")
    assert drawn["CORE"]["CORE over 3 of 22 tasks"] == ([2, 3], [r["core"] for r in scored])
    assert drawn["CORE"]["OpenAI GPT-2 124M over the same 3 of 22 tasks"] == ([], [last["core_gpt2"]])

    command = report["commands"]["hellaswag"]
    assert "--skip-too-long" in command and f"--data {hs}" in command
    args = command.split(" > ")[0].split()[2:]  # what follows `python hellaswag.py`
    assert hellaswag_cli.main(args) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (result["n"], result["left_out"]) == (2, 1)


def test_a_resume_landing_on_a_multiple_scores_core_there_as_the_uninterrupted_run(tmp_path, bundle, capsys):
    """--core-every 2 over 4 steps: CORE at steps 2 and 4, never 0. Resumed from step 2's
    checkpoint (the log's later records superseded), the run scores CORE at 2 again, as the
    uninterrupted run did there: the same log, not a step 0 to skip."""
    data = gpt2_shards(tmp_path / "data")
    argv = tiny_train_flags(steps=4, total_batch_size=128, eval_every=0) + [
        "--data", str(data), "--vocab-size", "50304", "--block-size", "64", "--seq-len", "16",
        "--micro-batch-size", "4", "--checkpoint-every", "2", "--num-samples", "0", "--core-every", "2",
        "--core-bundle", str(bundle), "--core-max-per-task", "2"]

    def cores(run):  # the records that stand (the log is appended to, see trainer.metrics.read_log)
        return [(r["step"], r["core"]) for r in read_log(run / "log.jsonl") if "core" in r]

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train_gpt2.main(argv + ["--out-dir", str(whole)]) == 0
    assert [step for step, _ in cores(whole)] == [2, 4]
    shutil.copytree(whole, resumed)
    (resumed / "ckpt_0000004.pt").unlink()  # as if stopped after step 2's checkpoint
    (resumed / "DONE").unlink()
    assert train_gpt2.main(argv + ["--out-dir", str(resumed)]) == 0
    assert "at step 2" in capsys.readouterr().out
    assert cores(resumed) == cores(whole)
