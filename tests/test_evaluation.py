"""Validation bits per byte: against an independent computation on GPT-2 BPE shards with
multi-byte characters, and equal for 1 and 2 ranks."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_gpt2
from pipeline.fineweb import main as fineweb
from pipeline.tokenizer import get_gpt2_encoding
from shards.format import read_shard
from shards.manifest import list_shards
from models.checkpoint import load_model

REPO = Path(__file__).resolve().parent.parent
T = 16
VAL_TOKENS = 512
# a 1-layer, 16-wide model with GPT-2's vocabulary: the 50k-wide output layer dominates its cost
TINY_GPT2 = ["--preset", "cpu-smoke", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
             "--block-size", str(T), "--seq-len", str(T), "--micro-batch-size", "2",
             "--total-batch-size", str(4 * T), "--max-steps", "2", "--eval-every", "2",
             "--val-tokens", str(VAL_TOKENS), "--num-samples", "0", "--checkpoint-every", "0"]


@pytest.fixture(scope="module")
def gpt2_shards(tmp_path_factory):
    """GPT-2 BPE shards of text whose characters take 1 to 4 bytes in UTF-8."""
    d = tmp_path_factory.mktemp("bpb")
    words = ["naïve", "café", "Straße", "日本語のテキスト", "emoji 🙂🚀", "plain ascii words", "ÅÄÖ"]
    with open(d / "docs.jsonl", "w", encoding="utf-8") as f:
        for i in range(300):
            text = " ".join(words[(i + j) % len(words)] for j in range(i % 9 + 3))
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    fineweb(["--source", str(d / "docs.jsonl"), "--out", str(d / "shards"), "--shard-tokens", "2048",
             "--workers", "1"])
    return d / "shards"


def train(out_dir, data, nproc):
    """One process in this one (no interpreter to start), more under torchrun."""
    argv = [*TINY_GPT2, "--data", str(data), "--out-dir", str(out_dir)]
    if nproc == 1:
        assert train_gpt2.main(argv) == 0
    else:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={nproc}", "train_gpt2.py", *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "val_bpb" in r}


def test_val_bpb_matches_a_direct_computation_on_1_and_2_ranks(gpt2_shards, tmp_path):
    one = train(tmp_path / "one", gpt2_shards, 1)
    two = train(tmp_path / "two", gpt2_shards, 2)
    assert sorted(one) == sorted(two) == [0, 2]
    for step in one:
        assert two[step]["val_bpb"] == pytest.approx(one[step]["val_bpb"], rel=1e-6)

    # independently: the model after the last step, the first VAL_TOKENS // T val sequences
    model, _ = load_model(tmp_path / "one")
    tokens = read_shard(list_shards(gpt2_shards, "val")[0])
    enc = get_gpt2_encoding()
    nats, num_bytes = 0.0, 0
    with torch.no_grad():
        for i in range(VAL_TOKENS // T):
            seq = torch.tensor(tokens[i * T : (i + 1) * T + 1].astype("int64"))
            logits, _ = model.eval()(seq[None, :-1])
            nats += F.cross_entropy(logits[0].double(), seq[1:], reduction="sum").item()
            num_bytes += sum(0 if t == enc.eot_token else len(enc.decode_single_token_bytes(t))
                             for t in seq[1:].tolist())
    assert num_bytes > VAL_TOKENS  # multi-byte characters: more bytes than tokens
    assert one[2]["val_bpb"] == pytest.approx(nats / (math.log(2) * num_bytes), rel=1e-5)
    assert one[2]["val_loss"] == pytest.approx(nats / VAL_TOKENS, rel=1e-5)
