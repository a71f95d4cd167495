"""HellaSwag: data checks, both rendering styles, scoring, HF vs our GPT, 2 ranks, export.

Offline and on CPU. The models are random and tiny except for the output layer, which keeps
GPT-2's 50257-token vocabulary because the examples are GPT-2 tokens.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hellaswag as hellaswag_cli
from evaluation import download as downloads
from evaluation import hellaswag
from evaluation.hellaswag import HellaSwagUnavailable, evaluate, render_example
from evaluation.models import load_checkpoint_fn, load_hf_model_fn
from models.hf import export_hf, gpt_from_hf
from pipeline.tokenizer import get_gpt2_encoding
from shared_data import SHARED_DIR

REPO = Path(__file__).resolve().parent.parent
SHARED = SHARED_DIR / "data" / "hellaswag_format"
DEAD_URL = "http://127.0.0.1:9/hellaswag_val.jsonl"  # the discard port: refused at once, offline-safe


def example(ctx_a, ctx_b, endings, label, activity_label="Roof shingle removal"):
    return {"ind": 0, "activity_label": activity_label, "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": (ctx_a + " " + ctx_b).strip(), "split": "val", "split_type": "indomain",
            "label": label, "endings": endings, "source_id": "test"}


ROOF = example("A man is sitting on a roof.", "he",
               ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                "is holding a rubik's cube.", "starts pulling up roofing on a roof."], 3)
# WikiHow-style, with the bracket artefacts the harness cleans up
WIKIHOW = example("[header] How to dye your hair [title] Choose a color.", "[step] pick",
                  ["a shade close to your own. [substeps] Lighter is easier.", "[title] Buy a kit.",
                   "the darkest one you can find.", "nothing at all."], 0,
                  activity_label="Personal Care and Style")
WRITTEN = [
    ROOF,
    WIKIHOW,
    example("A lady walks to a barbell. She bends down and grabs the pole.", "the Lady",
            ["swings and lands in her arms.", "pulls the barbell forward.",
             "pulls a rope attached to the barbell.", "stands and lifts the weight over her head."],
            3, activity_label="Clean and jerk"),
    example("Two kids play in a yard.", "",
            ["run.", "they throw a ball back and forth for a long while.", "sit.", "the dog barks."], 1,
            activity_label="Playing catch"),
    example("A chef slices onions on a board.", "she",
            ["adds them to a pan.", "flies away.", "sings.", "is cooking dinner for her family tonight."], 0,
            activity_label="Cooking"),
    # longer than a 40-token context in both styles (with ../shared absent too), short endings
    example("A group of friends gather at the edge of a frozen lake early on a cold winter morning. "
            "They lace up their skates, stretch their legs, and check the thickness of the ice with a "
            "long wooden pole before anyone steps out.", "one of them",
            ["glides out onto the ice.", "eats a sandwich.", "swims.", "climbs a very tall tree in the park."],
            0, activity_label="Ice skating"),
    example("A boy holds a kite.", "the wind", ["lifts it.", "stops.", "is blue.", "sings a song."], 0,
            activity_label="Flying kite"),
]


@pytest.fixture(scope="module")
def enc():
    return get_gpt2_encoding()


@pytest.fixture(scope="module")
def examples():
    """The test's own examples, plus the real ones in ../shared when that folder is present."""
    extra = []
    if SHARED.is_dir():
        for split in ("val", "train"):
            extra += hellaswag.load_examples(SHARED / f"hellaswag_{split}.jsonl")
    return WRITTEN + extra


@pytest.fixture(scope="module")
def data_file(examples, tmp_path_factory):
    path = tmp_path_factory.mktemp("hs") / "val.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    return path


