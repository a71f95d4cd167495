"""trainer/report.py: the run report of real runs (2 ranks under torchrun, a stopped and resumed
run), checked against log.jsonl; the wandb summary; HellaSwag styles and references; the CLI's
error on a folder that is not a run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation import hellaswag
from conftest import tiny_train_flags
from trainer.report import main, write_report

REPO = Path(__file__).resolve().parent.parent
STEPS = 20
TOKENS_PER_STEP = 256
TINY = tiny_train_flags(STEPS, total_batch_size=TOKENS_PER_STEP, eval_every=10)


def train(data, out, nproc, *extra, env=None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "train_gpt2.py", *TINY, "--data", str(data),
           "--out-dir", str(out), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc, expect):
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == expect, output
    return output


def log_records(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def read_report(out):
    return json.loads((Path(out) / "report.json").read_text())


@pytest.fixture(scope="module")
def wandb_run(char_shards, tmp_path_factory):
    """A finished 2-rank run with wandb offline; (run folder, training output)."""
    tmp = tmp_path_factory.mktemp("report")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp), WANDB_MODE="offline", WANDB_SILENT="true")
    out = tmp / "run"
    output = finish(train(char_shards, out, 2, "--wandb", "--wandb-project", "tests", env=env), 0)
    return out, output


def test_report_of_a_two_rank_run_holds_every_field_and_the_logged_figures(wandb_run, char_shards):
    out, output = wandb_run
    assert f"report: {out / 'report.md'}" in output
    report, records = read_report(out), log_records(out)
    assert all("time" in r for r in records), "every log.jsonl line says when it was written"
    (setup,) = [r["setup"] for r in records if "setup" in r]
    train_lines = [r for r in records if "loss" in r]
    val = {r["step"]: (r["val_loss"], r["val_bpb"]) for r in records if "val_loss" in r}

    assert report["finished"] and report["steps"] == {"done": STEPS, "max_steps": STEPS}
    assert report["command"].startswith("python -m trainer.launch --standalone --nproc_per_node=2 train_gpt2.py ")
    assert report["command"].endswith(f"--out-dir {out} --wandb --wandb-project tests")
    assert report["config"] == json.loads((out / "config.json").read_text())
    assert report["code"] == {"git_commit": setup["versions"]["git_commit"],
                              "git_dirty": setup["versions"]["git_dirty"]}
    assert report["versions"]["torch"] == setup["versions"]["torch"] and "numpy" in report["versions"]
    assert report["model"]["parameters"] == setup["parameters"]
    assert report["hardware"] == {"devices": setup["devices"], "device_count": 2, "hosts": 1,
                                  "world_size": 2, "parallelism": "ddp", "precision": "float32"}
    # data: no manifest beside conftest's shards; tokens from the steps taken
    assert report["data"]["path"] == str(char_shards) and not report["data"]["manifest"]
    assert report["data"]["tokens_trained"] == STEPS * TOKENS_PER_STEP
    assert report["data"]["loader_epoch"] == train_lines[-1]["epoch"]
    # time and speed, from the logged lines
    (attempt,) = report["time"]["attempts"]
    assert (attempt["start_step"], attempt["end_step"], report["time"]["requeues"]) == (0, STEPS, 0)
    assert attempt["wall_time_s"] == pytest.approx(records[-1]["time"] - records[0]["time"], abs=1e-3)
    assert report["time"]["wall_time_s"] == attempt["wall_time_s"] > 0
    timed = train_lines[1:]  # the first step (warm-up) is left out
    assert report["throughput"]["tokens_per_s"] == pytest.approx(
        TOKENS_PER_STEP * len(timed) / sum(r["ms"] / 1000 for r in timed))
    assert report["throughput"]["mfu"] is None  # no known peak FLOP/s for a CPU
    # validation: final = the last step's, best = the lowest
    best_step = min(val, key=lambda s: val[s][0])
    assert report["validation"]["final"] == {"step": STEPS, "val_loss": val[STEPS][0],
                                             "val_bpb": val[STEPS][1]}
    assert report["validation"]["best_loss"] == {"step": best_step, "val_loss": val[best_step][0]}
    assert report["hellaswag"] == []  # a char-level model
    # plot, checkpoint and the commands that use it
    assert report["plot"] == "plot.png" and (out / "plot.png").read_bytes().startswith(b"\x89PNG")
    ckpt = str(out / f"ckpt_{STEPS:07d}.pt")
    saves = {r["step"]: r["checkpoint_s"] for r in records if "checkpoint_s" in r}
    assert STEPS - 1 in saves and all(seconds > 0 for seconds in saves.values())  # after the last step
    assert report["checkpoint"] == {"path": ckpt, "step": STEPS, "save_s": max(saves.values())}
    commands = report["commands"]
    assert commands["sample"] == f"python sample.py --checkpoint {ckpt}"
    assert commands["export"] == f"python hf_gpt2.py export {ckpt} {out}/hf"
    assert commands["resume"].startswith("python -m trainer.launch --standalone --nproc_per_node=2 train_gpt2.py "
                                         f"--config {out}/config.json --resume {ckpt}")
    md = (out / "report.md").read_text()
    for text in (f"{val[STEPS][0]:.4f}", f"{val[STEPS][1]:.4f}", f"{STEPS * TOKENS_PER_STEP:,}",
                 "2 x cpu", "DDP", "](plot.png)", setup["versions"]["git_commit"], commands["sample"],
                 commands["export"], commands["resume"], report["command"],
                 f"(the slowest save took {max(saves.values()):.1f} s)"):
        assert text in md, text


def test_sample_command_runs_as_written(wandb_run):
    """The report's sample command runs as written (from the directory the run was launched in)."""
    out, _ = wandb_run
    sample = read_report(out)["commands"]["sample"].replace("python", sys.executable, 1)
    result = subprocess.run(f"{sample} --num-samples 1 --max-new-tokens 4 --prompt ab", shell=True,
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_wandb_summary_holds_the_final_figures(wandb_run, read_wandb_runs):
    out, _ = wandb_run
    report = read_report(out)
    (run,) = read_wandb_runs(out)
    summary = run["summary"]
    assert summary["report/val_loss"] == report["validation"]["final"]["val_loss"]
    assert summary["report/val_bpb"] == report["validation"]["final"]["val_bpb"]
    assert summary["report/best_val_loss"] == report["validation"]["best_loss"]["val_loss"]
    assert summary["report/tokens_trained"] == STEPS * TOKENS_PER_STEP
    assert summary["report/tokens_per_s"] == pytest.approx(report["throughput"]["tokens_per_s"])
    assert summary["report/wall_time_s"] == pytest.approx(report["time"]["wall_time_s"])
    assert (summary["report/attempts"], summary["report/requeues"]) == (1, 0)
    assert summary["report/checkpoint"] == report["checkpoint"]["path"]
    assert "report/mfu" not in summary  # unknown: left out rather than logged as null


def test_stopped_and_resumed_run_reports_both_attempts(char_shards, tmp_path):
    """RUN/STOP during a 2-rank run (exit 3), then the same run resumed on 1 rank: one report
    covering all steps, with one entry per attempt and one restart."""
    out = tmp_path / "run"
    proc = train(char_shards, out, 2)
    log = out / "log.jsonl"
    deadline = time.time() + 60
    while not (log.exists() and '"loss"' in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.005)
    (out / "STOP").touch()
    output, _ = proc.communicate(timeout=120)  # torchrun reports its workers' status 3 as its own 1
    assert "exiting with status 3" in output and "exitcode  : 3" in output, output
    assert not (out / "report.md").exists(), "no report for a run that is not finished"
    stop_step = max(int(p.stem[5:]) for p in out.glob("ckpt_*.pt"))
    assert 0 < stop_step < STEPS
    finish(train(char_shards, out, 1), 0)

    report, records = read_report(out), log_records(out)
    first, second = report["time"]["attempts"]
    assert report["time"]["requeues"] == 1
    assert (first["start_step"], first["end_step"]) == (0, stop_step)
    assert (second["start_step"], second["end_step"]) == (stop_step, STEPS)
    assert (first["world_size"], second["world_size"]) == (2, 1)
    setups = [i for i, r in enumerate(records) if "setup" in r]
    assert second["wall_time_s"] == pytest.approx(records[-1]["time"] - records[setups[1]]["time"], abs=1e-3)
    assert report["time"]["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"], abs=2e-3)
    assert report["steps"]["done"] == STEPS and report["data"]["tokens_trained"] == STEPS * TOKENS_PER_STEP
    assert report["hardware"]["world_size"] == 1  # the attempt that finished
    # the stop checkpoint's save time, logged after its step, survives the resume's log trim
    assert any(r.get("checkpoint_s") and r["step"] == stop_step - 1 for r in records)
    md = (out / "report.md").read_text()
    assert "over 2 attempt(s), 1 requeue(s)/restart(s)" in md
    assert f"| 0 -> {stop_step} |" in md and f"| {stop_step} -> {STEPS} |" in md


