"""CORE: the bundle, nanochat's shuffle, few-shot draw and prompts, the three task types scored by
hand-checked models, cropping, centered scores and CORE, 2 ranks, the command line, the download.

The tests write a small bundle of their own (tests/core_bundle.py: 3 tasks, one of each type, and
one absent); the real bundle in ../shared/core_bundle (18 of the 22 tasks) adds the checks that
are about it. Training's side: test_core_training.py.
"""

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch

import core_eval
from core_bundle import ABSENT, CAPITALS, WORDS, write_bundle
from evaluation import core
from pipeline.tokenizer import get_gpt2_encoding
from shared_data import SHARED_DIR

REPO = Path(__file__).resolve().parent.parent
REAL_BUNDLE = SHARED_DIR / "core_bundle"
EOT = 50256


@pytest.fixture(scope="module")
def enc():
    return get_gpt2_encoding()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("bundle") / "eval_bundle")


@pytest.fixture(scope="module")
def tasks(bundle):
    present, missing = core.load_tasks(bundle)
    assert missing == ABSENT
    return {t.label: t for t in present}


def bigram_model_fn(boosts, n_vocab=50257):
    """A model whose logits after token `prev` are 0 but `boost` for `next`: {(prev, next): boost}."""
    def model_fn(idx):
        logits = torch.zeros(*idx.shape, n_vocab)
        for (prev, nxt), boost in boosts.items():
            logits[..., nxt] += boost * (idx == prev)
        return logits
    return model_fn


def random_hf_gpt2(path, context, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=context, n_embd=32, n_layer=2, n_head=2,
                               initializer_range=0.2)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return random_hf_gpt2(tmp_path_factory.mktemp("hf") / "tiny", context=64)


# ----------------------------------------------------------------------------------------
# the bundle, the shuffle and the few-shot draw


def test_tasks_read_from_core_yaml_and_baselines(tasks):
    assert [(t.label, t.task_type, t.num_fewshot, t.delimiter, t.baseline) for t in tasks.values()] == [
        ("arc_easy", "multiple_choice", 1, "\nAnswer: ", 0.5),
        ("winograd", "schema", 0, " ", 0.5),  # no delimiter in core.yaml: a space, as nanochat
        ("lambada_openai", "language_modeling", 1, " ", 0.0)]


def test_shuffle_with_1337_then_cut_and_shots_from_the_kept_rows(tasks):
    capitals = core.load_rows(tasks["arc_easy"])
    # random.Random(1337).shuffle of the file's 5 rows: Italy, France, Japan, Spain, Peru
    assert capitals == [CAPITALS[i] for i in (1, 0, 3, 2, 4)]
    assert core.load_rows(tasks["arc_easy"], max_per_task=3) == capitals[:3]
    assert core.load_rows(tasks["lambada_openai"]) == [WORDS[i] for i in (1, 0, 3, 2)]
    # the shots of row i: random.Random(1234 + i).sample of the other kept rows
    assert [core.fewshot_rows(capitals, i, 1) for i in range(5)] == [
        [capitals[4]], [capitals[4]], [capitals[4]], [capitals[1]], [capitals[0]]]
    assert core.fewshot_rows(capitals, 2, 3) == [capitals[i] for i in (4, 3, 1)]
    assert core.fewshot_rows(capitals, 2, 0) == []
    with pytest.raises(core.CoreUnavailable, match="arc_easy: 1 rows kept, but its 1-shot prompts .* "
                                                   "--max-per-task 2 or more"):
        core.load_rows(tasks["arc_easy"], max_per_task=1)


@pytest.mark.skipif(not REAL_BUNDLE.is_dir(), reason=f"{REAL_BUNDLE} absent (shared real-data folder)")
def test_real_bundle_18_of_22_tasks_and_gpt2_reference():
    present, missing = core.load_tasks(REAL_BUNDLE)
    assert missing == ["hellaswag_zeroshot", "hellaswag", "squad", "coqa"]
    assert len(present) == 18 and {t.task_type for t in present} == set(core.TASK_TYPES)
    copa = next(t for t in present if t.label == "copa")
    assert (copa.num_fewshot, copa.baseline) == (0, 0.5)
    reference = core.gpt2_reference([t.label for t in present], REAL_BUNDLE, "gpt2")
    assert reference["core"] == pytest.approx(0.1199143, abs=1e-6)  # the csv's 18 centered scores
    assert reference["tasks"]["piqa"] == 0.245919 and reference["core_all"] == 0.1139
    # all 22 csv rows average to the csv's own CORE row, 0.113891: nanochat's 0.1139
    all22 = core.gpt2_results(REAL_BUNDLE, "gpt2")
    assert sum(c for _, c in all22.values()) / 22 == pytest.approx(0.113891, abs=1e-6)
    rows = core.load_rows(copa, max_per_task=2)
    assert [r["query"][:30] for r in rows] == ["Political violence broke out i", "The kidnappers released the ho"]