def random_hf_gpt2(path, context, seed):
    """A random GPT2LMHeadModel folder; a wide init so the predictions are not all 'shortest'."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=50257, n_positions=context, n_embd=32, n_layer=2, n_head=2,
                        initializer_range=0.2)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return random_hf_gpt2(tmp_path_factory.mktemp("hf") / "tiny-gpt2", context=128, seed=0)


# ----------------------------------------------------------------------------------------
# data


def test_load_local_file_limit_and_malformed(tmp_path, data_file, examples):
    assert hellaswag.load_examples(data_file) == examples
    assert hellaswag.load_examples(data_file, limit=2) == examples[:2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROOF) + "\n" + json.dumps({**ROOF, "endings": ["only one"]}) + "\n")
    with pytest.raises(HellaSwagUnavailable, match=r"bad\.jsonl:2: not a HellaSwag example"):
        hellaswag.load_examples(bad)
    with pytest.raises(HellaSwagUnavailable, match="no such file"):
        hellaswag.load_examples(tmp_path / "missing.jsonl")


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} absent (shared real-data folder)")
def test_shared_format_files():
    val = hellaswag.load_examples(SHARED / "hellaswag_val.jsonl")
    assert [ex["ind"] for ex in val] == [24, 92] and [ex["label"] for ex in val] == [3, 3]
    # the test split carries no labels: it cannot be scored, and says so
    with pytest.raises(HellaSwagUnavailable, match="hellaswag_test.jsonl:1"):
        hellaswag.load_examples(SHARED / "hellaswag_test.jsonl")


def test_cache_used_offline_and_incomplete_cache_refused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    line = json.dumps(ROOF) + "\n"
    (cache / hellaswag.VAL_FILE).write_text(line * hellaswag.NUM_VAL_EXAMPLES)
    got = hellaswag.load_examples(cache_dir=cache, url=DEAD_URL, limit=3)
    assert got == [ROOF] * 3  # served from the cache: the dead URL was never needed
    (cache / hellaswag.VAL_FILE).write_text(line * 100)  # a truncated copy is not trusted
    with pytest.raises(HellaSwagUnavailable):
        hellaswag.load_examples(cache_dir=cache, url=DEAD_URL)
    assert sorted(p.name for p in cache.iterdir()) == [hellaswag.VAL_FILE]  # no temp file left


def test_offline_without_cache_one_clear_line(tmp_path, capsys):
    cache = tmp_path / "data" / "hellaswag"
    with pytest.raises(HellaSwagUnavailable) as err:
        hellaswag.load_examples(cache_dir=cache, url=DEAD_URL)
    message = str(err.value)
    assert "\n" not in message
    assert str(cache / hellaswag.VAL_FILE) in message and DEAD_URL in message and "--data" in message
    assert not (tmp_path / "data").exists()  # a failed download leaves no empty folder behind
    # the CLI: exit status 2, the same single line on stderr, nothing on stdout
    for argv in (["--model", "gpt2"], ["--download"]):
        status = hellaswag_cli.main(argv + ["--cache-dir", str(cache), "--url", DEAD_URL])
        out, errout = capsys.readouterr()
        assert status == 2 and out == ""
        assert errout.splitlines() == [f"error: {message}"]
        assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------
# rendering


def test_harness_preprocess_hand_checked():
    pre = hellaswag.harness_preprocess
    assert pre("  A man is sitting on a roof. He ") == "A man is sitting on a roof. He"
    assert pre("Personal Care and Style: [header] How to dye your hair [title] Choose a color.") == (
        "Personal Care and Style: How to dye your hair. Choose a color.")
    # strip comes first, so a leading bracket leaves a leading space behind (as in the harness)
    assert pre(" [step] Rinse well. ") == " Rinse well."
    assert pre("a [substeps] b") == "a b"


def test_render_default_layout(enc):
    r = render_example(ROOF, enc, "default")
    ctx = enc.encode_ordinary("A man is sitting on a roof. he")
    assert r.label == 3
    for k, ending in enumerate(ROOF["endings"]):
        end = enc.encode_ordinary(" " + ending)
        assert r.tokens[k] == ctx + end
        assert r.mask[k] == [0] * len(ctx) + [1] * len(end)
        assert r.norm[k] == len(end)  # acc_norm divides by the ending's token count
    assert enc.decode(r.tokens[1]) == "A man is sitting on a roof. he is ripping level tiles off."


def test_render_harness_layout(enc):
    r = render_example(ROOF, enc, "harness")
    query = "Roof shingle removal: A man is sitting on a roof. He"  # label prefix, ctx_b capitalized
    for k, ending in enumerate(ROOF["endings"]):
        n_ctx = r.mask[k].index(1)
        assert r.tokens[k][:n_ctx] == enc.encode_ordinary(query)
        assert enc.decode(r.tokens[k][n_ctx:]) == " " + ending
        assert r.mask[k] == [0] * n_ctx + [1] * (len(r.tokens[k]) - n_ctx)
        assert r.norm[k] == len(ending)  # characters, the joining space not counted

    w = render_example(WIKIHOW, enc, "harness")
    n_ctx = w.mask[0].index(1)
    # ctx = ctx_a + " " + "[step] pick".capitalize() -> "[step] pick" (capitalize lowercases the rest);
    # " [title]" -> ". ", brackets dropped, double spaces collapsed
    assert enc.decode(w.tokens[0][:n_ctx]) == (
        "Personal Care and Style: How to dye your hair. Choose a color. pick")
    assert enc.decode(w.tokens[0][n_ctx:]) == " a shade close to your own. Lighter is easier."
    assert w.norm == [len("a shade close to your own. Lighter is easier."), len(" Buy a kit."),
                      len("the darkest one you can find."), len("nothing at all.")]
    assert enc.decode(render_example(WRITTEN[2], enc, "harness").tokens[0]).startswith(
        "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady ")


def test_harness_trailing_space_moves_to_continuation(enc):
    # a context that ends in a space after clean-up: the harness moves the space to the ending
    ctx, cont = hellaswag.harness_encode_pair(enc, "Cooking: she ", " stirs.")
    assert enc.decode(ctx) == "Cooking: she" and enc.decode(cont) == "  stirs."
    assert ctx + cont == enc.encode_ordinary("Cooking: she  stirs.")


# ----------------------------------------------------------------------------------------
# scoring


def unigram_model_fn(probs, n_vocab):
    """A model that predicts the same distribution everywhere: log-likelihoods by hand."""
    rest = (1 - sum(probs.values())) / (n_vocab - len(probs))
    logp = torch.full((n_vocab,), math.log(rest))
    for token, p in probs.items():
        logp[token] = math.log(p)
    return lambda idx: logp.expand(idx.shape[0], idx.shape[1], n_vocab)


def test_scoring_hand_checked_both_styles(enc):
    no, a, everything = 645, 257, 2279  # " no", " a", " everything": one token each
    assert [enc.encode_ordinary(s) for s in (" no", " a", " everything")] == [[no], [a], [everything]]
    model_fn = unigram_model_fn({no: 0.1, a: 0.4, everything: 0.05}, enc.n_vocab)
    ex = example("Someone answers.", "they say", ["no", "a a a a", "everything", "no no no"], 2)
    ll = [math.log(0.1), 4 * math.log(0.4), math.log(0.05), 3 * math.log(0.1)]
    # summed: "no" -2.30 best; per token: "a a a a" -0.92 best; per character: "everything" -0.30 best
    expected = {"default": (0, 1), "harness": (0, 2)}
    for style, (pred, pred_norm) in expected.items():
        res = evaluate(model_fn, [ex], enc, style)
        got_pred, got_pred_norm, got_ll = res["predictions"][0]
        assert got_ll == pytest.approx(ll, rel=1e-4)  # float32 log-softmax over 50257 ids
        assert (got_pred, got_pred_norm) == (pred, pred_norm)
        assert (res["n"], res["acc"], res["acc_norm"]) == (1, 0.0, float(pred_norm == 2))


def test_batch_is_padded_to_longest_row(enc):
    seen = []
    base = unigram_model_fn({}, enc.n_vocab)

    def spy(idx):
        seen.append(idx.clone())
        return base(idx)

    batch = [render_example(ex, enc, "default") for ex in (ROOF, WRITTEN[3])]
    hellaswag.score_batch(spy, batch, "cpu", enc.n_vocab)
    rows = [row for r in batch for row in r.tokens]
    (idx,) = seen
    # 2 examples x 4 endings in one forward; the last token of a row is only a target
    assert idx.shape == (8, max(map(len, rows)) - 1)
    for i, row in enumerate(rows):
        assert idx[i, : len(row) - 1].tolist() == row[:-1] and not idx[i, len(row) - 1:].any()


def direct_loglikelihoods(hf, rendered):
    """Per ending, one unpadded row through the HF model; sum log p(token) over the ending."""
    out = []
    for row, mask in zip(rendered.tokens, rendered.mask):
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([row])).logits[0].double(), dim=-1)
        out.append(sum(logp[t - 1, row[t]].item() for t in range(1, len(row)) if mask[t]))
    return out


@pytest.mark.parametrize("style", hellaswag.STYLES)
def test_hf_folder_and_our_gpt_agree_with_direct_computation(style, hf_dir, examples, data_file, enc, capsys):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    model_fn, max_length = load_hf_model_fn(str(hf_dir), "cpu")
    via_hf = evaluate(model_fn, examples, enc, style, batch_size=3, max_length=max_length)
    assert (max_length, via_hf["truncated"]) == (128, 0)
    gpt = gpt_from_hf(hf_dir).train()
    via_gpt = hellaswag.evaluate_gpt(gpt, examples, style=style, batch_size=2)
    assert gpt.training  # evaluate_gpt scores in eval mode, then gives the model back as it was
    for i, ex in enumerate(examples):
        r = render_example(ex, enc, style)
        ll = direct_loglikelihoods(hf, r)
        pred = max(range(4), key=lambda k: ll[k])
        pred_norm = max(range(4), key=lambda k: ll[k] / r.norm[k])
        for res in (via_hf, via_gpt):
            assert res["predictions"][i][:2] == (pred, pred_norm)
            assert res["predictions"][i][2] == pytest.approx(ll, abs=1e-3)
    assert len({p[:2] for p in via_hf["predictions"].values()}) > 1  # not one constant answer
    bf16 = hellaswag.evaluate_gpt(gpt, examples, style=style, autocast_dtype=torch.bfloat16)
    for i, (_, _, ll) in bf16["predictions"].items():
        assert ll == pytest.approx(via_gpt["predictions"][i][2], rel=0.05)  # bf16: ~3 digits

    # the CLI on the same folder reports the same counts
    assert hellaswag_cli.main(["--model", str(hf_dir), "--data", str(data_file), "--style", style,
                           "--json", "--device", "cpu"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert {k: cli[k] for k in ("n", "correct", "correct_norm", "acc", "acc_norm")} == {
        k: via_hf[k] for k in ("n", "correct", "correct_norm", "acc", "acc_norm")}


def test_two_ranks_under_torchrun_equal_one_process(hf_dir, examples, data_file, enc):
    single = evaluate(load_hf_model_fn(str(hf_dir), "cpu")[0], examples, enc, batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "hellaswag.py"), "--model", str(hf_dir), "--data", str(data_file),
           "--json", "--device", "cpu", "--batch-size", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]  # rank 0 prints once
    both = json.loads(line)
    assert len(examples) % 2 == 1  # ranks get unequal shares
    assert (both["n"], both["correct"], both["correct_norm"]) == (
        single["n"], single["correct"], single["correct_norm"])


def test_exported_checkpoint_matches_checkpoint(tmp_path, examples, data_file, enc, capsys):
    from models.gpt2 import GPT, GPTConfig

    torch.manual_seed(1)
    # a padded vocabulary (50304), as in training: export crops it to GPT-2's 50257
    model = GPT(GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=32))
    ckpt = tmp_path / "ckpt_0000010.pt"
    torch.save({"model": model.state_dict(), "config": {"model": model.config.to_dict()}, "step": 10}, ckpt)
    export_hf(model, tmp_path / "hf")

    from_ckpt = evaluate(load_checkpoint_fn(str(ckpt), "cpu")[0], examples, enc, batch_size=4)
    from_hf = evaluate(load_hf_model_fn(str(tmp_path / "hf"), "cpu")[0], examples, enc, batch_size=4)
    for i in range(len(examples)):
        assert from_ckpt["predictions"][i][:2] == from_hf["predictions"][i][:2]
        assert from_ckpt["predictions"][i][2] == pytest.approx(from_hf["predictions"][i][2], abs=1e-4)

    assert hellaswag_cli.main(["--checkpoint", str(ckpt), "--data", str(data_file), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{len(examples)} examples, acc {from_hf['acc']:.4f}, acc_norm {from_hf['acc_norm']:.4f}" in out
    assert "124M" in out and "1558M" in out and "not the full set" in out


def test_speedrun_export_scores_as_its_checkpoint(speedrun_export, examples, data_file, enc, capsys):
    """hellaswag.py --model on the speedrun's Qwen3ForCausalLM export: its checkpoint's answers and
    log-likelihoods (its padded vocabulary cropped on export), and the same scores."""
    checkpoint, export = speedrun_export
    model_fn, context = load_hf_model_fn(str(export), "cpu")
    assert (type(model_fn.model).__name__, context) == ("Qwen3ForCausalLM", 128)
    from_hf = evaluate(model_fn, examples, enc, batch_size=4, max_length=context)
    from_ckpt = evaluate(load_checkpoint_fn(str(checkpoint), "cpu")[0], examples, enc, batch_size=4)
    for i in range(len(examples)):
        assert from_hf["predictions"][i][:2] == from_ckpt["predictions"][i][:2]
        assert from_hf["predictions"][i][2] == pytest.approx(from_ckpt["predictions"][i][2], abs=1e-4)
    assert len({p[:2] for p in from_ckpt["predictions"].values()}) > 1  # not one constant answer

    scores = []
    for which in (["--checkpoint", str(checkpoint)], ["--model", str(export)]):
        assert hellaswag_cli.main([*which, "--data", str(data_file), "--json", "--device", "cpu"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[0] == scores[1] and scores[0]["n"] == len(examples)


# ----------------------------------------------------------------------------------------
# examples longer than the model's context


def harness_loglikelihood(hf, context_enc, continuation_enc, max_length):
    """lm-evaluation-harness's HFLM._loglikelihood_tokens for one request, on a causal model:
    the input is (context + continuation)[-(max_length + 1):][:-1], and the continuation's
    log-probabilities are read from the input's last len(continuation) positions."""
    inp = (context_enc + continuation_enc)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([inp])).logits[0].double(), dim=-1)
    inplen, contlen = len(inp), len(continuation_enc)
    cont_logp = logp[inplen - contlen: inplen]
    return cont_logp.gather(1, torch.tensor(continuation_enc).unsqueeze(1)).sum().item()


