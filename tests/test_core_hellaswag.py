"""CORE's hellaswag.jsonl built from HellaSwag's validation rows (`core_eval.py --build-hellaswag`,
and as part of --download): CORE's rows, in order, as lm-evaluation-harness renders them; its two
tasks then scored by CORE."""

import json
import os
import shutil

import pytest
import torch

import core_eval
from core_bundle import ABSENT, CORE_YAML, META, write_bundle
from evaluation import core
from pipeline.tokenizer import get_gpt2_encoding
from shared_data import SHARED_DIR

REAL_BUNDLE = SHARED_DIR / "core_bundle"

# HellaSwag validation rows: the file's first two (ActivityNet) and a WikiHow-style one, whose
# brackets lm-evaluation-harness's preprocess removes (" [title]" becomes ". ") and whose empty
# ctx_b leaves a trailing space that it strips
VALIDATION = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY"},
    {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
     "ctx_b": "the lady", "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
     "split": "val", "split_type": "zeroshot", "label": 3,
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.",
                 "stands and lifts the weight over her head."], "source_id": "activitynet~v_-lJS58hyo1c"},
    {"ind": 4001, "activity_label": "Home and Garden",
     "ctx_a": "[header] How to clean a window [title] Gather your supplies. [step] You need a bucket and a sponge.",
     "ctx_b": "", "ctx": "[header] How to clean a window [title] Gather your supplies. [step] You need a bucket and a sponge.",
     "split": "val", "split_type": "indomain", "label": 0,
     "endings": ["[substeps] Fill the bucket with warm water.", "Wipe the glass [title] Dry it with a towel.",
                 "Buy a new window.  ", "[step] Call a friend [substeps] to help."],
     "source_id": "wikihow~1"},
]
CORE_LINES = [
    '{"query": "Roof shingle removal: A man is sitting on a roof. He", "choices": ["is using wrap to wrap a pair '
    'of skis.", "is ripping level tiles off.", "is holding a rubik\'s cube.", "starts pulling up roofing on a roof."], '
    '"gold": 3}',
    '{"query": "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady", "choices": '
    '["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the barbell.", '
    '"stands and lifts the weight over her head."], "gold": 3}',
    '{"query": "Home and Garden: How to clean a window. Gather your supplies. You need a bucket and a sponge.", '
    '"choices": [" Fill the bucket with warm water.", "Wipe the glass. Dry it with a towel.", "Buy a new window.", '
    '" Call a friend to help."], "gold": 0}',
]
HELLASWAG_TASK = """-
  label: hellaswag_zeroshot
  dataset_uri: language_understanding/hellaswag.jsonl
  num_fewshot: [0]
  icl_task_type: multiple_choice
"""


def run_cli(capsys, *args):
    status = core_eval.main([*map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def validation_file(tmp_path):
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in VALIDATION))
    return path


def test_build_hellaswag_writes_cores_rows_in_order_then_core_scores_them(tmp_path, validation_file, capsys):
    bundle = write_bundle(tmp_path / "eval_bundle")
    (bundle / "core.yaml").write_text(CORE_YAML + HELLASWAG_TASK)
    (bundle / "eval_meta_data.csv").write_text(META + "hellaswag_zeroshot,language understanding,multiple choice,"
                                                      "0,10042,25,,HellaSwag\n")
    assert "hellaswag_zeroshot" in core.load_tasks(bundle)[1]  # absent until built
    status, out, err = run_cli(capsys, "--build-hellaswag", "--bundle", bundle, "--hellaswag-data", validation_file)
    built = bundle / "eval_data" / "language_understanding" / "hellaswag.jsonl"
    assert (status, err) == (0, "")
    assert out == f"CORE hellaswag and hellaswag_zeroshot: {built} (3 rows from {validation_file})\n"
    assert built.read_text().splitlines() == CORE_LINES
    readme = (bundle / "README.md").read_text()
    assert readme.startswith("eval_data/language_understanding/hellaswag.jsonl: built by `python core_eval.py "
                             "--build-hellaswag` from HellaSwag's validation set (https://raw.githubusercontent.com/"
                             "rowanz/hellaswag/master/data/hellaswag_val.jsonl; 3 examples, sha256 ")
    assert readme.count("\n") == 1  # built again: the line is replaced, not repeated
    assert run_cli(capsys, "--build-hellaswag", "--bundle", bundle, "--hellaswag-data", validation_file)[0] == 0
    assert (bundle / "README.md").read_text() == readme

    tasks, missing = core.load_tasks(bundle)
    assert missing == [label for label in ABSENT if label != "hellaswag_zeroshot"]
    assert tasks[-1].label == "hellaswag_zeroshot"
    # every logit equal: every choice ties and the first wins; the golds are 3, 3, 0
    prepared = core.prepare(tasks[-1:], get_gpt2_encoding(), context=64)
    result = core.evaluate(lambda idx: torch.zeros(*idx.shape, 50257), prepared)
    assert result["tasks"]["hellaswag_zeroshot"]["n"] == 3
    assert result["tasks"]["hellaswag_zeroshot"]["accuracy"] == pytest.approx(1 / 3)


def test_build_hellaswag_without_the_validation_file_says_so_in_one_line(tmp_path, capsys):
    bundle = write_bundle(tmp_path / "eval_bundle")
    status, out, err = run_cli(capsys, "--build-hellaswag", "--bundle", bundle, "--hellaswag-data", tmp_path / "nope")
    assert (status, out) == (2, "") and err == (
        f"error: CORE's hellaswag.jsonl not built: {tmp_path / 'nope'}: no such file (expected HellaSwag jsonl, "
        f"e.g. hellaswag_val.jsonl)\n")
    assert not (bundle / "eval_data" / "language_understanding" / "hellaswag.jsonl").exists()


@pytest.mark.skipif(not REAL_BUNDLE.is_dir(), reason=f"{REAL_BUNDLE} absent (shared real-data folder)")
def test_the_real_bundle_with_hellaswag_built_has_20_of_22_tasks(tmp_path, validation_file, capsys):
    bundle = tmp_path / "eval_bundle"
    shutil.copytree(REAL_BUNDLE, bundle, copy_function=os.symlink)  # the files stay where they are
    assert run_cli(capsys, "--build-hellaswag", "--bundle", bundle, "--hellaswag-data", validation_file)[0] == 0
    tasks, missing = core.load_tasks(bundle)
    assert missing == ["squad", "coqa"] and len(tasks) == 20
    assert [(t.label, t.num_fewshot) for t in tasks if t.path.name == "hellaswag.jsonl"] == [
        ("hellaswag_zeroshot", 0), ("hellaswag", 10)]
