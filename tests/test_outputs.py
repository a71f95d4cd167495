"""Files the tools write for the user: `hf_gpt2.py export` and `python -m trainer.report` into a
folder they cannot write say so in one line (exit 2), and an export is readable by others.

Root writes through chmod, so these tests block the writes with what stops root too: a file where
a folder should be, a folder where a file should be. (A read-only bind mount gives the same lines:
"Read-only file system".)"""

import stat

import torch

import hf_gpt2
from models.gpt2 import GPT, GPTConfig
from models.hf import current_umask
from test_front_door import write_run
from trainer import report

TINY = GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=2, n_embd=16)


def checkpoint(tmp_path):
    path = tmp_path / "ckpt_0000001.pt"
    torch.save({"model": GPT(TINY).state_dict(), "step": 1,
                "config": {"data": "", "model": TINY.to_dict()}}, path)
    return path


def test_export_into_an_unwritable_place_is_one_line(tmp_path, capsys):
    ckpt, in_the_way = checkpoint(tmp_path), tmp_path / "a-file"
    in_the_way.write_text("")
    assert hf_gpt2.main(["export", str(ckpt), str(in_the_way)]) == 2  # transformers only logged it
    assert hf_gpt2.main(["export", str(ckpt), str(in_the_way / "hf")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"hf_gpt2.py: error: cannot write {in_the_way} (a file, not a folder); choose a writable OUT_DIR",
        f"hf_gpt2.py: error: cannot write {in_the_way / 'hf'} (Not a directory); choose a writable OUT_DIR"]


def test_exported_weights_get_the_umask_mode_of_the_other_files(tmp_path):
    assert hf_gpt2.main(["export", str(checkpoint(tmp_path)), str(tmp_path / "hf")]) == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~current_umask()


def test_report_on_an_unwritable_run_is_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "run", {"data": "", "max_steps": 30, "total_batch_size": 512,
                                       "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8,
                                       "vocab_size": 64, "hellaswag_every": 0, "core_every": 0})
    (run / "plot.png").mkdir()  # newer than log.jsonl: not redrawn
    (run / "report.json").mkdir()
    assert report.main([str(run)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot write {run / 'report.json'} (Is a directory): make the report on a copy: "
        f"cp -r {run} MY_COPY && python -m trainer.report MY_COPY"]
