"""HellaSwag's validation set: downloaded once into a cache (rank 0 fetching for all ranks under
torchrun), or read from a local copy, and checked line by line before anything is scored.

    examples = load_examples()                           # the cached 10,042 examples, fetched if missing
    examples = load_examples("my.jsonl", limit=100)      # any HellaSwag-format file
    python hellaswag.py --download                       # the fetch alone, where there is internet

Rendering and scoring are evaluation/hellaswag.py.
"""

import json
import os
from pathlib import Path

import torch.distributed as dist

from evaluation.download import make_folders, remove_empty_folders, temporary_download_path

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_FILE = "hellaswag_val.jsonl"
NUM_VAL_EXAMPLES = 10042
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / "data" / "hellaswag"


class HellaSwagUnavailable(RuntimeError):
    """The examples cannot be had (offline with no cached copy, missing or malformed file).
    The message is one line saying what to do; training catches this and skips HellaSwag."""


def _read_examples(path, expect_full):
    """Parse and check a HellaSwag jsonl file; `expect_full` also demands all 10,042 lines."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
                ok = (
                    all(isinstance(ex[k], str) for k in ("ctx", "ctx_a", "ctx_b", "activity_label"))
                    and isinstance(ex["endings"], list)
                    and len(ex["endings"]) == 4
                    and all(isinstance(e, str) for e in ex["endings"])
                    and int(ex["label"]) in range(4)
                )
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise HellaSwagUnavailable(
                    f"{path}:{lineno}: not a HellaSwag example (need ctx, ctx_a, ctx_b, "
                    f"activity_label, 4 endings, label 0-3); pass the original hellaswag_val.jsonl"
                )
            examples.append(ex)
    if expect_full and len(examples) != NUM_VAL_EXAMPLES:
        raise HellaSwagUnavailable(
            f"{path}: {len(examples)} examples, expected {NUM_VAL_EXAMPLES} (incomplete download?)"
        )
    return examples


def download(cache_dir=DEFAULT_CACHE_DIR, url=URL):
    """Path of the cached validation file, downloading it first if needed.

    The file appears under its final name only once complete and verified (10,042 examples).
    """
    import requests

    path = Path(cache_dir) / VAL_FILE
    if path.exists():
        try:
            _read_examples(path, expect_full=True)
            return path
        except HellaSwagUnavailable:
            pass  # a damaged copy: fetch it again below
    created = make_folders(path.parent)
    tmp = temporary_download_path(path)
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        tmp.write_bytes(response.content)
        _read_examples(tmp, expect_full=True)
        os.replace(tmp, path)
    except (requests.RequestException, OSError, HellaSwagUnavailable) as e:
        tmp.unlink(missing_ok=True)
        remove_empty_folders(created)  # a failed download leaves nothing behind
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise HellaSwagUnavailable(
            f"HellaSwag validation set not found at {path} and the download from {url} failed "
            f"({type(e).__name__}: {reason}); fetch that file on a connected machine and put it at "
            f"{path}, or pass a local copy (hellaswag.py --data, core_eval.py --hellaswag-data)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def download_on_rank0(cache_dir=DEFAULT_CACHE_DIR, url=URL):
    """download() in a distributed job: rank 0 downloads while the other ranks wait for its
    outcome (a broadcast, which is the barrier), then every rank reads the file. Rank 0's
    failure is every rank's, so all ranks stop at the same point with the same line. A rank
    whose cache folder is not on rank 0's disk (node-local storage) fetches its own copy."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return download(cache_dir, url)
    failure = [None]
    if dist.get_rank() == 0:
        try:
            download(cache_dir, url)
        except (HellaSwagUnavailable, OSError) as e:
            failure = [str(e)]
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise HellaSwagUnavailable(failure[0])
    return download(cache_dir, url)


def load_examples(path=None, cache_dir=DEFAULT_CACHE_DIR, limit=None, url=URL, download=True):
    """The validation examples as dicts (the jsonl's fields), the first `limit` of them.

    `path`: a local HellaSwag-format jsonl (any number of examples); otherwise the cached
    download in `cache_dir`, fetched when missing if `download` (by rank 0 only when
    torch.distributed is running: every rank must call this then). Training passes
    download=False: a compute node may have no internet, so the file is fetched beforehand
    (`python hellaswag.py --download`). Raises HellaSwagUnavailable.
    """
    if path is not None:
        if not Path(path).is_file():
            raise HellaSwagUnavailable(f"{path}: no such file (expected HellaSwag jsonl, e.g. {VAL_FILE})")
        examples = _read_examples(path, expect_full=False)
    elif download:
        examples = _read_examples(download_on_rank0(cache_dir, url), expect_full=True)
    else:
        cached = Path(cache_dir) / VAL_FILE
        if not cached.is_file():
            raise HellaSwagUnavailable(
                f"HellaSwag validation set not found at {cached}; fetch it beforehand with "
                f"`python hellaswag.py --download` (on a machine with internet), or pass a local copy")
        examples = _read_examples(cached, expect_full=True)
    return examples[:limit] if limit is not None else examples
