"""HellaSwag: render its examples, score a language model on them (the validation set itself,
its download and checks, is hellaswag_data.py).

Each example is a context and 4 candidate endings; the model "answers" by finding the ending
it assigns the highest likelihood. Two scoring styles, to compare with published numbers:

- "default", as build-nanogpt's hellaswag.py (completion style): context = the `ctx` field,
  acc picks the ending with the smallest summed cross-entropy over its tokens, acc_norm the
  smallest mean cross-entropy per token.
- "harness", as EleutherAI's lm-evaluation-harness `hellaswag` task: context = activity label
  + ": " + ctx_a + " " + ctx_b.capitalize(), WikiHow bracket artefacts cleaned up; acc picks
  the largest summed log-likelihood, acc_norm the largest log-likelihood per character of the
  ending.

Both styles are scored by the same code from a `model_fn(idx) -> logits`, so our models and
their Hugging Face exports (GPT2LMHeadModel, Qwen3ForCausalLM) give the same answers. Examples
longer than the model's context are left-truncated exactly as the harness does (and said so once).

The command line is hellaswag.py at the top of the repository; training calls evaluate_gpt.
"""

import re
import sys
from typing import NamedTuple

import torch

# the data half: re-exported, so that callers take the whole benchmark from this module
from evaluation.hellaswag_data import (DEFAULT_CACHE_DIR, NUM_VAL_EXAMPLES, URL, VAL_FILE,  # noqa: F401
                                       HellaSwagUnavailable, download, load_examples)
from evaluation.scoring import (Logits, check_gpt2_vocab, continuation_fits, crop_left, rank_and_world,
                                score_rows, sum_over_ranks)
from models.gpt2 import unwrap
from pipeline.tokenizer import get_gpt2_encoding

STYLES = ("default", "harness")