@pytest.fixture(scope="module")
def short_context_hf_dir(tmp_path_factory):
    """A random GPT-2 with a 40-token context: shorter than some examples (up to 62 tokens),
    longer than every ending (up to 27)."""
    return random_hf_gpt2(tmp_path_factory.mktemp("hf") / "short-context", context=40, seed=2)


@pytest.mark.parametrize("style", hellaswag.STYLES)
def test_long_examples_left_truncated_as_the_harness_does(style, short_context_hf_dir, examples, enc, capsys):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(short_context_hf_dir).eval()
    model_fn, context = load_hf_model_fn(str(short_context_hf_dir), "cpu")
    gpt = gpt_from_hf(short_context_hf_dir)
    assert context == gpt.config.block_size == 40
    rendered = [render_example(ex, enc, style) for ex in examples]
    # 27: the longest ending exactly fills the input, the window starts on the last context token
    for max_length in (27, 40):  # shorter than the model's (the harness's --max_length), and its own
        longer = sum(any(len(row) > max_length + 1 for row in r.tokens) for r in rendered)
        assert 0 < longer < len(examples)  # the test covers both cases
        capsys.readouterr()
        results = [evaluate(model_fn, examples, enc, style, batch_size=3, max_length=max_length)]
        said = capsys.readouterr().err.splitlines()
        assert said == [f"HellaSwag ({style} style): {longer} of {len(examples)} examples are longer "
                        f"than the model's context of {max_length} tokens: left-truncated as "
                        "lm-evaluation-harness does"]
        if max_length == context:  # our GPT reads its own block_size; the same examples: not said again
            results.append(hellaswag.evaluate_gpt(gpt, examples, style=style, batch_size=2))
            assert capsys.readouterr().err == ""
        for i, r in enumerate(rendered):
            ll = []
            for row, mask in zip(r.tokens, r.mask):
                n_ctx = mask.index(1)
                ll.append(harness_loglikelihood(hf, row[:n_ctx], row[n_ctx:], max_length))
            pred = max(range(4), key=lambda k: ll[k])
            pred_norm = max(range(4), key=lambda k: ll[k] / r.norm[k])
            for res in results:
                assert res["truncated"] == longer
                assert res["predictions"][i][:2] == (pred, pred_norm)
                assert res["predictions"][i][2] == pytest.approx(ll, abs=1e-4)