@pytest.mark.skipif(not REAL_BUNDLE.is_dir(), reason=f"{REAL_BUNDLE} absent (shared real-data folder)")
def test_real_rows_rendered_as_nanochat_renders_them(enc):
    """The first kept row of a real task of each type: its prompts, and the continuation span."""
    tasks = {t.label: t for t in core.load_tasks(REAL_BUNDLE)[0]}

    def spans(label):
        task = tasks[label]
        r = core.render_example(task, core.load_rows(task, 11), 0, enc)
        assert all(row[0] == EOT for row in r.tokens)
        return r, [(enc.decode(row[1:m.index(1)]), enc.decode(row[m.index(1):])) for row, m in zip(r.tokens, r.mask)]

    # multiple choice, 0-shot: the choices share " many citizens", which is context (the common prefix)
    r, parts = spans("copa")
    assert parts == [("Political violence broke out in the nation, therefore many citizens", " relocated to the capitol."),
                     ("Political violence broke out in the nation, therefore many citizens",
                      " took refuge in other territories.")]
    assert r.gold == 1 and [m.index(1) for m in r.mask] == [12, 12]
    # schema: the options differ at their end, the shared continuation is scored
    r, parts = spans("winograd")
    assert [cont for _, cont in parts] == [" repaired.", " repaired."] and r.gold == 1
    assert [ctx[-12:] for ctx, _ in parts] == ["get the tree", "get the roof"]
    # language modeling: the last word, after a space delimiter, one token
    r, parts = spans("lambada_openai")
    assert parts[0][1] == " Zhang" and len(r.tokens) == 1 and r.tokens[0][-1] == enc.encode_ordinary(" Zhang")[0]
    assert parts[0][0].endswith('her mother said, "Please don\'t deny it,')


# ----------------------------------------------------------------------------------------
# prompts, tokens, continuation spans and choices, one hand-checked example per task type


def test_multiple_choice_prompt_tokens_and_lowest_mean_loss(tasks, enc):
    task = tasks["arc_easy"]
    rows = core.load_rows(task)
    r = core.render_example(task, rows, 4, enc)  # Peru; its shot is row 0, Italy, with its answer
    prompts = ["Question: What is the capital of Italy?\nAnswer: Rome\n\n"
               "Question: What is the capital of Peru?\nAnswer: " + choice for choice in ("Lima", "Quito")]
    assert r.tokens == [[EOT] + enc.encode_ordinary(p) for p in prompts]
    # the continuation: the tokens after the prefix the choices share
    assert [row[m.index(1):] for row, m in zip(r.tokens, r.mask)] == [[41578], [2264, 10094]]  # " Lima", " Qu"+"ito"
    assert [m.index(1) for m in r.mask] == [28, 28] and r.gold == 0
    # after ":" the model likes " Lima" (logit 5) a bit more than " Qu" (4), and "ito" after " Qu"
    # a lot (12): " Quito" costs more in total (6.83 + 0.27 > 5.83 nats) but less per token
    model_fn = bigram_model_fn({(25, 41578): 5.0, (25, 2264): 4.0, (2264, 10094): 12.0})
    assert core.score_example(model_fn, task, r, enc, context=64) is False  # chose Quito
    assert core.score_example(bigram_model_fn({(25, 41578): 5.0}), task, r, enc, context=64) is True


