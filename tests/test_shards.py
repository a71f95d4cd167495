import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shards.format import ShardError, read_shard, write_shard
from shards.manifest import ManifestError, file_sha256, list_shards, read_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]
TOKENS = np.array([0, 1, 50256, 65535, 31373, 995], dtype=np.uint16)


def test_bin_header_is_llm_c_byte_for_byte(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, TOKENS, "bin")
    header = struct.pack("<256i", 20240520, 1, len(TOKENS), *([0] * 253))
    assert path.read_bytes() == header + struct.pack(f"<{len(TOKENS)}H", *TOKENS.tolist())


@pytest.mark.parametrize("fmt", ["bin", "npy"])
def test_round_trip(tmp_path, fmt):
    path = tmp_path / f"x.{fmt}"
    write_shard(path, TOKENS.astype(np.int64), fmt)
    assert read_shard(path).tolist() == TOKENS.tolist()
    if fmt == "npy":  # build-nanogpt's loader does exactly this
        loaded = np.load(path)
        assert loaded.dtype == np.uint16 and loaded.tolist() == TOKENS.tolist()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


def test_token_out_of_uint16_range_is_an_error(tmp_path):
    with pytest.raises(ShardError, match="uint16"):
        write_shard(tmp_path / "x.bin", [1, 70000])
    assert not list(tmp_path.iterdir())


def test_read_rejects_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, TOKENS)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ShardError, match="x.bin.*truncated"):
        read_shard(path)
    other = tmp_path / "y.bin"
    other.write_bytes(b"hello world, not a shard")
    with pytest.raises(ShardError, match="y.bin.*not a token shard"):
        read_shard(other)
    wrong = tmp_path / "z.npy"
    np.save(wrong, np.arange(4, dtype=np.int32))
    with pytest.raises(ShardError, match="z.npy.*uint16"):
        read_shard(wrong)


def make_shard_dir(directory, fmt="bin", sizes=(5, 4, 3)):
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, size in enumerate(sizes):
        split = "val" if index == 0 else "train"
        path = directory / f"t_{split}_{index:06d}.{fmt}"
        write_shard(path, np.arange(size) + index, fmt)
        entries.append({"name": path.name, "split": split, "tokens": size,
                        "sha256": file_sha256(path), "doc_start": 0})
    write_manifest(directory, {"version": 1, "source": "test", "fingerprint": "f", "tokenizer": "gpt2",
                               "vocab_size": 50257, "eot": 50256, "format": fmt, "prefix": "t",
                               "shard_tokens": 5, "complete": True, "shards": entries})
    return directory


def shards_cli(*args):
    return subprocess.run([sys.executable, "-m", "shards", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


def test_list_shards_with_and_without_manifest(tmp_path):
    d = make_shard_dir(tmp_path / "m")
    assert [p.name for p in list_shards(d, "train")] == ["t_train_000001.bin", "t_train_000002.bin"]
    bare = tmp_path / "bare"  # a build-nanogpt folder: .npy shards, no manifest
    bare.mkdir()
    for name in ["edufineweb_train_000002.npy", "edufineweb_val_000000.npy", "edufineweb_train_000001.npy"]:
        np.save(bare / name, np.zeros(3, np.uint16))
    assert [p.name for p in list_shards(bare, "train")] == ["edufineweb_train_000001.npy",
                                                           "edufineweb_train_000002.npy"]
    assert [p.name for p in list_shards(bare, "val")] == ["edufineweb_val_000000.npy"]
    assert list_shards(tmp_path / "missing", "train") == []


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        read_manifest(tmp_path)


def test_verify_and_info(tmp_path):
    d = make_shard_dir(tmp_path / "d", fmt="npy")
    ok = shards_cli("verify", d)
    assert ok.returncode == 0 and "OK: 3 shards, 12 tokens" in ok.stdout
    info = shards_cli("info", d)
    assert info.returncode == 0
    assert "val:        1 shards, 5 tokens" in info.stdout and "train:      2 shards, 7 tokens" in info.stdout
    assert "source:     test" in info.stdout and "npy" in info.stdout


def test_verify_catches_truncated_and_flipped_shards(tmp_path):
    d = make_shard_dir(tmp_path / "d")
    truncated, flipped = d / "t_train_000001.bin", d / "t_train_000002.bin"
    truncated.write_bytes(truncated.read_bytes()[:-2])
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x01
    flipped.write_bytes(bytes(data))
    result = shards_cli("verify", d)
    assert result.returncode == 1
    assert "t_train_000001.bin" in result.stderr and "truncated" in result.stderr
    assert "t_train_000002.bin: sha256 differs" in result.stderr
    assert "2 of 3 shards are bad" in result.stderr


def test_verify_without_manifest_and_missing_folder(tmp_path):
    d = make_shard_dir(tmp_path / "d")
    (d / "manifest.json").unlink()
    assert shards_cli("verify", d).returncode == 0
    missing = shards_cli("verify", tmp_path / "nope")
    assert missing.returncode != 0 and "no such folder" in missing.stderr