def test_ending_longer_than_context_refused_before_any_work(tmp_path, short_context_hf_dir, examples,
                                                            data_file, enc, capsys):
    calls = []

    def model_fn(idx):
        calls.append(idx.shape)
        raise AssertionError("no forward pass may run")

    longest_ending = max(sum(m) for ex in examples for m in render_example(ex, enc, "default").mask)
    with pytest.raises(ValueError, match=f"ending longer than the model's context of {longest_ending - 1} "):
        evaluate(model_fn, examples, enc, max_length=longest_ending - 1)
    assert calls == []

    # the CLI: exit status 2 and one line naming its own way out, for a model whose context (8)
    # is shorter than some endings; these are the examples with an ending of 9+ tokens
    too_long = [i for i, ex in enumerate(examples)
                if any(sum(m) > 8 for m in render_example(ex, enc, "default").mask)]
    assert 0 < len([i for i in too_long if i < len(WRITTEN)]) < len(WRITTEN)  # both cases, ../shared or not
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=8, n_embd=16, n_layer=1, n_head=1)
                    ).save_pretrained(tmp_path / "tiny-context")
    tiny = ["--model", str(tmp_path / "tiny-context"), "--data", str(data_file), "--device", "cpu"]
    capsys.readouterr()  # transformers' own progress bar
    status = hellaswag_cli.main(tiny)
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    line = err.splitlines()[-1]  # after transformers' own "Loading weights" progress bar
    assert err.count("error: ") == 1
    assert line.startswith(f"error: {len(too_long)} of {len(examples)} HellaSwag examples have an ending")
    assert "context of 8 tokens" in line and "--skip-too-long" in line and "--block-size" not in line

    # --skip-too-long scores the others, and says how many were left out
    assert hellaswag_cli.main(tiny + ["--skip-too-long", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out.splitlines()[-1])
    assert (result["n"], result["left_out"]) == (len(examples) - len(too_long), len(too_long))
    assert f"{len(too_long)} of {len(examples)} examples left out: an ending is longer" in err
    model_fn, _ = load_hf_model_fn(str(tmp_path / "tiny-context"), "cpu")
    kept = [ex for i, ex in enumerate(examples) if i not in too_long]
    assert result["correct_norm"] == evaluate(model_fn, kept, enc, max_length=8)["correct_norm"]


# ----------------------------------------------------------------------------------------
# download under torchrun


def test_temporary_download_name_unique_per_host_and_process(tmp_path, monkeypatch):
    final = tmp_path / hellaswag.VAL_FILE
    names = set()
    for host, pid in [("node1", 100), ("node2", 100), ("node1", 101)]:
        monkeypatch.setattr(downloads.socket, "gethostname", lambda: host)
        monkeypatch.setattr(downloads.os, "getpid", lambda: pid)
        tmp = downloads.temporary_download_path(final)
        assert tmp.parent == final.parent and tmp.name.startswith(f".{final.name}.tmp-")
        assert host in tmp.name and str(pid) in tmp.name
        names.add(tmp.name)
    assert len(names) == 3  # same pid on two nodes, or two processes on one node: never the same file


RANKS_SCRIPT = """
import sys
import torch.distributed as dist
from evaluation import hellaswag

dist.init_process_group("gloo")
rank = dist.get_rank()
try:  # rank 0 cannot download: every rank fails alike, nobody hangs
    hellaswag.load_examples(cache_dir=sys.argv[1] + "/offline", url=sys.argv[3])
except hellaswag.HellaSwagUnavailable as e:
    print(f"rank {rank} unavailable: {e}")
examples = hellaswag.load_examples(cache_dir=sys.argv[1] + "/cache", url=sys.argv[2])
print(f"rank {rank} read {len(examples)}")
dist.barrier()
dist.destroy_process_group()
"""


def test_rank0_downloads_while_other_ranks_wait_then_read(tmp_path):
    """2 ranks under torchrun (gloo): one GET to a local server, answered after a delay; both
    ranks read all 10,042 examples from the one file rank 0 wrote."""
    import functools
    import http.server
    import threading
    import time

    served = tmp_path / "served"
    served.mkdir()
    (served / hellaswag.VAL_FILE).write_text((json.dumps(ROOF) + "\n") * hellaswag.NUM_VAL_EXAMPLES)
    requests_seen = []

    class SlowHandler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests_seen.append(self.path)
            time.sleep(1.0)  # a rank that did not wait would find no file and fetch its own
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SlowHandler, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{hellaswag.VAL_FILE}"
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path), url, DEAD_URL]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = sorted(ln for ln in proc.stdout.splitlines() if ln.startswith("rank "))
    unavailable = [ln.split(": ", 1)[1] for ln in lines if "unavailable" in ln]
    assert len(unavailable) == 2 and unavailable[0] == unavailable[1] and DEAD_URL in unavailable[0]
    assert [ln for ln in lines if "read" in ln] == [f"rank {r} read {hellaswag.NUM_VAL_EXAMPLES}" for r in (0, 1)]
    assert requests_seen == [f"/{hellaswag.VAL_FILE}"]  # rank 0 only
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [hellaswag.VAL_FILE]  # no temp file left