def test_a_choice_that_is_a_token_prefix_of_the_others_ties_as_in_nanochat(enc):
    """" Rome" is a token prefix of the other choices, so it is all shared context: an empty
    continuation, a NaN mean loss. nanochat's min()/index() picks it in first place only; elsewhere
    it is passed over for the lowest mean loss of the others (" Rome was built": " was" is boosted)."""
    task = core.Task("prefixes", Path("unused.jsonl"), "multiple_choice", 0, " ", 1 / 3)
    model_fn = bigram_model_fn({(10598, 373): 8.0})  # " Rome" -> " was"
    for empty in range(3):
        choices = ["Rome is nice", "Rome was built"]
        choices.insert(empty, "Rome")
        rendered = core.render_example(task, [{"query": "Capital:", "choices": choices, "gold": 0}], 0, enc)
        assert [sum(m) for m in rendered.mask] == [2 if c != "Rome" else 0 for c in choices]
        picked = [g for g in range(3) if core.score_example(model_fn, task, rendered._replace(gold=g), enc, 64)]
        assert picked == [0 if empty == 0 else choices.index("Rome was built")]


def test_schema_prompt_tokens_and_choice(tasks, enc):
    task = tasks["winograd"]
    rows = core.load_rows(task)
    r = core.render_example(task, rows, 0, enc)
    assert [enc.decode(row[1:]) for row in r.tokens] == [
        "The cat chased the dog because the cat was hungry.", "The cat chased the dog because the dog was hungry."]
    assert all(row[0] == EOT for row in r.tokens)
    # the continuation: the tokens the options share at their end, " was hungry."
    assert [row[m.index(1):] for row, m in zip(r.tokens, r.mask)] == [[373, 14720, 13]] * 2
    assert [m.index(1) for m in r.mask] == [9, 9] and r.gold == 0
    assert core.score_example(bigram_model_fn({(3797, 373): 6.0}), task, r, enc, 64) is True  # " cat" -> " was"
    assert core.score_example(bigram_model_fn({(3290, 373): 6.0}), task, r, enc, 64) is False  # " dog" -> " was"


def test_language_modeling_prompt_tokens_and_greedy_match(tasks, enc):
    task = tasks["lambada_openai"]
    rows = core.load_rows(task)
    r = core.render_example(task, rows, 1, enc)
    # contexts trimmed ("Say hello: " has a trailing space), the bare prompt stripped
    assert core.render_prompts(task.task_type, rows[1], " ", core.fewshot_rows(rows, 1, 1)) == [
        "Say yes: yes\n\nSay hello:", "Say yes: yes\n\nSay hello: hello"]
    assert r.tokens == [[EOT] + enc.encode_ordinary("Say yes: yes\n\nSay hello: hello")]
    assert r.mask[0].index(1) == 10 and r.tokens[0][10:] == [23748]  # " hello"
    assert core.score_example(bigram_model_fn({(25, 23748): 20.0}), task, r, enc, 64) is True
    assert core.score_example(bigram_model_fn({}), task, r, enc, 64) is False
    # two tokens: right only when greedy decoding reproduces both
    night = core.render_example(task, rows, 2, enc)
    assert night.tokens[0][night.mask[0].index(1):] == [922, 1755]  # " good night"
    assert core.score_example(bigram_model_fn({(25, 922): 20.0}), task, night, enc, 64) is False
    assert core.score_example(bigram_model_fn({(25, 922): 20.0, (922, 1755): 20.0}), task, night, enc, 64) is True


def test_rows_cropped_from_the_left_to_the_context_or_left_out(tasks, enc):
    task = tasks["lambada_openai"]
    rows = core.load_rows(task)
    r = core.render_example(task, rows, 0, enc)  # 19 tokens, the last 4 the continuation
    assert len(r.tokens[0]) == 19 and sum(r.mask[0]) == 4
    seen = []
    base = bigram_model_fn({})

    def spy(idx):
        seen.append(idx.clone())
        return base(idx)

    core.score_example(spy, task, r, enc, context=8)
    assert seen[0].tolist() == [r.tokens[0][-8:-1]]  # the last 8 tokens as nanochat keeps them; the 8th is only a target
    # a context of 4 leaves 3 tokens to predict from: the 4-token continuation cannot be scored
    scored = core.evaluate(base, core.prepare([task], enc, context=4))["tasks"]["lambada_openai"]
    assert (scored["accuracy"], scored["n"], scored["left_out"]) == (0, 3, 1)


# ----------------------------------------------------------------------------------------
# centered scores and CORE


