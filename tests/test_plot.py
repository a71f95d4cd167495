"""plot.py: a PNG from run folders' log.jsonl, with the expected series, tokens axis, reference
lines only where they are meaningful, several runs overlaid, and clear errors."""

import json
import math

import pytest

import plot
from trainer import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run, data_dir, steps=60, hellaswag=True, tokens_per_step=1024, scale=1.0):
    run.mkdir(parents=True)
    lines = []
    for s in range(steps):
        loss = 3.0 + 8.0 * math.exp(-s / (10 * scale))
        lines.append({"step": s, "loss": loss, "lr": 6e-4, "norm": 0.5, "ms": 10.0,
                      "tokens_per_s": 1e5})
        if s % 20 == 0:
            lines.append({"step": s, "val_loss": loss + 0.1, "val_bpb": (loss + 0.1) / 3})
            lines.append({"step": s, "samples": ["Hello"]})
            if hellaswag:
                lines.append({"step": s, "hellaswag_acc_norm": 0.25 + s / 1e4, "hellaswag_acc": 0.25})
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (run / "log.jsonl").write_text(text + '{"step": 60, "val_lo')  # a torn last line is skipped
    (run / "config.json").write_text(json.dumps({"total_batch_size": tokens_per_step,
                                                 "data": str(data_dir), "vocab_size": 50304}))
    return run


def shard_dir(path, source, tokenizer):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"version": 1, "source": source,
                                                    "tokenizer": tokenizer}))
    return path


def test_fineweb_run_plot(tmp_path):
    data = shard_dir(tmp_path / "edu", "hf:HuggingFaceFW/fineweb-edu:sample-10BT", "gpt2")
    run = write_run(tmp_path / "runs" / "gpt2", data)
    out, drawn = plots.plot([run])
    assert out == run / "plot.png"
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    assert set(drawn) == {"loss vs steps", "loss vs tokens", "bits per byte", "HellaSwag"}
    assert drawn["bits per byte"]["val bpb"] == ([0, 20, 40], [pytest.approx(11.1 / 3),
        pytest.approx((3.0 + 8 * math.exp(-2) + 0.1) / 3), pytest.approx((3.0 + 8 * math.exp(-4) + 0.1) / 3)])
    steps = drawn["loss vs steps"]
    assert steps["val"] == ([0, 20, 40], [pytest.approx(11.1), pytest.approx(3.0 + 8 * math.exp(-2) + 0.1),
                                          pytest.approx(3.0 + 8 * math.exp(-4) + 0.1)])
    assert len(steps["train"][0]) == 60
    assert drawn["loss vs tokens"]["val"][0] == [0, 20 * 1024, 40 * 1024]
    assert steps["OpenAI GPT-2 124M val"][1] == [3.2924]
    assert drawn["HellaSwag"]["acc_norm"][0] == [0, 20, 40]
    assert drawn["HellaSwag"]["OpenAI GPT-2 124M"][1] == [0.2955]
    assert drawn["HellaSwag"]["GPT-3 Small 125M"][1] == [0.337]


def test_hellaswag_references_follow_the_model_size(tmp_path):
    data = shard_dir(tmp_path / "edu", "hf:HuggingFaceFW/fineweb-edu:sample-100BT", "gpt2")
    run = write_run(tmp_path / "xl", data)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "n_layer": 48, "n_embd": 1600}))
    _, drawn = plots.plot([run])
    assert {k: v[1] for k, v in drawn["HellaSwag"].items() if k != "acc_norm"} == {
        "OpenAI GPT-2 1558M": [0.4889], "GPT-3 XL 1.3B": [0.547]}


def test_char_run_has_no_gpt2_reference_and_runs_overlay(tmp_path, capsys):
    data = shard_dir(tmp_path / "sc", "input.txt", "char")
    a = write_run(tmp_path / "a", data, hellaswag=False)
    b = write_run(tmp_path / "b", data, hellaswag=False, scale=2.0)
    out = tmp_path / "cmp" / "both.png"
    assert plot.main([str(a), str(b), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and "wrote" in capsys.readouterr().out
    _, drawn = plots.plot([a, b], tmp_path / "again.png")
    assert set(drawn) == {"loss vs steps", "loss vs tokens", "bits per byte"}  # no HellaSwag: no panel
    labels = set(drawn["loss vs steps"])
    assert labels == {"a: train", "a: val", "b: train", "b: val"}  # no 3.2924 on char data


def test_read_log_later_lines_win(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 5, "loss": 4.0}\n{"step": 6, "loss": 3.9}\n\n'
                   '{"step": 5, "loss": 3.5}\n{"step": 6, "val_loss": 3.7}\n')
    series = plots.read_log(log)
    assert series == {"train": [(5, 3.5), (6, 3.9)], "val": [(6, 3.7)], "bpb": [], "hellaswag": [],
                      "core": [], "core_tasks": [], "core_gpt2": []}


def test_errors(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nope")]) == 2
    assert "log.jsonl: not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "log.jsonl").write_text("")
    assert plot.main([str(tmp_path / "empty")]) == 2
    assert "no train, val or HellaSwag lines" in capsys.readouterr().err
