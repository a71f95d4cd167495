"""What a new user meets first, beyond the preflight: --help without empty defaults, messages that
name commands (not functions), plots whose loss panels show every point, and a plot and a run
report that say why HellaSwag was not run."""

import json
import math

import pytest
import torch

import hf_gpt2
import plot
import sample
from models.gpt2 import GPT, GPTConfig
from trainer import plots
from trainer.config import parse_config
from trainer.report import write_report
from trainer.report_markdown import why_no_core, why_no_hellaswag


def test_help_shows_no_empty_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    out = capsys.readouterr().out
    assert "(default )" not in out and "(default 250)" in out
    assert "--world-size N" in out and "--gpu-memory SIZE" in out


def test_messages_name_the_export_command_not_the_function(tmp_path, capsys):
    config = GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16, bias=False)
    checkpoint = tmp_path / "ckpt_0000001.pt"
    torch.save({"model": GPT(config).state_dict(), "step": 1,
                "config": {"data": "", "model": config.to_dict()}}, checkpoint)
    assert hf_gpt2.main(["export", str(checkpoint), str(tmp_path / "hf")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == ["hf_gpt2.py: error: cannot export: Hugging Face's GPT2LMHeadModel has biases, "
                      "and this model was trained with --bias false"]
    assert sample.main(["--model", str(tmp_path / "no-such-folder")]) == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert "`python hf_gpt2.py export`" in error and "export_hf" not in error
    with pytest.raises(SystemExit):
        sample.main(["--help"])
    out = capsys.readouterr().out
    assert "hf_gpt2.py export" in out and "export_hf" not in out


def write_run(run, config):
    """A finished run's folder without HellaSwag: loss from 11 down to 3, val at steps 0 and 30."""
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    lines = [{"setup": {"world_size": 1, "start_step": 0}, "time": 100.0}]
    for step in range(30):
        loss = 3.0 + 8.0 * math.exp(-step / 3)
        lines.append({"step": step, "loss": loss, "ms": 10.0, "tokens_per_s": 1e4, "mfu": None,
                      "epoch": 0, "time": 101.0 + step})
    lines += [{"step": 0, "val_loss": 11.1, "val_bpb": 3.7, "time": 101.0},
              {"step": 30, "val_loss": 3.2, "val_bpb": 1.1, "time": 131.0}]
    (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def test_plot_shows_every_loss_and_says_why_hellaswag_is_missing(tmp_path, capsys):
    config = {"data": str(tmp_path / "shards"), "max_steps": 30, "total_batch_size": 512,
              "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": 50304,
              "hellaswag_every": 0, "core_every": 0}
    run = write_run(tmp_path / "demo", config)
    assert plot.main([str(run)]) == 0
    assert "demo: no HellaSwag panel: not run: --hellaswag-every 0" in capsys.readouterr().out
    loaded = plots.load_run(run)
    fig, _ = plots.make_figure([loaded])
    losses = [v for _, v in loaded["train"] + loaded["val"]]
    for ax in fig.axes[:2]:  # loss vs steps, loss vs tokens
        low, high = ax.get_ylim()
        assert low < min(losses) and high > max(losses) == 11.1, ax.get_title()
    write_report(run)
    report = (run / "report.md").read_text()
    assert "| HellaSwag | not run: --hellaswag-every 0 |" in report
    assert "| CORE | not run: --core-every 0 |" in report


def test_report_says_which_reason_kept_hellaswag_out():
    base = {"hellaswag_every": 250, "vocab_size": 50304}
    assert why_no_hellaswag({**base, "hellaswag_every": 0}) == "--hellaswag-every 0"
    assert why_no_hellaswag({**base, "vocab_size": 65}) == (
        "the model's vocabulary has 65 tokens; HellaSwag needs a GPT-2-vocabulary model")
    assert why_no_hellaswag(base, "char") == "the shards' tokenizer is char; HellaSwag needs GPT-2's"
    assert why_no_hellaswag(base, "gpt2").startswith(
        "no result in log.jsonl although --hellaswag-every 250: skipped at start-up")


def test_report_says_which_reason_kept_core_out(tmp_path):
    base = {"core_every": "auto", "vocab_size": 50304, "core_bundle": str(tmp_path / "bundle")}
    assert why_no_core({**base, "core_every": 0}) == "--core-every 0"
    assert why_no_core({**base, "vocab_size": 65}) == "CORE needs a GPT-2-tokenizer model and shards"
    assert why_no_core(base, "char") == "CORE needs a GPT-2-tokenizer model and shards"
    assert why_no_core(base, "gpt2") == (f"no eval bundle at {tmp_path / 'bundle'} (fetch it once "
                                         f"with `python core_eval.py --download`)")
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "core.yaml").write_text("icl_tasks: []\n")
    assert why_no_core(base, "gpt2").startswith("no result in log.jsonl although --core-every auto")