def test_centered_scores_and_core_from_the_baselines(tasks, bundle, enc):
    # all logits equal: every choice ties and the first wins (capitals: 3 of 5 golds are 0;
    # pronouns: 1 of 3), and greedy decoding says token 0 ("!"), never a continuation
    result = core.evaluate(bigram_model_fn({}), core.prepare(list(tasks.values()), enc, context=64))
    assert {label: (r["accuracy"], r["n"]) for label, r in result["tasks"].items()} == {
        "arc_easy": (3 / 5, 5), "winograd": (1 / 3, 3), "lambada_openai": (0.0, 4)}
    assert [r["centered"] for r in result["tasks"].values()] == pytest.approx(
        [(0.6 - 0.5) / 0.5, (1 / 3 - 0.5) / 0.5, 0.0])  # (accuracy - b) / (1 - b), b = the csv's % / 100
    assert result["core"] == pytest.approx((0.2 - 1 / 3 + 0.0) / 3)
    reference = core.gpt2_reference(list(result["tasks"]), bundle)
    assert reference["core"] == pytest.approx((0.2 + 0.4 + 0.3) / 3)  # the csv's rows for these 3 tasks
    assert core.core_line(result, ABSENT, reference) == (
        "CORE over 3 of 22 tasks -0.0444 (OpenAI GPT-2 124M over the same tasks: 0.3000; over all 22: 0.1139)")


