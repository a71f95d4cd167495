"""Checkpoints: a file whose pickle would run code is refused by every command that reads
checkpoints, before its payload runs; rank 0 alone chooses the checkpoint to resume from."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import start_ranks
from models.checkpoint import CheckpointError, load_checkpoint
from trainer.checkpoint import choose_resume
from trainer.distributed import Runtime

REPO = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this calls os.system: what a malicious shared checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def crafted(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "ckpt_0000010.pt"
    torch.save({"model": {}, "step": 10, "config": {"model": {}}, "extra": Payload(marker)}, path)
    return path, marker


def test_crafted_checkpoint_is_refused_everywhere(crafted, tmp_path, char_shards, capsys):
    import hellaswag
    import hf_gpt2
    import sample
    import train_gpt2

    path, marker = crafted
    example = {"ctx": "A man is", "ctx_a": "A man is", "ctx_b": "", "activity_label": "Walking",
               "endings": ["walking.", "running.", "eating.", "sleeping."], "label": 0}
    hellaswag_data = tmp_path / "hellaswag_val.jsonl"
    hellaswag_data.write_text(json.dumps(example) + "\n")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    commands = {  # in this process: a payload that ran would leave its marker all the same
        "train": lambda: train_gpt2.main(["--preset", "cpu-smoke", "--vocab-size", "64", "--data",
                                          str(char_shards), "--out-dir", str(tmp_path / "run"),
                                          "--resume", str(path)]),
        "sample": lambda: sample.main(["--checkpoint", str(path), "--tokenizer", str(char_shards)]),
        "hellaswag": lambda: hellaswag.main(["--checkpoint", str(path), "--data", str(hellaswag_data)]),
        "export": lambda: hf_gpt2.main(["export", str(path), str(tmp_path / "hf")]),
    }
    for name, command in commands.items():
        assert command() == 2, name
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and "refused" in errors[0], (name, errors)
        assert not marker.exists(), f"{name} ran the checkpoint's payload"


def test_a_file_that_is_not_a_checkpoint_gets_one_line_from_every_tool(tmp_path, char_shards, capsys):
    """A text file passed as a checkpoint: one line saying it is not one of this project's (not
    torch's "mmap can only be used with files saved with ..."), non-zero exit, from each command."""
    import hf_gpt2
    import sample
    import train_gpt2

    notes = tmp_path / "notes.txt"
    notes.write_text("my training notes\n")
    expected = f"{notes}: not a checkpoint of this project (train_gpt2.py writes ckpt_*.pt files)"
    in_process = {
        "sample": lambda: sample.main(["--checkpoint", str(notes), "--tokenizer", str(char_shards)]),
        "export": lambda: hf_gpt2.main(["export", str(notes), str(tmp_path / "hf")]),
        "train": lambda: train_gpt2.main(["--preset", "cpu-smoke", "--vocab-size", "64", "--data",
                                          str(char_shards), "--out-dir", str(tmp_path / "run"),
                                          "--resume", str(notes)]),
    }
    for name, command in in_process.items():
        assert command() == 2, name
        errors = capsys.readouterr().err.splitlines()
        assert len(errors) == 1 and expected in errors[0] and "mmap" not in errors[0], (name, errors)
    example = {"ctx": "A man is", "ctx_a": "A man is", "ctx_b": "", "activity_label": "Walking",
               "endings": ["walking.", "running.", "eating.", "sleeping."], "label": 0}
    (tmp_path / "hellaswag_val.jsonl").write_text(json.dumps(example) + "\n")
    out = subprocess.run([sys.executable, "hellaswag.py", "--checkpoint", str(notes), "--data",
                          str(tmp_path / "hellaswag_val.jsonl")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and out.stderr.splitlines() == [f"error: {expected}; pass one of those, "
                                                               f"or a run folder"], out.stderr


def _choose(rank, run_dirs, init_file, results):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    runtime = Runtime.from_env("cpu")
    results[rank] = str(choose_resume("auto", run_dirs[rank], runtime))
    dist.destroy_process_group()


def test_rank_0_chooses_the_resume_checkpoint(tmp_path):
    """Rank 1 sees a newer checkpoint (a stale listing of a shared folder, say): both ranks
    still resume from the one rank 0 sees."""
    seen_by = [tmp_path / "rank0", tmp_path / "rank1"]
    for folder, step in zip(seen_by, (10, 20)):
        folder.mkdir()
        torch.save({"model": {}, "step": step, "config": {"model": {}}}, folder / f"ckpt_{step:07d}.pt")
    results = start_ranks(_choose, seen_by, tmp_path / "pg")
    assert results[0] == results[1] == str(seen_by[0] / "ckpt_0000010.pt")


# TrainConfig's fields that format 2's checkpoints (4c84996 up to --recipe's 52648cb) did not hold
NOT_IN_FORMAT_2 = ("recipe", "embedding_lr", "head_lr", "scalar_lr", "muon_momentum", "muon_momentum_warmup",
                   "muon_ns_dtype", "decay_fraction", "lr_decay_steps", "log_every", "init_from")


def test_a_format_2_checkpoint_resumes_exactly(char_shards, tmp_path):
    """A week-old run's checkpoint, format 2 as train_gpt2.py wrote it before --recipe (the same
    model, optimizer state by parameter name, loader, RNG and scaler; no config["recipe"]),
    continues bit for bit as the uninterrupted run."""
    import train_gpt2
    from conftest import tiny_train_flags

    def run(out_dir):
        argv = tiny_train_flags(4, 256, 0) + ["--data", str(char_shards), "--out-dir", str(out_dir),
                                              "--hellaswag-every", "0", "--checkpoint-every", "2"]
        assert train_gpt2.main(argv) == 0
        return load_checkpoint(out_dir / "ckpt_0000004.pt")

    uninterrupted = run(tmp_path / "a")
    saved = load_checkpoint(tmp_path / "a" / "ckpt_0000002.pt")
    config = {k: v for k, v in saved["config"].items() if k not in NOT_IN_FORMAT_2}
    (tmp_path / "b").mkdir()
    torch.save({**saved, "format": 2, "config": config}, tmp_path / "b" / "ckpt_0000002.pt")
    resumed = run(tmp_path / "b")
    assert all(torch.equal(resumed["model"][k], v) for k, v in uninterrupted["model"].items())
    moments = uninterrupted["optimizer"]["state"]
    assert all(torch.equal(resumed["optimizer"]["state"][name][k], v)
               for name, state in moments.items() for k, v in state.items())