def test_hellaswag_styles_and_their_references(char_shards, tmp_path):
    """In-training HellaSwag (default style, and harness style at the last step) and a saved
    `hellaswag.py --json` result, each beside the references scored the same way for the run's
    model size."""
    run = tmp_path / "run"
    run.mkdir()
    config = {"data": str(char_shards), "max_steps": 2, "total_batch_size": 64, "n_layer": 12,
              "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}
    (run / "config.json").write_text(json.dumps(config))
    lines = [{"setup": {"world_size": 1, "start_step": 0}, "time": 100.0},
             {"step": 0, "hellaswag_acc_norm": 0.26, "hellaswag_acc": 0.25, "hellaswag_n": 40, "time": 101.0},
             {"step": 0, "loss": 9.0, "ms": 500.0, "tokens_per_s": 128.0, "mfu": None, "epoch": 0, "time": 101.5},
             {"step": 1, "loss": 8.0, "ms": 400.0, "tokens_per_s": 160.0, "mfu": None, "epoch": 0, "time": 102.0},
             {"step": 1, "hellaswag_acc_norm": 0.3, "hellaswag_acc": 0.27, "hellaswag_n": 40, "time": 102.5},
             {"step": 2, "hellaswag_acc_norm": 0.28, "hellaswag_acc": 0.29, "hellaswag_n": 40, "time": 103.0},
             {"step": 2, "hellaswag_harness_acc_norm": 0.31, "hellaswag_harness_acc": 0.3,
              "hellaswag_harness_n": 40, "time": 103.5}]
    (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    harness = {"acc": 0.24, "acc_norm": 0.27, "n": 40, "correct": 10, "correct_norm": 11,
               "truncated": 0, "style": "harness"}
    (run / "hellaswag_harness.json").write_text(json.dumps(harness))
    _, report = write_report(run)
    trained, trained_harness, scored = report["hellaswag"]
    assert (trained["style"], trained["step"], trained["acc_norm"], trained["acc"]) == ("default", 2, 0.28, 0.29)
    assert (trained_harness["style"], trained_harness["step"], trained_harness["acc_norm"]) == ("harness", 2, 0.31)
    assert trained_harness["references"] == [list(r) for r in hellaswag.references_for(12, 768, "harness")]
    assert (trained["best_step"], trained["best_acc_norm"]) == (1, 0.3)
    assert (scored["style"], scored["acc_norm"], scored["acc"], scored["n"]) == ("harness", 0.27, 0.24, 40)
    assert trained["references"] == [list(r) for r in hellaswag.references_for(12, 768, "default")]
    assert scored["references"] == [list(r) for r in hellaswag.references_for(12, 768, "harness")]
    assert report["time"]["wall_time_s"] == 3.5 and report["throughput"]["tokens_per_s"] == 160.0
    md = (run / "report.md").read_text()
    assert "HellaSwag acc_norm, default style (training (log.jsonl)) | 0.2800" in md
    assert "HellaSwag acc_norm, harness style (hellaswag_harness.json) | 0.2700" in md
    assert "OpenAI GPT-2 124M 0.3114" in md and "GPT-3 Small 125M 0.337" in md


@pytest.mark.parametrize("make", ["empty", "missing", "log only"])
def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, make):
    folder = tmp_path / "folder"
    if make != "missing":
        folder.mkdir()
    if make == "log only":
        (folder / "log.jsonl").write_text("{}\n")
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {folder} is not a run folder"), err
    assert "--out-dir of a train_gpt2.py run" in err
    assert not (folder / "report.md").exists()


def test_cli_module_writes_the_report(wandb_run):
    out, _ = wandb_run
    (out / "report.md").unlink()
    result = subprocess.run([sys.executable, "-m", "trainer.report", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and f"wrote {out / 'report.md'}" in result.stdout, result.stderr
    assert (out / "report.md").read_text().startswith("# Run report: run")
