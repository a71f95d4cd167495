"""CORE's hellaswag.jsonl (its tasks hellaswag and hellaswag_zeroshot), built from HellaSwag's
validation set, which hellaswag.py already fetches.

CORE's file holds one {"query", "choices", "gold"} per validation example, in the original order
(the order matters: CORE shuffles with Random(1337) and draws the shots with Random(1234 + i)),
rendered as lm-evaluation-harness renders HellaSwag: query = preprocess(activity_label + ": " +
ctx_a + " " + ctx_b.capitalize()), choices = preprocess(ending), gold = label.

    python core_eval.py --build-hellaswag       # from data/hellaswag/hellaswag_val.jsonl
"""

import hashlib
import json
import os
from pathlib import Path

from evaluation.download import temporary_download_path
from evaluation.hellaswag import URL, harness_preprocess

BUNDLE_PATH = Path("eval_data") / "language_understanding" / "hellaswag.jsonl"  # as core.yaml names it


def core_row(example):
    """One HellaSwag example as CORE's multiple_choice row."""
    query = harness_preprocess(example["activity_label"] + ": " + example["ctx_a"] + " "
                               + example["ctx_b"].capitalize())
    return {"query": query, "choices": [harness_preprocess(e) for e in example["endings"]],
            "gold": int(example["label"])}


def build(bundle, examples, source):
    """Write bundle/eval_data/language_understanding/hellaswag.jsonl from `examples` (the
    validation set's dicts, in its order), whole or not at all, and say in the bundle's README.md
    where it came from. `source`: the validation file read. Returns the path written."""
    bundle = Path(bundle)
    path = bundle / BUNDLE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_download_path(path)
    try:
        tmp.write_text("".join(json.dumps(core_row(ex)) + "\n" for ex in examples), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sha256 = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    note = (f"{BUNDLE_PATH.as_posix()}: built by `python core_eval.py --build-hellaswag` from HellaSwag's "
            f"validation set ({URL}; {len(examples)} examples, sha256 {sha256}), in its order: query = "
            f"lm-evaluation-harness's preprocess(activity_label + \": \" + ctx_a + \" \" + ctx_b.capitalize()), "
            f"choices = preprocess(ending), gold = label.\n")
    readme = bundle / "README.md"
    kept = [line for line in (readme.read_text(encoding="utf-8").splitlines(keepends=True) if readme.is_file()
                              else []) if not line.startswith(f"{BUNDLE_PATH.as_posix()}: built by")]
    readme.write_text("".join(kept) + note, encoding="utf-8")
    return path