def harness_loglikelihoods(folder, examples):
    """(docs, [[4 log-likelihoods] per example]) of EleutherAI's lm-evaluation-harness, with its own
    HellaSwag preprocessing, on a Hugging Face folder given no extra arguments, offline."""
    import datasets
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.hellaswag.utils import process_docs

    lm = HFLM(pretrained=str(folder), device="cpu", batch_size=4)
    docs = process_docs(datasets.Dataset.from_list([{k: ex[k] for k in
                                                     ("ctx_a", "ctx_b", "activity_label", "endings", "label")}
                                                    for ex in examples]))
    requests = [Instance("loglikelihood", doc, (doc["query"], " " + choice), idx)
                for doc in docs for idx, choice in enumerate(doc["choices"])]
    results = [ll for ll, _ in lm.loglikelihood(requests)]
    return docs, [results[4 * i : 4 * i + 4] for i in range(len(docs))]


def assert_harness_agrees(docs, harness_ll, ours):
    """The harness's log-likelihoods are hellaswag.py's (--style harness), so are its acc_norm answers."""
    for i, doc in enumerate(docs):
        assert harness_ll[i] == pytest.approx(ours["predictions"][i][2], abs=5e-5)
        pred_norm = max(range(4), key=lambda k: harness_ll[i][k] / len(doc["choices"][k]))
        assert ours["predictions"][i][1] == pred_norm


