"""HellaSwag: get the validation set, render its examples, score a language model on them.

Each example is a context and 4 candidate endings; the model "answers" by finding the ending
it assigns the highest likelihood. Two scoring styles, to compare with published numbers:

- "default", as build-nanogpt's hellaswag.py (completion style): context = the `ctx` field,
  acc picks the ending with the smallest summed cross-entropy over its tokens, acc_norm the
  smallest mean cross-entropy per token.
- "harness", as EleutherAI's lm-evaluation-harness `hellaswag` task: context = activity label
  + ": " + ctx_a + " " + ctx_b.capitalize(), WikiHow bracket artefacts cleaned up; acc picks
  the largest summed log-likelihood, acc_norm the largest log-likelihood per character of the
  ending.

Both styles are scored by the same code from a `model_fn(idx) -> logits`, so our GPT and
Hugging Face's GPT2LMHeadModel give the same answers for the same weights. Examples longer than
the model's context are left-truncated exactly as the harness does (and said so once).

    python hellaswag.py --model gpt2                       # OpenAI's 124M through transformers
    python hellaswag.py --checkpoint runs/x/ckpt_0019000.pt --style harness
    torchrun --standalone --nproc_per_node=8 hellaswag.py --model gpt2-xl --dtype bfloat16
"""

import argparse
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.nn import functional as F

from hf_gpt2 import load_hf_gpt2
from model import unwrap
from pipeline.tokenizer import GPT2_VOCAB_SIZE, get_gpt2_encoding
from trainer.checkpoint import load_model
from trainer.distributed import pick_device_type

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_FILE = "hellaswag_val.jsonl"
NUM_VAL_EXAMPLES = 10042
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / "data" / "hellaswag"
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
    from model import MODEL_CONFIGS

    for name, shape in MODEL_CONFIGS.items():
        if name in MODEL_LABELS and (shape.n_layer, shape.n_embd) == (n_layer, n_embd):
            found = []
            if name in REFERENCE[style]:
                found.append((f"OpenAI GPT-2 {MODEL_LABELS[name]}", REFERENCE[style][name][1]))
            return found + [GPT3_REFERENCE[name]]
    return []


class HellaSwagUnavailable(RuntimeError):
    """The examples cannot be had (offline with no cached copy, missing or malformed file).
    The message is one line saying what to do; training catches this and skips HellaSwag."""


