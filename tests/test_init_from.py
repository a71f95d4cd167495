"""--init-from: training starts from a Hugging Face GPT-2's weights (nanoGPT's init_from), the
model's shape taken from them; a resume continues from its checkpoint as usual."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_train_flags
from shards.loader import ShardLoader
from train_gpt2 import main
from trainer.config import parse_config

MICRO_BATCH, SEQ_LEN, GRAD_ACCUM = 4, 32, 2  # tiny_train_flags at 256 tokens a step


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A random GPT2LMHeadModel of tiny_train_flags' shape, saved; (model, folder)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    hf.save_pretrained(folder)
    return hf.eval(), folder


def train_losses(argv):
    status = main(argv)
    out = argv[argv.index("--out-dir") + 1]
    rows = [json.loads(line) for line in open(f"{out}/log.jsonl")]
    return status, {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_first_loss_is_the_hf_models_and_a_resume_continues(hf_model, char_shards, tmp_path):
    hf, folder = hf_model
    argv = [*tiny_train_flags(4, MICRO_BATCH * SEQ_LEN * GRAD_ACCUM, 0), "--data", str(char_shards),
            "--init-from", str(folder), "--checkpoint-every", "0"]
    status, losses = train_losses([*argv, "--out-dir", str(tmp_path / "whole")])
    assert status == 0 and list(losses) == [0, 1, 2, 3]

    loader = ShardLoader(char_shards, "train", MICRO_BATCH, SEQ_LEN, GRAD_ACCUM, 0, 1)
    with torch.no_grad():
        hf_loss = sum(F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten())
                      for x, y in (loader.next_batch() for _ in range(GRAD_ACCUM))) / GRAD_ACCUM
    assert losses[0] == pytest.approx(hf_loss.item(), abs=1e-5)

    # stopped after its first step (RUN/STOP), then the same command: the checkpoint's weights
    # are taken, not the Hugging Face ones again
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "STOP").touch()
    assert train_losses([*argv, "--out-dir", str(out)])[0] == 3
    status, resumed = train_losses([*argv, "--out-dir", str(out)])
    assert status == 0 and resumed == losses


def test_the_model_flags_are_the_weights(hf_model, capsys):
    _, folder = hf_model
    cfg = parse_config(["--preset", "cpu-smoke", "--init-from", "gpt2-medium"])  # no download
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (24, 16, 1024, 1024, 50257)
    assert parse_config(["--init-from", str(folder), "--seq-len", "32"]).n_embd == 32
    with pytest.raises(SystemExit) as exit_:
        parse_config(["--init-from", str(folder), "--seq-len", "32", "--n-layer", "3"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"train_gpt2.py: error: --n-layer 3 contradicts --init-from {folder}, whose n_layer is 2: "
        f"leave --n-layer out")