def run_cli(capsys, *args):
    status = core_eval.main([*map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def test_command_line_json_table_and_absent_task_named(bundle, hf_dir, enc, capsys):
    from evaluation.models import load_hf_model_fn

    status, out, err = run_cli(capsys, "--model", hf_dir, "--bundle", bundle, "--json", "--device", "cpu")
    assert status == 0
    assert f"CORE: 19 of 22 tasks absent from {bundle} (left out): {', '.join(ABSENT)}" in err
    result = json.loads(out.splitlines()[-1])
    assert result["missing"] == ABSENT and list(result["tasks"]) == ["arc_easy", "winograd", "lambada_openai"]
    baselines = {"arc_easy": 0.5, "winograd": 0.5, "lambada_openai": 0.0}
    for label, r in result["tasks"].items():
        assert r["centered"] == pytest.approx((r["accuracy"] - baselines[label]) / (1 - baselines[label]))
    assert [r["n"] for r in result["tasks"].values()] == [5, 3, 4]
    assert result["core"] == pytest.approx(sum(r["centered"] for r in result["tasks"].values()) / 3)
    model_fn, context = load_hf_model_fn(str(hf_dir), "cpu")
    direct = core.evaluate(model_fn, core.prepare(core.load_tasks(bundle)[0], enc, context))
    assert {k: v["accuracy"] for k, v in direct["tasks"].items()} == {
        k: v["accuracy"] for k, v in result["tasks"].items()}

    status, out, err = run_cli(capsys, "--model", hf_dir, "--bundle", bundle, "--max-per-task", 2, "--device", "cpu")
    assert status == 0
    lines = out.splitlines()
    assert lines[-2].startswith("CORE over 3 of 22 tasks ") and "OpenAI GPT-2 124M over the same tasks: 0.3000" in lines[-2]
    assert lines[-1].endswith(" examples/s")
    assert any(line.split()[:2] == ["arc_easy", "2"] and line.endswith("0.2000") for line in lines)  # n, GPT-2's

    status, out, err = run_cli(capsys, "--model", hf_dir, "--bundle", bundle.parent / "nowhere", "--device", "cpu")
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: CORE bundle: {bundle.parent / 'nowhere' / 'core.yaml'} not found")
    assert "python core_eval.py --download" in err


def test_a_malformed_row_is_named_in_one_line(tmp_path, hf_dir, capsys):
    broken = write_bundle(tmp_path / "broken")
    rows = broken / "eval_data" / "world_knowledge" / "capitals.jsonl"
    rows.write_text(rows.read_text() + json.dumps({"query": "Question: No choices?", "gold": 0}) + "\n")
    status, out, err = run_cli(capsys, "--model", hf_dir, "--bundle", broken, "--device", "cpu")
    assert status == 2 and err.splitlines()[-1] == (
        f"error: {rows}:6: not a multiple_choice row (need query, choices, gold); fetch the bundle again "
        f"with `python core_eval.py --download`")


def test_two_ranks_under_torchrun_equal_one_process(bundle, hf_dir, capsys):
    status, out, _ = run_cli(capsys, "--model", hf_dir, "--bundle", bundle, "--json", "--device", "cpu")
    single = json.loads(out.splitlines()[-1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "core_eval.py"), "--model", str(hf_dir), "--bundle", str(bundle), "--json", "--device", "cpu",
           "--batch-size", "2"]  # arc_easy: 2 forwards on rank 0 (3 rows), 1 on rank 1 (2 rows)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]  # rank 0 prints once
    both = json.loads(line)
    assert [r["n"] for r in both["tasks"].values()] == [5, 3, 4]  # odd counts: unequal shares
    assert (both["tasks"], both["core"], both["missing"]) == (single["tasks"], single["core"], single["missing"])


# ----------------------------------------------------------------------------------------
# --download


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_download_places_the_bundle_once_and_a_failure_leaves_nothing(tmp_path, bundle, capsys):
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "eval_bundle.zip", "w") as archive:
        for path in bundle.rglob("*"):
            archive.write(path, Path("eval_bundle") / path.relative_to(bundle))
    with zipfile.ZipFile(served / "other.zip", "w") as archive:
        archive.writestr("something_else/core.yaml", "icl_tasks: []\n")
    (served / "broken.zip").write_bytes(b"PK\x03\x04 not a zip")
    validation = tmp_path / "hellaswag_val.jsonl"
    validation.write_text(json.dumps({"activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof.",
                                      "ctx_b": "he", "ctx": "A man is on a roof. he", "label": 3,
                                      "endings": ["sits.", "runs.", "sings.", "works."]}) + "\n")
    server, url = serve(served)
    try:
        target = tmp_path / "clone" / "data" / "eval_bundle"
        for name in ("other.zip", "broken.zip", "missing.zip"):
            status, out, err = run_cli(capsys, "--download", "--bundle", target, "--url", f"{url}/{name}")
            assert status == 2 and out == "" and err.count("\n") == 1
            assert err.startswith(f"error: the CORE eval bundle could not be fetched from {url}/{name} (")
            assert not (tmp_path / "clone").exists()  # no zip, no partial folder, no empty data/
        # the bundle lacks hellaswag.jsonl: it is built from HellaSwag's validation set (here a local copy)
        status, out, _ = run_cli(capsys, "--download", "--bundle", target, "--url", f"{url}/eval_bundle.zip",
                                 "--hellaswag-data", validation)
        built = target / "eval_data" / "language_understanding" / "hellaswag.jsonl"
        assert status == 0 and out == (f"CORE eval bundle: {target}\nCORE hellaswag and hellaswag_zeroshot: "
                                       f"{built} (1 rows from {validation})\n")
        assert sorted(p.relative_to(target) for p in target.rglob("*")) == sorted(
            [p.relative_to(bundle) for p in bundle.rglob("*")] + [built.relative_to(target), Path("README.md")])
        assert sorted(p.name for p in target.parent.iterdir()) == ["eval_bundle"]  # no temporary left
        assert core.load_tasks(target)[1] == ABSENT
    finally:
        server.shutdown()
        server.server_close()
    status, out, _ = run_cli(capsys, "--download", "--bundle", target, "--url", f"{url}/eval_bundle.zip")
    assert status == 0 and out == f"CORE eval bundle already at {target}\n"  # once: the server is gone


def test_speedrun_export_scores_as_its_checkpoint(bundle, speedrun_export, capsys):
    """core_eval.py --model on the speedrun's Qwen3ForCausalLM export: its checkpoint's CORE, task
    by task, beside the same OpenAI GPT-2 reference."""
    checkpoint, export = speedrun_export
    results = []
    for which in (["--checkpoint", checkpoint], ["--model", export]):
        status, out, err = run_cli(capsys, *which, "--bundle", bundle, "--json", "--device", "cpu")
        assert status == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    ckpt, hf = results
    assert [hf[k] for k in ("tasks", "core", "reference")] == [ckpt[k] for k in ("tasks", "core", "reference")]
    assert [r["n"] for r in hf["tasks"].values()] == [5, 3, 4]
