"""manifest.json: what a shard folder holds, and how to find its shards with or without one.

The pipeline writes the manifest atomically after every finished shard; readers use it to check
shards (`python -m shards verify`) and to find the tokenizer. Folders made by build-nanogpt or
llm.c have no manifest: `list_shards` still finds their shards by name.
"""

import hashlib
import json
import re
from pathlib import Path

from shards.format import atomic_write

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("val", "train")


class ManifestError(Exception):
    """manifest.json is missing or unreadable."""


def shard_name(prefix, index, fmt):
    """Shard 0 is validation, the rest training (build-nanogpt's convention)."""
    split = "val" if index == 0 else "train"
    return f"{prefix}_{split}_{index:06d}.{fmt}"


def read_manifest(directory):
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found; is {directory} a shard folder made by "
                            "`python -m pipeline.fineweb`?") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable ({e}); regenerate the shards") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: not a version-{MANIFEST_VERSION} shard manifest")
    return manifest


def write_manifest(directory, manifest):
    """Atomic: a reader (or a resume after kill -9) sees the old or the new manifest, never half."""
    with atomic_write(Path(directory) / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


def list_shards(directory, split):
    """Sorted shard paths of one split; from the manifest if there is one, else by file name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    directory = Path(directory)
    if (directory / MANIFEST).exists():
        manifest = read_manifest(directory)
        return [directory / s["name"] for s in manifest["shards"] if s["split"] == split]
    if not directory.is_dir():
        return []
    pattern = re.compile(rf".*_{split}_\d+\.(bin|npy)$")
    return sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name))


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()