# -----------------------------------------------------------------------------------------
# Data


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_download_path(path)
    try:
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        tmp.write_bytes(response.content)
        _read_examples(tmp, expect_full=True)
        os.replace(tmp, path)
    except (requests.RequestException, OSError, HellaSwagUnavailable) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise HellaSwagUnavailable(
            f"HellaSwag validation set not found at {path} and the download from {url} failed "
            f"({type(e).__name__}: {reason}); fetch that file on a connected machine and put it at "
            f"{path}, or pass --data FILE"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def temporary_download_path(path):
    """Where a download is written before its rename: named after this host and process, so
    processes on several nodes sharing one disk never write into the same file."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


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
    keep = max_length + 1
    return rendered._replace(tokens=[row[-keep:] for row in rendered.tokens],
                             mask=[m[-keep:] for m in rendered.mask])


# -----------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score_batch(model_fn, batch, device, n_vocab, autocast_dtype=None):
    """Log-likelihood of every ending of a batch of rendered examples: float64 (len(batch), 4).

    All 4 * len(batch) rows go through one forward, right-padded to the longest; causal
    attention keeps the padding from touching real positions, and the mask leaves it unscored.
    The model reads each row but its last token (which is only ever a target), so a row of
    max_length + 1 tokens fits a context of max_length.
    """
    rows = [row for r in batch for row in r.tokens]
    masks = [m for r in batch for m in r.mask]
    T = max(len(row) for row in rows) - 1
    inputs = torch.zeros(len(rows), T, dtype=torch.long)
    targets = torch.zeros(len(rows), T, dtype=torch.long)
    scored = torch.zeros(len(rows), T, dtype=torch.bool)  # position t predicts an ending token
    for i, (row, m) in enumerate(zip(rows, masks)):
        inputs[i, : len(row) - 1] = torch.tensor(row[:-1])
        targets[i, : len(row) - 1] = torch.tensor(row[1:])
        scored[i, : len(row) - 1] = torch.tensor(m[1:], dtype=torch.bool)
    inputs, targets, scored = inputs.to(device), targets.to(device), scored.to(device)
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model_fn(inputs)
    # keep only the positions that predict an ending token, so the vocabulary-wide softmax runs
    # on a fraction of the rows. Cropping to the tokenizer's vocabulary drops a padded
    # vocabulary's never-seen ids (exported HF models lack them).
    selected = logits[scored][:, :n_vocab].float()
    token_ll = -F.cross_entropy(selected, targets[scored], reduction="none")
    row_of = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(scored)[scored]
    ll = torch.zeros(len(rows), dtype=torch.float64, device=device)
    ll.index_add_(0, row_of, token_ll.double())
    return ll.view(len(batch), 4).cpu()


def _dist_rank_world(rank, world_size):
    """Explicit values win; otherwise take them from torch.distributed when it is running."""
    running = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if running else 0
    if world_size is None:
        world_size = dist.get_world_size() if running else 1
    if world_size > 1 and not running:
        raise RuntimeError(f"world_size={world_size} but torch.distributed is not initialized")
    return rank, world_size


# (style, examples, context, truncated) already reported: training scores the same examples
# every N steps, and one line about their truncation is enough.
_truncation_reported = set()


def context_overflows(rendered, max_length):
    """(examples with an ending longer than the context: unscorable, examples longer than the
    context: left-truncated) among `rendered` (Rendered values), for a context of max_length."""
    too_long = sum(any(sum(m) > max_length for m in r.mask) for r in rendered)
    truncated = sum(any(len(row) > max_length + 1 for row in r.tokens) for r in rendered)
    return too_long, truncated


def fit_to_context(rendered, max_length, style, n_examples, rank, world_size, device):
    """`rendered` ({index: Rendered}) left-truncated to a context of `max_length` tokens, and
    how many examples were truncated (summed over ranks; rank 0 says so once, on stderr).
    An ending longer than the context cannot be scored at all: ValueError on every rank, before
    any forward pass (lm-evaluation-harness stops on a bare assertion there)."""
    counts = torch.tensor(context_overflows(rendered.values(), max_length))
    if world_size > 1:  # every rank must decide alike, or one would wait for the others forever
        counts = counts.to(device)
        dist.all_reduce(counts)
    too_long, truncated = counts.tolist()
    if too_long:
        raise ValueError(f"{too_long} HellaSwag examples have an ending longer than the model's "
                         f"context of {max_length} tokens and cannot be scored; use a model with a "
                         f"longer context (--block-size) or turn HellaSwag off (--hellaswag-every 0)")
    key = (style, n_examples, max_length, truncated)
    if truncated and rank == 0 and key not in _truncation_reported:
        _truncation_reported.add(key)
        print(f"HellaSwag ({style} style): {truncated} of {n_examples} examples are longer than the "
              f"model's context of {max_length} tokens: left-truncated as lm-evaluation-harness does",
              file=sys.stderr)
    return {i: truncate_left(r, max_length) for i, r in rendered.items()}, truncated


def evaluate(model_fn, examples, enc, style="default", batch_size=8, device="cpu",
             rank=None, world_size=None, autocast_dtype=None, progress=False, max_length=None,
             lockstep=False):
    """Score `examples` with `model_fn(idx (B, T) LongTensor) -> logits (B, T, V)`.

    Rank r scores examples r, r + world_size, ...; with world_size > 1 the counts are summed
    over ranks (all_reduce), so every rank returns the totals, equal to a single-process run.
    `max_length`: the model's context; longer examples are left-truncated (see fit_to_context).
    `lockstep`: every rank makes the same number of model calls (an FSDP model gathers its weights
    from all ranks in every forward); a rank with a shorter share scores a batch again, unused.
    Returns dict(acc, acc_norm, n, correct, correct_norm, truncated, style, predictions), where
    predictions maps this rank's example indices to (pred, pred_norm, [4 log-likelihoods]).
    """
    rank, world_size = _dist_rank_world(rank, world_size)
    mine = list(range(rank, len(examples), world_size))
    rendered = {i: render_example(examples[i], enc, style) for i in mine}
    truncated = 0
    if max_length is not None:
        rendered, truncated = fit_to_context(rendered, max_length, style, len(examples), rank,
                                             world_size, device)
    predictions = {}
    batches = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    if lockstep:
        if not mine:
            raise ValueError(f"lockstep scoring needs at least one example per rank: {len(examples)} "
                             f"examples for {world_size} ranks")
        most = -(-len(range(0, len(examples), world_size)) // batch_size)  # rank 0's share
        filler = [rendered[mine[0]]]
        batches += [None] * (most - len(batches))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"hellaswag ({style})", unit="batch", file=sys.stderr)
    for indices in batches:
        if indices is None:
            score_batch(model_fn, filler, device, enc.n_vocab, autocast_dtype)
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
    if world_size > 1:
        # the counts travel on `device`: NCCL reduces CUDA tensors only
        counts = counts.to(device)
        dist.all_reduce(counts)
        counts = counts.cpu()
    n, correct, correct_norm = counts.tolist()
    return {
        "acc": correct / max(n, 1),
        "acc_norm": correct_norm / max(n, 1),
        "n": n,
        "correct": correct,
        "correct_norm": correct_norm,
        "truncated": truncated,
        "style": style,
        "predictions": predictions,
    }


def evaluate_gpt(model, examples, *, enc=None, style="default", batch_size=8, rank=None,
                 world_size=None, device="cpu", autocast_dtype=None, lockstep=False):
    """HellaSwag for our GPT during training: every rank must call it (the counts are summed
    across ranks). `model` may be wrapped in DDP and/or torch.compile: the plain module is
    used, in eval mode, and its training mode is restored afterwards. `enc` defaults to GPT-2's."""
    raw = unwrap(model)
    check_gpt2_vocab(raw, "evaluate_gpt")
    was_training = raw.training
    raw.eval()
    try:
        return evaluate(lambda idx: raw(idx)[0], examples, enc or get_gpt2_encoding(), style,
                        batch_size, device, rank, world_size, autocast_dtype,
                        max_length=raw.config.block_size, lockstep=lockstep)
    finally:
        raw.train(was_training)


# -----------------------------------------------------------------------------------------
# Command line


def load_hf_model_fn(name_or_dir, device):
    """(model_fn, context length) of a transformers GPT2LMHeadModel: OpenAI's sizes, a hub id
    or a local folder. The context is config.n_positions, where the harness reads it."""
    try:
        hf = load_hf_gpt2(name_or_dir)
    except ValueError as e:
        raise ValueError(f"--model {name_or_dir}: {e}") from None
    hf.to(device).eval()
    return (lambda idx: hf(idx).logits), hf.config.n_positions


def load_checkpoint_fn(path, device):
    """(model_fn, context length) of our GPT from a training checkpoint (or a run folder: its
    newest one)."""
    model, _ = load_model(path, device)
    check_gpt2_vocab(model, f"--checkpoint {path}")
    model.eval()
    return (lambda idx: model(idx)[0]), model.config.block_size


def check_gpt2_vocab(model, what):
    """HellaSwag is rendered in GPT-2 tokens: a char-level model cannot be scored."""
    if model.config.vocab_size < GPT2_VOCAB_SIZE:
        raise ValueError(f"{what}: vocabulary of {model.config.vocab_size} tokens, but HellaSwag "
                         f"needs a GPT-2-tokenizer model ({GPT2_VOCAB_SIZE}+)")


def load_inputs(args, device):
    """(encoding, examples, (model_fn, context length)) for the command line; data first, as it
    fails fastest."""
    examples = load_examples(args.data, args.cache_dir, args.limit, args.url)
    enc = get_gpt2_encoding()
    if args.model:
        return enc, examples, load_hf_model_fn(args.model, device)
    return enc, examples, load_checkpoint_fn(args.checkpoint, device)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description="HellaSwag accuracy of GPT-2 models and checkpoints")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl (or 124m..1558m), "
                       "a Hugging Face hub id, or a local GPT2LMHeadModel folder")
    which.add_argument("--checkpoint", help="a train_gpt2.py checkpoint (ckpt_*.pt), or a run folder (its newest)")
    which.add_argument("--download", action="store_true",
                       help="only fetch the validation set into --cache-dir, then exit: training "
                            "never downloads it, so do this once before training on compute nodes")
    parser.add_argument("--style", choices=STYLES, default="default",
                        help="default: build-nanogpt's scoring; harness: lm-evaluation-harness's")
    parser.add_argument("--data", help="local HellaSwag jsonl (skips the download)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="where the download is cached")
    parser.add_argument("--url", default=URL, help="where to download hellaswag_val.jsonl from")
    parser.add_argument("--limit", type=int, help="score only the first N examples")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward pass (4 rows each)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:1, mps (auto: cuda, else Apple's mps, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16 runs the forward under autocast")
    parser.add_argument("--json", action="store_true", help="print only one JSON object: acc, acc_norm, n, ...")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be positive")
    if args.download:
        try:
            path = download(args.cache_dir, args.url)
        except HellaSwagUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"HellaSwag validation set ({NUM_VAL_EXAMPLES} examples): {path}")
        return 0

    # under torchrun: one process per device, each scoring its share of the examples
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = args.device if args.device != "auto" else pick_device_type("auto")
    if distributed:
        use_cuda = torch.device(device).type == "cuda"
        if use_cuda:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    master = not distributed or dist.get_rank() == 0
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as build-nanogpt's reference run

    result = None
    try:
        enc, examples, (model_fn, max_length) = load_inputs(args, device)
    except (HellaSwagUnavailable, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
    else:
        autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
        try:
            result = evaluate(model_fn, examples, enc, args.style, args.batch_size, device,
                              autocast_dtype=autocast_dtype, progress=master and not args.json,
                              max_length=max_length)
        except ValueError as e:  # an ending longer than the model's context: refused before work
            print(f"error: {e}", file=sys.stderr)
    finally:
        if distributed:
            dist.barrier()  # gloo may abort at exit if one rank tears down while another works
            dist.destroy_process_group()
    if result is None:
        return 2

    if master:
        del result["predictions"]
        if args.json:
            print(json.dumps(result))
        else:
            print(f"HellaSwag ({args.style} style) {args.model or args.checkpoint}: "
                  f"{result['n']} examples, acc {result['acc']:.4f}, acc_norm {result['acc_norm']:.4f}")
            print("\n".join(reference_table(result, args.style)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
