"""sample.py: seed-reproducible samples from a tiny checkpoint (char tokenizer) and from a random
Hugging Face GPT-2 folder (GPT-2 tokenizer); the KV-cache and recompute paths agree; clear errors."""

import pytest
import torch

import sample
from models.gpt2 import GPT, GPTConfig
from pipeline.tokenizer import CharTokenizer

CHARS = sorted(set("\n !',.?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A run folder with one checkpoint of a tiny model trained on (pretend) char shards."""
    root = tmp_path_factory.mktemp("char")
    data = root / "shards"
    data.mkdir()
    CharTokenizer(CHARS).save(data)
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32)  # 58 chars, padded
    model = GPT(cfg)
    run = root / "run"
    run.mkdir()
    ckpt = {"model": model.state_dict(), "config": {"model": cfg.to_dict(), "data": str(data)}, "step": 10}
    torch.save(ckpt, run / "ckpt_0000010.pt")
    return run


def _run(capsys, argv):
    rc = sample.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _samples(out):
    return [s.strip("\n") for s in out.split("----------")[2::2]]


def test_checkpoint_samples_reproducible(char_run, capsys):
    argv = ["--checkpoint", str(char_run / "ckpt_0000010.pt"), "--prompt", "To be",
            "--num-samples", "2", "--max-new-tokens", "40", "--seed", "7", "--top-k", "20"]
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    assert "tokenizer char" in err
    texts = _samples(out)
    assert len(texts) == 2 and all(t.startswith("To be") for t in texts)
    assert all(len(t) == len("To be") + 40 for t in texts)  # one char per token
    assert all(set(t) <= set(CHARS) for t in texts)  # padded ids 58..63 never sampled
    assert _run(capsys, argv)[1] == out  # same seed, same samples
    assert _run(capsys, argv + ["--no-kv-cache"])[1] == out  # the cache changes nothing
    # a run folder picks its newest checkpoint; another seed gives other samples
    rc, other, _ = _run(capsys, ["--checkpoint", str(char_run)] + argv[2:-4] + ["--seed", "8"])
    assert rc == 0 and other != out


def test_checkpoint_without_its_shards_needs_tokenizer(char_run, tmp_path, capsys):
    ckpt = torch.load(char_run / "ckpt_0000010.pt", weights_only=False)
    tokdir = tmp_path / "tok"
    tokdir.mkdir()
    CharTokenizer(CHARS).save(tokdir)
    ckpt["config"]["data"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    rc, _, err = _run(capsys, ["--checkpoint", str(tmp_path / "moved.pt"), "--max-new-tokens", "5"])
    assert rc == 2 and "--tokenizer" in err
    rc, out, _ = _run(capsys, ["--checkpoint", str(tmp_path / "moved.pt"), "--tokenizer", str(tokdir),
                               "--max-new-tokens", "5", "--num-samples", "1"])
    assert rc == 0 and len(_samples(out)) == 1
    rc, _, err = _run(capsys, ["--checkpoint", str(tmp_path / "nope.pt")])
    assert rc == 2 and "no such checkpoint" in err


def test_hf_folder_samples_reproducible(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf")
    argv = ["--model", str(tmp_path / "hf"), "--prompt", "Hello, I'm a language model,",
            "--num-samples", "2", "--max-new-tokens", "20", "--seed", "3"]
    rc, out, err = _run(capsys, argv)
    assert rc == 0, err
    texts = _samples(out)
    assert len(texts) == 2 and all(t.startswith("Hello, I'm a language model,") for t in texts)
    assert _run(capsys, argv)[1] == out
    # unconditional: starts from <|endoftext|>, which is not printed
    rc, out, _ = _run(capsys, argv[:2] + ["--num-samples", "1", "--max-new-tokens", "5"])
    assert rc == 0 and "<|endoftext|>" not in out


def test_offline_hub_model_is_one_clear_error(capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rc, _, err = _run(capsys, ["--model", "no-such-org/no-such-gpt2"])
    assert rc == 2 and "could not load" in err and err.count("\n") == 1


def test_speedrun_export_samples_as_its_checkpoint(speedrun_export, tmp_path, capsys):
    """sample.py --model on the speedrun's Qwen3ForCausalLM export: its checkpoint's greedy text;
    exported at the checkpoint's full (padded) vocabulary width, its seeded samples too."""
    import hf_gpt2

    checkpoint, export = speedrun_export
    ours = ["--checkpoint", str(checkpoint), "--tokenizer", "gpt2"]
    prompt = ["--prompt", "Hello, I'm a language model,", "--num-samples", "2", "--max-new-tokens", "12"]
    greedy = prompt + ["--temperature", "0"]
    rc, out, err = _run(capsys, ["--model", str(export)] + greedy)
    assert rc == 0, err
    assert out == _run(capsys, ours + greedy)[1]
    assert all(t.startswith("Hello, I'm a language model,") and len(t) > 40 for t in _samples(out))

    assert hf_gpt2.main(["export", str(checkpoint), str(tmp_path / "wide"), "--vocab-size", "50304"]) == 0
    capsys.readouterr()
    sampled = prompt + ["--seed", "5", "--top-k", "100"]
    rc, out, err = _run(capsys, ["--model", str(tmp_path / "wide")] + sampled)
    assert rc == 0, err
    assert out == _run(capsys, ours + sampled)[1]
    assert len(set(_samples(out))) == 2  # two different samples

    rc, out, err = _run(capsys, ["--model", str(export), "--max-new-tokens", "128"])  # 1 + 128 > 128
    assert (rc, out) == (2, "") and err.splitlines()[-1] == (
        "sample.py: error: the prompt's 1 tokens and --max-new-tokens 128 do not fit the model's "
        "context of 128 tokens: ask for fewer tokens")
