"""Shard file formats: llm.c's `.bin` (default) and build-nanogpt's `.npy`.

`.bin` layout (llm.c, dev/data/data_common.py): a 1024-byte header of 256 little-endian int32,
header[0] = 20240520 (magic), header[1] = 1 (version), header[2] = number of tokens; then the
tokens as little-endian uint16. `.npy` is plain `np.save` of a 1-D uint16 array.

Readers detect the format from the first bytes, never from the file name, and check everything
they can (magic, version, dtype, size) so a truncated or foreign file fails with its name.
"""

import errno
import os
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

BIN_MAGIC = 20240520
BIN_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
NPY_MAGIC = b"\x93NUMPY"
TOKEN_DTYPE = np.dtype("<u2")
FORMATS = ("bin", "npy")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class ShardError(Exception):
    """A shard file is missing, truncated or not in a format we know."""


def detect_format(path):
    """Return "bin" or "npy" from the file's first bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file not found") from None
    if head.startswith(NPY_MAGIC):
        return "npy"
    if len(head) >= 4 and int.from_bytes(head[:4], "little", signed=True) == BIN_MAGIC:
        return "bin"
    raise ShardError(f"{path}: not a token shard (neither llm.c .bin magic {BIN_MAGIC} nor .npy); "
                     "regenerate it with `python -m pipeline.fineweb`")


def bin_header(num_tokens):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = BIN_MAGIC, BIN_VERSION, num_tokens
    return header


def as_tokens(tokens):
    """Check token ids fit uint16 (GPT-2's 50257 do) and return them as little-endian uint16."""
    tokens = np.asarray(tokens)
    if tokens.dtype != TOKEN_DTYPE:
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.uint16).max):
            raise ShardError(f"token ids must be in [0, 65535] to fit a uint16 shard; "
                             f"got range [{tokens.min()}, {tokens.max()}]")
        tokens = tokens.astype(TOKEN_DTYPE)
    return tokens.reshape(-1)


@contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """Write `path` through a temporary sibling, fsync'ed and renamed into place on success.

    A crash at any moment leaves the old file or the complete new one under `path`, never half a
    file; an exception (bad input, Ctrl-C) removes the temporary. Its name `.NAME.tmp-HOST-PID`
    never collides between writers on different nodes of a shared file system. A full disk or
    quota names `path`: write() and fsync() errors name no file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.uname().nodename}-{os.getpid()}")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None and e.errno in NO_SPACE:
            e.filename = str(path)
        raise
    finally:
        with suppress(OSError):  # a read-only folder refuses even this: keep the first error
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_shard(path, tokens, fmt="bin"):
    """Write tokens atomically (see atomic_write) in the .bin or .npy format."""
    if fmt not in FORMATS:
        raise ShardError(f"unknown shard format {fmt!r}; use one of {FORMATS}")
    tokens = as_tokens(tokens)
    with atomic_write(path) as f:
        if fmt == "bin":
            f.write(bin_header(len(tokens)).tobytes())
            f.write(tokens.tobytes())
        else:
            np.save(f, tokens, allow_pickle=False)


def write_bin_chunks(path, chunks):
    """Write a .bin shard from an iterable of token arrays, atomically, never holding it whole.

    The header's token count is only known at the end, so it is written last (seek back).
    Returns the number of tokens.
    """
    num_tokens = 0
    with atomic_write(path) as f:
        f.write(bytes(HEADER_BYTES))
        for tokens in chunks:
            tokens = as_tokens(tokens)
            f.write(tokens.tobytes())
            num_tokens += len(tokens)
        f.seek(0)
        f.write(bin_header(num_tokens).tobytes())
    return num_tokens


def fsync_dir(directory):
    """Make a rename durable (POSIX: the directory entry lives in the directory's own data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_shard(path):
    """Memory-map a shard as a read-only 1-D uint16 array, whatever its format."""
    path = Path(path)
    fmt = detect_format(path)
    size = path.stat().st_size
    if fmt == "bin":
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
        if len(header) < HEADER_INTS:
            raise ShardError(f"{path}: truncated .bin header ({size} bytes < {HEADER_BYTES})")
        if header[1] != BIN_VERSION:
            raise ShardError(f"{path}: .bin version {header[1]}, expected {BIN_VERSION}")
        num_tokens = int(header[2])
        expected = HEADER_BYTES + 2 * num_tokens
        if size != expected:
            raise ShardError(f"{path}: header says {num_tokens} tokens ({expected} bytes) but the "
                             f"file has {size} bytes: truncated or corrupt, regenerate it")
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # numpy reports a short file as "cannot reshape" / "mmap length"
        raise ShardError(f"{path}: corrupt or truncated .npy shard ({e})") from None
    if tokens.dtype != TOKEN_DTYPE or tokens.ndim != 1:
        raise ShardError(f"{path}: .npy shard must be 1-D uint16, found {tokens.dtype} {tokens.shape}")
    return tokens


def shard_tokens(path):
    """Number of tokens in a shard, read from its header only."""
    return len(read_shard(path))