# OpenAI GPT-2 on the full validation set: (acc, acc_norm); None where no reference exists.
# default: build-nanogpt's hellaswag.py; harness: lm-evaluation-harness, as quoted by build-nanogpt.
REFERENCE = {
    "default": {
        "gpt2": (0.2859, 0.2955),
        "gpt2-medium": (None, 0.3752),
        "gpt2-large": (None, 0.4320),
        "gpt2-xl": (None, 0.4889),
    },
    "harness": {"gpt2": (0.2892, 0.3114)},
}
MODEL_LABELS = {"gpt2": "124M", "gpt2-medium": "350M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
# The GPT-3 paper's zero-shot HellaSwag accuracy (Brown et al. 2020, Table 3.2) for the GPT-3
# model nearest each GPT-2 size; build-nanogpt compares GPT-3 Small's with acc_norm.
GPT3_REFERENCE = {"gpt2": ("GPT-3 Small 125M", 0.337), "gpt2-medium": ("GPT-3 Medium 350M", 0.436),
                  "gpt2-large": ("GPT-3 Large 760M", 0.510), "gpt2-xl": ("GPT-3 XL 1.3B", 0.547)}


def references_for(n_layer, n_embd, style="default"):
    """[(label, acc_norm)] to show beside a model of this shape: OpenAI's GPT-2 of the same size
    (scored in `style`) and the GPT-3 paper's model nearest it; [] for other shapes."""
    from models.gpt2 import MODEL_CONFIGS

    for name, shape in MODEL_CONFIGS.items():
        if name in MODEL_LABELS and (shape.n_layer, shape.n_embd) == (n_layer, n_embd):
            found = []
            if name in REFERENCE[style]:
                found.append((f"OpenAI GPT-2 {MODEL_LABELS[name]}", REFERENCE[style][name][1]))
            return found + [GPT3_REFERENCE[name]]
    return []


# -----------------------------------------------------------------------------------------
# Rendering


class Rendered(NamedTuple):
    tokens: list  # 4 rows of token ids: context + ending
    mask: list  # 4 rows, 1 where the token belongs to the ending (the tokens that are scored)
    label: int  # index of the correct ending
    norm: list  # 4 acc_norm divisors: ending tokens (default) or ending characters (harness)


def harness_preprocess(text):
    """lm-evaluation-harness's clean-up (tasks/hellaswag/utils.py): the brackets are artefacts of
    the WikiHow part of HellaSwag ("[header]", "[title]", "[step]", ...)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def harness_encode_pair(enc, context, continuation):
    """(context tokens, continuation tokens) as the harness splits them (TemplateLM._encode_pair):
    trailing spaces of the context move to the continuation, and the continuation's tokens are
    those of encode(context + continuation) past encode(context)'s length."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc.encode_ordinary(context + continuation)
    context_tokens = enc.encode_ordinary(context)
    return context_tokens, whole[len(context_tokens):]


def render_example(example, enc, style="default"):
    """Token rows, ending masks, label and acc_norm divisors of one example (see Rendered)."""
    if style == "default":
        ctx_tokens = enc.encode_ordinary(example["ctx"])
        pairs = [(ctx_tokens, enc.encode_ordinary(" " + end)) for end in example["endings"]]
        norm = [len(end_tokens) for _, end_tokens in pairs]
    elif style == "harness":
        ctx = example["ctx_a"] + " " + example["ctx_b"].capitalize()
        query = harness_preprocess(example["activity_label"] + ": " + ctx)
        choices = [harness_preprocess(end) for end in example["endings"]]
        pairs = [harness_encode_pair(enc, query, " " + choice) for choice in choices]
        norm = [len(choice) for choice in choices]  # characters, without the joining space
    else:
        raise ValueError(f"unknown HellaSwag style {style!r}: choose one of {', '.join(STYLES)}")
    tokens = [c + e for c, e in pairs]
    mask = [[0] * len(c) + [1] * len(e) for c, e in pairs]
    return Rendered(tokens, mask, int(example["label"]), norm)


def truncate_left(rendered, max_length):
    """Rows cut to their last max_length + 1 tokens, as lm-evaluation-harness's
    HFLM._loglikelihood_tokens does for a causal model: the model reads all but the last token
    (at most max_length), and every ending token is still predicted from the window before it.
    The acc_norm divisors stay those of the whole ending."""
    tokens, mask = crop_left(rendered.tokens, rendered.mask, max_length + 1)
    return rendered._replace(tokens=tokens, mask=mask)


# -----------------------------------------------------------------------------------------
# Scoring


def score_batch(model_fn, batch, device, n_vocab, autocast_dtype=None):
    """Log-likelihood of every ending of a batch of rendered examples: float64 (len(batch), 4).
    All 4 * len(batch) rows go through one forward (evaluation.scoring.score_rows)."""
    rows = [row for r in batch for row in r.tokens]
    masks = [m for r in batch for m in r.mask]
    return score_rows(model_fn, rows, masks, device, n_vocab, autocast_dtype).loglik.view(len(batch), 4)


# (style, examples, context, truncated) already reported: training scores the same examples
# every N steps, and one line about their truncation is enough.
_truncation_reported = set()


def context_overflows(rendered, max_length):
    """(examples with an ending longer than the context: unscorable, examples longer than the
    context: left-truncated) among `rendered` (Rendered values), for a context of max_length."""
    too_long = sum(any(not continuation_fits(m, max_length + 1) for m in r.mask) for r in rendered)
    truncated = sum(any(len(row) > max_length + 1 for row in r.tokens) for r in rendered)
    return too_long, truncated


def fit_to_context(rendered, max_length, style, n_examples, rank, world_size, device, skip_too_long=False):
    """(`rendered` ({index: Rendered}) left-truncated to a context of `max_length` tokens, examples
    truncated, examples left out), the counts summed over ranks; rank 0 says so once, on stderr.
    An ending longer than the context cannot be scored at all: ValueError on every rank, before
    any forward pass (lm-evaluation-harness stops on a bare assertion there), unless
    `skip_too_long`, which leaves those examples out."""
    counts = torch.tensor(context_overflows(rendered.values(), max_length))
    # every rank must decide alike, or one would wait for the others forever
    too_long, truncated = sum_over_ranks(counts, device, world_size).tolist()
    if too_long and not skip_too_long:
        raise ValueError(f"{too_long} of {n_examples} HellaSwag examples have an ending longer than the "
                         f"model's context of {max_length} tokens and cannot be scored; pass "
                         f"--skip-too-long to score the others, or use a model with a longer context")
    key = (style, n_examples, max_length, truncated)
    if (truncated or too_long) and rank == 0 and key not in _truncation_reported:
        _truncation_reported.add(key)
        if too_long:
            print(f"HellaSwag ({style} style): {too_long} of {n_examples} examples left out: an ending "
                  f"is longer than the model's context of {max_length} tokens", file=sys.stderr)
        if truncated:
            print(f"HellaSwag ({style} style): {truncated} of {n_examples} examples are longer than the "
                  f"model's context of {max_length} tokens: left-truncated as lm-evaluation-harness does",
                  file=sys.stderr)
    fitting = {i: truncate_left(r, max_length) for i, r in rendered.items()
               if all(continuation_fits(m, max_length + 1) for m in r.mask)}
    return fitting, truncated, too_long


def evaluate(model_fn, examples, enc, style="default", batch_size=8, device="cpu",
             rank=None, world_size=None, autocast_dtype=None, progress=False, max_length=None,
             lockstep=False, skip_too_long=False, should_stop=None):
    """Score `examples` with `model_fn(idx (B, T) LongTensor) -> logits (B, T, V)`.

    Rank r scores examples r, r + world_size, ...; with world_size > 1 the counts are summed
    over ranks (all_reduce), so every rank returns the totals, equal to a single-process run.
    `max_length`: the model's context; longer examples are left-truncated (see fit_to_context).
    `skip_too_long`: leave out the examples with an ending longer than the context (counted in
    `left_out`) instead of refusing them all.
    `lockstep`: every rank makes the same number of model calls (an FSDP model gathers its weights
    from all ranks in every forward); a rank with a shorter share scores a batch again, unused.
    `should_stop()`: polled before each batch, as many times on every rank (a rank with a shorter
    share polls on); when it returns True the scoring ends and None is returned.
    Returns dict(acc, acc_norm, n, correct, correct_norm, truncated, left_out, style, predictions),
    where predictions maps this rank's example indices to (pred, pred_norm, [4 log-likelihoods]).
    """
    rank, world_size = rank_and_world(rank, world_size)
    mine = list(range(rank, len(examples), world_size))
    rendered = {i: render_example(examples[i], enc, style) for i in mine}
    truncated = left_out = 0
    if max_length is not None:
        rendered, truncated, left_out = fit_to_context(rendered, max_length, style, len(examples), rank,
                                                       world_size, device, skip_too_long)
    predictions = {}
    scored = [i for i in mine if i in rendered]
    batches = [scored[start : start + batch_size] for start in range(0, len(scored), batch_size)]
    if lockstep and not scored:
        raise ValueError(f"lockstep scoring needs at least one example per rank: {len(examples)} "
                         f"examples for {world_size} ranks")
    if lockstep or should_stop is not None:  # as many rounds on every rank
        most = -(-len(range(0, len(examples), world_size)) // batch_size)  # rank 0's share
        batches += [None] * (most - len(batches))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"hellaswag ({style})", unit="batch", file=sys.stderr)
    for indices in batches:
        if should_stop is not None and should_stop():
            return None
        if indices is None:
            if lockstep:  # a forward the others make too; its result is not used
                score_batch(model_fn, [rendered[scored[0]]], device, enc.n_vocab, autocast_dtype)
            continue
        batch = [rendered[i] for i in indices]
        ll = score_batch(model_fn, batch, device, enc.n_vocab, autocast_dtype)
        norm = torch.tensor([r.norm for r in batch], dtype=torch.float64)
        # argmax takes the first of equal scores, as numpy's argmax in the harness
        pred, pred_norm = ll.argmax(dim=1), (ll / norm).argmax(dim=1)
        for j, i in enumerate(indices):
            predictions[i] = (int(pred[j]), int(pred_norm[j]), ll[j].tolist())
    counts = torch.zeros(3, dtype=torch.long)
    for i, (pred, pred_norm, _) in predictions.items():
        label = int(examples[i]["label"])
        counts += torch.tensor([1, pred == label, pred_norm == label])
    n, correct, correct_norm = sum_over_ranks(counts, device, world_size).tolist()
    return {
        "acc": correct / max(n, 1),
        "acc_norm": correct_norm / max(n, 1),
        "n": n,
        "correct": correct,
        "correct_norm": correct_norm,
        "truncated": truncated,
        "left_out": left_out,
        "style": style,
        "predictions": predictions,
    }


def evaluate_gpt(model, examples, *, enc=None, style="default", batch_size=8, rank=None,
                 world_size=None, device="cpu", autocast_dtype=None, lockstep=False, should_stop=None):
    """HellaSwag for our GPT during training: every rank must call it (the counts are summed
    across ranks). `model` may be wrapped in DDP and/or torch.compile: the plain module is
    used, in eval mode, and its training mode is restored afterwards. `enc` defaults to GPT-2's."""
    raw = unwrap(model)
    check_gpt2_vocab(raw, "evaluate_gpt", "HellaSwag")
    was_training = raw.training
    raw.eval()
    try:
        return evaluate(Logits(raw), examples, enc or get_gpt2_encoding(), style,
                        batch_size, device, rank, world_size, autocast_dtype,
                        max_length=raw.config.block_size, lockstep=lockstep, should_stop=should_stop)
    finally:
        raw.train(was_training)


def reference_table(result, style):
    """Lines comparing `result` with OpenAI GPT-2 under the same style (full validation set)."""
    lines = [f"OpenAI GPT-2, {style} style, full val set ({NUM_VAL_EXAMPLES} examples); delta = this - reference:",
             f"  {'model':<8} {'acc':>7} {'delta':>8}   {'acc_norm':>8} {'delta':>8}"]
    for name, (acc, acc_norm) in REFERENCE[style].items():
        acc_cols = f"{acc:7.4f} {result['acc'] - acc:+8.4f}" if acc is not None else f"{'-':>7} {'-':>8}"
        lines.append(f"  {MODEL_LABELS[name]:<8} {acc_cols}   {acc_norm:8.4f} {result['acc_norm'] - acc_norm:+8.4f}")
    if result["n"] != NUM_VAL_EXAMPLES:
        lines.append(f"  (this run scored {result['n']} examples, not the full set: deltas are indicative)")
    return lines
