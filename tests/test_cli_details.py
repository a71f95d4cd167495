"""The small things a user meets: --log-every, the start-up and --dry-run lines, flag typos,
`python -m shards info | head`, the report's suggested commands, the offline hints, and what a
wrong --data or a changed source is told."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import core_eval
import train_gpt2
from conftest import tiny_train_flags
from pipeline.writer import OutputError, resume_manifest
from test_front_door import write_run
from trainer import report
from trainer.config import parse_config

REPO = Path(__file__).resolve().parent.parent


def test_log_every_prints_every_nth_step_and_logs_all(char_shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_gpt2.main([*tiny_train_flags(7, 256, 0), "--data", str(char_shards), "--out-dir",
                            str(out), "--log-every", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [int(line.split()[1]) for line in printed if line.startswith("step ")] == [0, 3, 6]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(7))
    # one process is not "1 rank(s)", and the parameters are counted once
    assert "1 process x 2 accumulation steps x 4 x 32 tokens = 256 tokens/step; 63 steps/epoch; float32" in printed
    assert sum("parameters" in line for line in printed) == 1


def test_dry_run_says_what_it_assumed_first_and_the_accumulation(capsys):
    assert train_gpt2.main(["--preset", "cpu-smoke", "--dry-run", "--world-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dry run for 2 rank(s) (--world-size)")
    assert lines[1] == "1 accumulation step x micro-batch 8 x 64 tokens x 2 ranks = 1,024 tokens a step"
    assert not any(line.startswith(("{", ' "')) for line in lines)  # no 50 lines of config


def test_unknown_flags_get_the_nearest_and_abbreviations_are_refused(capsys):
    for argv, message in ((["--max_steps=10"], "unrecognized arguments: --max_steps=10 (did you mean "
                                                "--max-steps?)"),
                          (["--max-step", "10"], "unrecognized arguments: --max-step 10 (did you mean "
                                                 "--max-steps?)")):
        with pytest.raises(SystemExit) as exit_:
            parse_config(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"train_gpt2.py: error: {message}"


def test_shards_info_into_a_closed_pipe_ends_quietly(char_shards):
    proc = subprocess.Popen([sys.executable, "-m", "shards", "info", str(char_shards)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `| head` that has read enough: every write now fails
    assert proc.stderr.read() == ""
    proc.wait(timeout=60)


def test_reports_hellaswag_command_leaves_no_empty_json_when_it_fails(tmp_path, capsys):
    run = write_run(tmp_path / "run", {"data": "", "max_steps": 30, "total_batch_size": 512,
                                       "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8,
                                       "vocab_size": 50304, "hellaswag_every": 0, "core_every": 0})
    (run / "plot.png").write_bytes(b"")  # newer than log.jsonl: not drawn
    (run / "ckpt_0000030.pt").write_bytes(b"not a checkpoint: hellaswag.py fails")
    assert report.main([str(run)]) == 0
    written = json.loads((run / "report.json").read_text())
    assert "| hardware | unknown on 1 host(s); 1 process; " in (run / "report.md").read_text()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert subprocess.run(written["commands"]["hellaswag"], shell=True, cwd=REPO, env=env,
                          capture_output=True).returncode != 0
    assert sorted(p.name for p in run.iterdir() if "hellaswag" in p.name) == []
    capsys.readouterr()
    assert report.main([str(run)]) == 0
    assert capsys.readouterr().err == ""  # no "not the output of hellaswag.py --json" each time


def test_core_download_failure_says_how_to_use_a_copied_zip(tmp_path, capsys):
    bundle = tmp_path / "data" / "eval_bundle"
    assert core_eval.main(["--download", "--bundle", str(bundle), "--url",
                           f"file://{tmp_path}/missing/eval_bundle.zip"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(
        f"with eval_bundle.zip fetched on a connected machine: python core_eval.py --download --url "
        f"file:///path/to/eval_bundle.zip (or unzip it and move the eval_bundle/ folder it holds to "
        f"{bundle})")


def test_a_changed_source_says_which_setting(tmp_path):
    def identity(revision):
        return {"fingerprint": f"hf:HuggingFaceFW/fineweb-edu:sample-10BT:train@{revision}#text",
                "tokenizer": "gpt2", "format": "bin", "prefix": "edu_fineweb", "shard_tokens": 100}

    with pytest.raises(OutputError, match=r"made with different settings \(the source's revision: "
                                          r"'abc' there, 'def' now\)"):
        resume_manifest(tmp_path, {**identity("abc"), "shards": []}, identity("def"), None)


def test_data_that_is_text_gets_the_command_tokenizing_it_beside(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.txt").write_text("some text\n")
    assert train_gpt2.main(["--preset", "cpu-smoke", "--data", str(corpus), "--out-dir",
                            str(tmp_path / "run"), "--preflight"]) == 2
    make = (f"`python -m pipeline.fineweb --source {corpus} --out {tmp_path / 'corpus_shards'} "
            f"--prefix corpus` (--data {corpus} is text, not shards")
    errors = capsys.readouterr().err.splitlines()
    assert errors and all(make in line for line in errors if line.startswith(f"error: --data {corpus}"))
