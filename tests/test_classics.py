"""The classics: Tiny Shakespeare char shards with the lecture's split, the presets, and a shortened
shakespeare-char run that learns (trainer + char tokenizer + sample.py end to end)."""

import json
import random
import urllib.error
import urllib.request

import pytest

from trainer.config import parse_config
from trainer.presets import PRESETS
from pipeline import shakespeare_char
from pipeline.tokenizer import CharTokenizer, load_tokenizer
from shards.__main__ import verify
from shards.format import read_shard
from shared_data import SHARED_DIR

SHARED = SHARED_DIR / "data" / "tinyshakespeare" / "input.txt"


def make_text(chars=60_000, seed=0):
    """Shakespeare-like text the tests write themselves: speaker lines of words from a small set."""
    rng = random.Random(seed)
    words = ("the and my lord thou thee good king what shall not love heart night speak come "
             "hath death noble sweet").split()
    speakers = ["ROMEO", "JULIET", "KING HENRY", "First Citizen"]
    parts, size = [], 0
    while size < chars:
        line = f"{rng.choice(speakers)}:\n" + " ".join(rng.choice(words) for _ in range(rng.randint(5, 12)))
        line = line[0] + line[1:] + rng.choice([".", ",", "!", "?"]) + "\n\n"
        parts.append(line)
        size += len(line)
    return "".join(parts)[:chars]


@pytest.fixture(scope="module")
def corpus():
    """(text, origin): Tiny Shakespeare when ../shared/data has it, else generated text."""
    if SHARED.exists():
        return SHARED.read_text(encoding="utf-8"), "tinyshakespeare"
    return make_text(), "generated"


def test_char_tokenizer_round_trips(tmp_path):
    text = make_text(5000) + "Ünïcödé — ok\n"
    tok = CharTokenizer.from_corpus([text])
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text
    tok.save(tmp_path)
    again = CharTokenizer.load(tmp_path)
    assert again.chars == tok.chars and again.decode(ids) == text
    with pytest.raises(ValueError, match="not in the char tokenizer"):
        tok.encode("~")


def test_lecture_split_and_shards(tmp_path, corpus):
    text, origin = corpus
    out = tmp_path / "sc"
    manifest = shakespeare_char.prepare(text, out, source=origin)
    n = int(0.9 * len(text))  # the lecture: n = int(0.9 * len(data)); train = data[:n]
    val_entry, train_entry = manifest["shards"]
    assert (val_entry["name"], val_entry["split"]) == ("shakespeare_char_val_000000.bin", "val")
    assert (train_entry["name"], train_entry["split"]) == ("shakespeare_char_train_000001.bin", "train")
    assert (train_entry["tokens"], val_entry["tokens"]) == (n, len(text) - n)
    assert manifest["tokenizer"] == "char" and manifest["eot"] is None and manifest["complete"]
    tok = load_tokenizer(out)  # manifest.json + tokenizer.json, as training and sample.py do
    assert tok.name == "char" and tok.vocab_size == manifest["vocab_size"] == len(set(text))
    train = read_shard(out / train_entry["name"])
    val = read_shard(out / val_entry["name"])
    assert tok.decode(train.tolist()) == text[:n]  # exact boundary, nothing lost or shared
    assert tok.decode(val.tolist()) == text[n:]
    assert verify(out) == 0  # sha256s and token counts match the manifest
    if origin == "tinyshakespeare":  # the lecture's figures
        assert (len(text), manifest["vocab_size"], n, len(text) - n) == (1_115_394, 65, 1_003_854, 111_540)


def test_cli_local_input_and_offline_message(tmp_path, monkeypatch, capsys):
    src = tmp_path / "input.txt"
    src.write_text(make_text(3000), encoding="utf-8")
    shakespeare_char.main(["--input", str(src), "--out", str(tmp_path / "a")])
    assert "python train_gpt2.py --preset shakespeare-char" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["source"] == str(src)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit) as exc:
        shakespeare_char.main(["--out", str(tmp_path / "b")])
    assert "--input" in str(exc.value) and shakespeare_char.URL in str(exc.value)
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_presets():
    c = parse_config(["--preset", "shakespeare-char"])
    lecture = dict(n_layer=4, n_head=4, n_embd=64, block_size=32, seq_len=32, micro_batch_size=16,
                   total_batch_size=16 * 32, max_steps=5000, dropout=0.0, vocab_size=65)
    assert {k: getattr(c, k) for k in lecture} == lecture
    assert c.val_tokens >= 100_000  # (nearly) the whole 111,540-char val split, not a few batches
    big = parse_config(["--preset", "shakespeare-char-big"])
    assert (big.n_layer, big.n_head, big.n_embd, big.block_size, big.dropout) == (6, 6, 384, 256, 0.2)
    ts = parse_config(["--preset", "tinystories"])
    assert (ts.n_layer, ts.n_head, ts.n_embd, ts.block_size, ts.dropout) == (6, 6, 384, 256, 0.2)
    assert (ts.lr, ts.min_lr, ts.vocab_size) == (1e-3, 1e-4, 50304)
    for name in ("shakespeare-char", "shakespeare-char-big", "tinystories"):
        assert PRESETS[name]["hellaswag_every"] == 0  # HellaSwag needs GPT-2 124M-scale models


@pytest.fixture
def one_thread():
    """A 0.2M-parameter model gains nothing from 2 threads, and on a busy machine 2 spinning
    threads per process make it many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_short_shakespeare_char_run_learns(tmp_path, corpus, capsys, one_thread):
    """The preset, shortened to 150 steps: val loss falls well below its start (~ln 65 = 4.17),
    samples come out as characters of the corpus, and sample.py reads the checkpoint back."""
    import sample
    import train_gpt2

    text, origin = corpus
    data = tmp_path / "sc"
    shakespeare_char.prepare(text, data, source=origin)
    vocab = len(set(text))
    run = tmp_path / "run"
    rc = train_gpt2.main(["--preset", "shakespeare-char", "--data", str(data), "--out-dir", str(run),
                          "--vocab-size", str(vocab), "--max-steps", "150", "--warmup-steps", "10",
                          "--eval-every", "150", "--val-tokens", "8192", "--device", "cpu",
                          "--sample-tokens", "24", "--checkpoint-every", "0", "--resume", "never"])
    assert rc == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 2 and vals[0] > 3.5 and vals[-1] < vals[0] - 1.0, vals
    samples = [s for r in log if "samples" in r for s in r["samples"]]
    assert samples and all(set(s) <= set(text) for s in samples)

    model, tok = sample.load(checkpoint=str(run), device="cpu")
    assert tok.name == "char"
    texts = sample.generate_samples(model, tok, prompt="\n", num_samples=2, max_new_tokens=40, seed=1)
    assert all(len(t) == 41 and set(t) <= set(text) for t in texts)