def test_lm_evaluation_harness_scores_an_export_as_hellaswag_py_does(tmp_path, examples, enc, monkeypatch):
    """lm-evaluation-harness on a GPT-2 `hf_gpt2.py export` folder: the same log-likelihoods as
    `hellaswag.py --style harness` on the checkpoint, so the same answers and accuracies."""
    from models.gpt2 import GPT, GPTConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # a wider init than GPT-2's: answers that differ between endings
        for p in model.parameters():
            p.normal_(0, 0.3)
    export_hf(model, tmp_path / "hf")
    ours = evaluate(lambda idx: model(idx)[0], examples, enc, "harness", batch_size=4, max_length=128)
    assert_harness_agrees(*harness_loglikelihoods(tmp_path / "hf", examples), ours)


def test_lm_evaluation_harness_scores_the_speedrun_export_as_hellaswag_py_does(speedrun_export, examples,
                                                                                 enc, monkeypatch):
    """lm-evaluation-harness on the speedrun's Qwen3ForCausalLM export: the log-likelihoods of
    `hellaswag.py --style harness --model` on the same folder (and so, by the test above it, of
    the checkpoint)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, export = speedrun_export
    ours = evaluate(load_hf_model_fn(str(export), "cpu")[0], examples, enc, "harness", batch_size=4,
                    max_length=128)
    assert_harness_agrees(*harness_loglikelihoods(export, examples), ours)
